"""Starting and resuming a training run: the run directory, the objective for the dataset, the model, lineage.

``start`` makes a new run directory (config.json with the model, training and data sections, the
tokenizer) and trains; ``resume`` continues a run from its latest good checkpoint after checking that
the dataset is the same. A run may start from another run's weights (``init_from``): its config.json then
records that parent (run, checkpoint, weights sha256, objective), so a chain base → sft → dpo can be
followed back (``lmlab.runs.lineage``). The run directory is locked while training: one writer at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lmlab import __version__, io, runtime
from lmlab import checkpoint as ckpt
from lmlab.config import ModelConfig, Preset, TrainConfig
from lmlab.data.dataset import Dataset, load_dataset
from lmlab.errors import LmlabError
from lmlab.objectives.base import Objective, objective_for
from lmlab.training.trainer import Trainer, TrainResult


def data_fingerprint(ds: Dataset) -> dict[str, Any]:
    """What identifies the dataset a run was trained on (checked on resume)."""
    return {
        "path": str(ds.path.resolve()),
        "vocab_size": ds.vocab_size,
        "tokenizer_sha256": io.sha256_file(ds.path / "tokenizer.json"),
        "train_tokens": ds.meta["splits"]["train"]["tokens"],
        "val_tokens": ds.meta["splits"]["val"]["tokens"],
    }


def parent_model_config(parent: str | Path) -> ModelConfig:
    """The model config of the run ``parent`` (the shape a run started from its weights must have)."""
    from lmlab.runs import read_config

    return ModelConfig.from_dict(read_config(parent)["model"])


def _parent_record(parent: Path, which: str | None, ds: Dataset) -> tuple[dict[str, Any], Path]:
    """The lineage entry of a run started from ``parent``'s weights, and the checkpoint to load."""
    from lmlab.runs import read_config

    cfg = read_config(parent)
    tok = parent / "tokenizer.json"
    if not tok.is_file() or tok.read_bytes() != (ds.path / "tokenizer.json").read_bytes():
        raise LmlabError(
            f"--init-from {parent}: that run's tokenizer is not the one {ds.path} was prepared with; prepare the "
            f"data with its tokenizer (lmlab prepare SOURCE --tokenizer {tok})"
        )
    from lmlab.runs import parent_weights_sha256

    path = ckpt.find_checkpoint(parent / "checkpoints", which)
    sha = parent_weights_sha256(path)
    record = {
        "run": str(parent.resolve()),
        "checkpoint": path.name,
        "step": ckpt.read_state(path).get("step"),
        "model_sha256": sha,
        "objective": cfg.get("objective", "lm" if cfg["model"].get("arch") != "seq2seq" else "translation"),
    }
    return record, path


def start(
    data: Path,
    p: Preset,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: Path | None,
    *,
    init_from: Path | None = None,
    init_checkpoint: str | None = None,
) -> TrainResult:
    """Train a new run of preset ``p`` (shape ``model_cfg``, recipe ``train_cfg``) on the dataset ``data``."""
    ds = load_dataset(data)
    objective_cls = objective_for(ds.task)
    # the parent's tokenizer first: a different one also explains a vocabulary size that does not match
    parent, weights = _parent_record(init_from, init_checkpoint, ds) if init_from is not None else (None, None)
    model_cfg = objective_cls.fit_model_config(ds, model_cfg)
    if model_cfg.vocab_size and model_cfg.vocab_size != ds.vocab_size:
        raise LmlabError(
            f"--model.vocab-size {model_cfg.vocab_size} does not match the dataset's vocabulary ({ds.vocab_size}); "
            "leave it at 0 to take the dataset's"
        )
    model_cfg = dataclasses.replace(model_cfg, vocab_size=ds.vocab_size)
    run_dir = out or Path("runs") / f"{p.name}-{ds.path.resolve().name}"
    if init_from is not None and run_dir.resolve() == init_from.resolve():
        raise LmlabError(f"--out {run_dir} is the --init-from run itself; choose a new run directory")
    io.check_disjoint(run_dir, [ds.path, init_from])
    if (run_dir / "checkpoints").exists() and any(ckpt.list_checkpoints(run_dir / "checkpoints")):
        raise LmlabError(
            f"run directory {run_dir} already has checkpoints; continue it with --resume {run_dir} "
            "or choose another --out"
        )
    rt = runtime.setup(train_cfg.device, train_cfg.precision, "--train.device")
    lock = io.DirLock(run_dir, "run directory")
    config = {
        "lmlab_version": __version__,
        "preset": p.name,
        "objective": objective_cls.task,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": data_fingerprint(ds),
    }
    if parent is not None:
        config["parent"] = parent
    if objective_cls.chat:  # trained on conversations: a chat model from its first step
        config["chat_template"] = "lmlab"

    def write_run_files() -> None:  # once everything is validated and built: a refused start writes nothing
        if not rt.is_main:
            return
        io.write_json(run_dir / "config.json", config)
        io.write_bytes(run_dir / "tokenizer.json", (ds.path / "tokenizer.json").read_bytes())
        if (ds.path / "tokenizer.src.json").is_file():  # translation with a separate source tokenizer
            io.write_bytes(run_dir / "tokenizer.src.json", (ds.path / "tokenizer.src.json").read_bytes())

    with new_run_dir(run_dir, rt.is_main):
        if rt.is_main:
            lock.acquire()
        try:
            if rt.distributed:
                torch.distributed.barrier()
            return _fit_dataset(ds, model_cfg, train_cfg, run_dir, rt, None, init_weights=weights,
                                on_ready=write_run_files)  # fmt: skip
        finally:
            lock.release()


@contextlib.contextmanager
def new_run_dir(run_dir: Path, is_main: bool = True):
    """The block that starts a new run in ``run_dir``: if it fails before the first checkpoint (a refused option, a
    missing package, Ctrl-C during setup), what it created there is removed again, the directory too when it was
    new, so that a refused start leaves nothing behind. A run that saved a checkpoint is kept: it can be resumed."""
    existed = run_dir.exists()
    before = set(os.listdir(run_dir)) if existed and run_dir.is_dir() else set()
    try:
        yield
    except BaseException:
        if is_main and not ckpt.list_checkpoints(run_dir / "checkpoints"):
            for name in set(os.listdir(run_dir)) - before if run_dir.is_dir() else ():
                target = run_dir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
        raise


def fit(
    model: torch.nn.Module,
    objective: Objective,
    train_cfg: TrainConfig,
    run_dir: Path,
    rt: runtime.Runtime,
    resume_from: Path | None,
    source: str,
    on_ready: Any = None,
) -> TrainResult:
    """Run the trainer on a built model and objective (``source``: what it trains on, for the first line).
    ``on_ready()`` runs once the trainer is built, so every option is validated: it writes the run's config."""
    try:
        objective.prepare(model, rt, run_dir, None if resume_from is None else _start_weights(run_dir))
        trainer = Trainer(model, objective, train_cfg, run_dir, rt, resume_from=resume_from)
        if on_ready is not None:
            on_ready()
        if rt.is_main:
            if objective.summary:
                print(f"data: {objective.summary}", file=sys.stderr)
            n = model.num_params()
            print(
                f"training {model.config.arch} ({n / 1e6:.2f}M parameters) on {source} -> {run_dir}\n"
                f"  {rt.describe()}; {trainer.tokens_per_step:,} tokens per step "
                f"({train_cfg.batch_size} sequences x {trainer.accum} accum x {rt.world_size} processes); "
                f"steps {trainer.step} -> {train_cfg.max_steps}",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        result = trainer.fit()
        if rt.is_main:
            took = time.perf_counter() - t0
            best = (
                f"; best {train_cfg.best_metric} {list(result.best.values())[1]:.4f} ({result.best['checkpoint']})"
                if result.best
                else ""
            )
            print(
                f"{result.status}: step {result.step}, {result.tokens_seen:,} tokens, {took:.1f}s{best}; "
                f"{result.energy_kwh:.4f} kWh, {1000 * result.co2_kg:.1f} g CO2 ({result.energy_source}); "
                f"run directory {run_dir}",
                file=sys.stderr,
            )
        result.raise_if_interrupted()
        return result
    finally:
        runtime.teardown(rt)


def _start_weights(run_dir: Path) -> Path | None:
    """The checkpoint a run started from (its parent's; None when it started from random weights)."""
    from lmlab.runs import read_config

    parent = read_config(run_dir).get("parent") or {}
    if not parent.get("checkpoint"):
        return None
    return Path(parent["run"]) / "checkpoints" / parent["checkpoint"]


def _fit_dataset(ds, model_cfg, train_cfg, run_dir, rt, resume_from, init_weights=None, on_ready=None) -> TrainResult:
    """Build the model and the dataset's objective, then ``fit``."""
    from lmlab.models import build_model

    runtime.seed_everything(train_cfg.seed)
    model = build_model(model_cfg)
    if init_weights is not None and resume_from is None:
        ckpt.load_weights(model, init_weights)
    objective = objective_for(ds.task).from_dataset(ds, model_cfg, ds.tokenizer)
    return fit(model, objective, train_cfg, run_dir, rt, resume_from, str(ds.path), on_ready)


def resume(run_dir: Path, data: str | Path | None, model_over: dict, train_over: dict) -> TrainResult:
    """Continue ``run_dir`` from its latest good checkpoint; ``train_over`` changes training settings (logged
    in config.json's ``resumes``), a changed model shape is refused."""
    from lmlab.runs import read_config

    cfg = read_config(run_dir)
    saved_model = ModelConfig.from_dict(cfg["model"])
    changed_model = {k: v for k, v in model_over.items() if getattr(saved_model, k) != v}
    if changed_model:
        raise LmlabError(
            f"cannot change the model shape on resume ({', '.join(f'model.{k}' for k in changed_model)}); "
            "start a new run with --out instead"
        )
    saved_train = TrainConfig.from_dict(cfg["train"])
    train_cfg = dataclasses.replace(saved_train, **train_over)
    if "finetune" in cfg:
        if data is not None:
            raise LmlabError("a fine-tuned run resumes on the files it was started with; give no DATA_DIR")
        parts = _finetune_parts(cfg, run_dir, train_cfg)
    else:
        data_path = Path(data) if data else Path(cfg["data"]["path"])
        ds = load_dataset(data_path)
        fp = data_fingerprint(ds)
        for key in ("vocab_size", "tokenizer_sha256", "train_tokens"):
            if fp[key] != cfg["data"].get(key):
                raise LmlabError(
                    f"{data_path} is not the dataset this run was trained on ({key} differs); resume with the "
                    f"original dataset ({cfg['data'].get('path')})"
                )
    path = ckpt.find_checkpoint(run_dir / "checkpoints", "latest")
    rt = runtime.setup(train_cfg.device, train_cfg.precision, "--train.device")
    changes = {
        k: (getattr(saved_train, k), getattr(train_cfg, k))
        for k in train_over
        if getattr(saved_train, k) != getattr(train_cfg, k)
    }
    if "optimizer" in changes:
        raise LmlabError(
            f"cannot change --train.optimizer on resume ({changes['optimizer'][0]} -> {changes['optimizer'][1]}): the "
            "checkpoint holds that optimizer's state; start a new run with --out, or --init-from this one"
        )
    step = int(ckpt.read_state(path).get("step", 0))
    if train_cfg.max_steps < step:
        raise LmlabError(
            f"--train.max-steps {train_cfg.max_steps} is below the step the run is at ({step}); give a larger value "
            f"to train on (e.g. --train.max-steps {step + saved_train.max_steps})"
        )
    lock = io.DirLock(run_dir, "run directory")

    def write_config() -> None:  # only once the resumed trainer is built: a refused --resume changes nothing
        if not rt.is_main:
            return
        if changes:
            print(
                "resuming with changed settings: "
                + ", ".join(f"train.{k} {a} -> {b}" for k, (a, b) in changes.items()),
                file=sys.stderr,
            )
            history = cfg.setdefault("resumes", [])
            history.append({"from": path.name, "changed": {k: list(v) for k, v in changes.items()}})
        cfg["train"] = train_cfg.to_dict()
        io.write_json(run_dir / "config.json", cfg)

    if rt.is_main:
        lock.acquire()
    try:
        if "finetune" in cfg and parts[1] is None:  # PPO or GRPO
            from lmlab.data.tokenizer import load_tokenizer
            from lmlab.generation.chat import uses_template
            from lmlab.training.rl import METHODS

            ft = cfg["finetune"]
            opts = METHODS[ft["method"]](**ft["options"])
            return _fit_rl(parts[0], ft["method"], parts[2], opts, train_cfg, run_dir, rt,
                           load_tokenizer(run_dir / "tokenizer.json"), uses_template(cfg),
                           start=_start_weights(run_dir), resume_from=path, on_ready=write_config)  # fmt: skip
        if "finetune" in cfg:
            return fit(*parts[:2], train_cfg, run_dir, rt, path, parts[2], write_config)
        return _fit_dataset(ds, saved_model, train_cfg, run_dir, rt, path, on_ready=write_config)
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# Fine-tuning: a child run of a trained run, with a method's objective (and head) on labeled files


def _file_record(path: str | Path) -> dict[str, str]:
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": io.sha256_file(path)}


def _finetune_model(
    model_cfg: ModelConfig, objective: Objective | None, weights: Path | None = None
) -> torch.nn.Module:
    """The model a method trains: the language model (from ``weights``), plus the method's head if it has one."""
    from lmlab.models import build_model
    from lmlab.models.heads import SequenceClassifier

    lm = build_model(model_cfg)
    if weights is not None:
        ckpt.load_weights(lm, weights)
    return SequenceClassifier(lm, len(objective.classes)) if objective is not None and objective.has_head else lm


def _finetune_parts(cfg: dict[str, Any], run_dir: Path, train_cfg: TrainConfig) -> tuple[Any, Objective, str]:
    """(model, objective, source) of a fine-tuned run, rebuilt from its config.json; the data files must be the ones
    it was started with."""
    from lmlab.data.tokenizer import load_tokenizer
    from lmlab.objectives.base import finetune_method
    from lmlab.runs import build_run_model
    from lmlab.training.rl import METHODS

    ft = cfg["finetune"]
    for name, rec in ft["files"].items():
        if not Path(rec["path"]).is_file() or io.sha256_file(rec["path"]) != rec["sha256"]:
            raise LmlabError(f"the {name} file {rec['path']} is missing or changed since the run started")
    if ft["method"] in METHODS:
        runtime.seed_everything(train_cfg.seed)
        return build_run_model(cfg), None, ft["files"]["data"]["path"]
    model_cfg = ModelConfig.from_dict(cfg["model"])
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    method = finetune_method(ft["method"])
    extra = {"classes": cfg["head"]["labels"]} if method.task == "classify" else {}
    if method.reads_preferences:
        from lmlab.generation.chat import uses_template

        extra["template"] = uses_template(cfg)
    objective = method.from_files(
        ft["files"]["data"]["path"], method.Options(**ft["options"]), tokenizer, model_cfg.block_size,
        train_cfg.seed, **extra,
    )  # fmt: skip
    if method.new_model:
        objective.teacher_checkpoint = Path(cfg["parent"]["run"]) / "checkpoints" / cfg["parent"]["checkpoint"]
    runtime.seed_everything(train_cfg.seed)
    return build_run_model(cfg), objective, ft["files"]["data"]["path"]


def finetune(
    parent: Path,
    method: str,
    data: Path,
    opts: Any,
    train_over: dict[str, Any],
    *,
    out: Path | None = None,
    checkpoint: str | None = None,
    lora: Any = None,
    scratch: bool = False,
) -> TrainResult:
    """Fine-tune the run ``parent`` with ``method`` on the file ``data`` into a new child run; with ``lora`` (a
    ``LoRAConfig`` with r > 0) only low-rank adapters (and a head) are trained and saved. With ``scratch`` the
    parent gives only its architecture and tokenizer: the weights start random (seeded by the run's seed), the
    "no pre-training" baseline of GPT-1's ablation. ``ppo`` and ``grpo`` run the RL loop (``data``: prompts)."""
    from lmlab.data.tokenizer import load_tokenizer
    from lmlab.generation.chat import uses_template
    from lmlab.objectives.base import finetune_method
    from lmlab.runs import read_config
    from lmlab.training import rl

    is_rl = method in rl.METHODS
    objective_cls = None if is_rl else finetune_method(method)
    pcfg = read_config(parent)
    model_cfg = ModelConfig.from_dict(pcfg["model"])
    if model_cfg.arch == "seq2seq":
        raise LmlabError(f"{parent} is a translation (seq2seq) run; {method} fine-tunes a gpt, rnn or lstm run")
    if "head" in pcfg:
        what = "reward model" if pcfg["head"].get("kind") == "reward" else "classifier"
        hint = f"; a reward model is given to RL as --reward {parent}" if is_rl else ""
        raise LmlabError(f"{parent} is a fine-tuned {what}; fine-tune its base run instead{hint}")
    if not (parent / "tokenizer.json").is_file():
        raise LmlabError(f"{parent} has no tokenizer.json, so the data cannot be tokenized")
    tokenizer = load_tokenizer(parent / "tokenizer.json")
    if scratch and (checkpoint is not None or (lora is not None and lora.r)):
        raise LmlabError("--scratch starts from random weights; it takes no --checkpoint and no --lora.r")
    if scratch and is_rl:
        raise LmlabError(f"--scratch is for supervised methods; {method} starts from a trained policy")
    new_model = objective_cls is not None and objective_cls.new_model
    if new_model and (scratch or (lora is not None and lora.r)):
        raise LmlabError(f"{method} trains a new model from random weights; it takes no --scratch and no --lora.r")
    weights = None if scratch else ckpt.find_checkpoint(parent / "checkpoints", checkpoint)
    if new_model:
        model_cfg = objective_cls.model_config(opts, model_cfg)
    seed = int(train_over.get("seed", TrainConfig.seed))
    template = uses_template(pcfg)
    if is_rl:
        recipe = rl.RECIPE
        n_train = len(rl.split_prompts(data, opts, seed)[0])
        objective = None
    else:
        recipe = objective_cls.RECIPE
        opts = objective_cls.fit_options(opts, model_cfg)
        extra = {"template": template} if objective_cls.reads_preferences else {}
        objective = objective_cls.from_files(data, opts, tokenizer, model_cfg.block_size, seed, **extra)
        if new_model:
            objective.teacher_checkpoint = weights
        n_train = objective.n_train
    base = {**recipe, **train_over}
    if "max_steps" not in train_over:
        base["max_steps"] = max(1, round(opts.epochs * (n_train // int(base["batch_size"]))))
    if "warmup_steps" not in train_over and not is_rl:
        base["warmup_steps"] = max(1, round(0.002 * base["max_steps"]))  # GPT-1: 0.2% of training
    if "eval_every" not in train_over:
        base["eval_every"] = max(1, base["max_steps"] // 10)
    train_cfg = TrainConfig(**{**TrainConfig().to_dict(), **base})
    run_dir = out or parent.parent / f"{parent.name}-{method}-{data.stem}"
    if run_dir.resolve() == parent.resolve():
        raise LmlabError(f"--out {run_dir} is the parent run itself; choose a new run directory")
    reward_run = getattr(opts, "reward", None)
    io.check_disjoint(run_dir, [parent, data, opts.val, getattr(opts, "ptx_data", None),
                                reward_run if reward_run and Path(reward_run).exists() else None])  # fmt: skip
    if (run_dir / "checkpoints").exists() and any(ckpt.list_checkpoints(run_dir / "checkpoints")):
        raise LmlabError(f"run directory {run_dir} already has checkpoints; choose another --out")
    from lmlab.runs import parent_weights_sha256

    files = {"data": _file_record(data / "meta.json" if data.is_dir() else data)}  # a dataset: its meta.json
    options = dataclasses.asdict(opts)
    if opts.val is not None:
        files["val"] = _file_record(opts.val)
        options["val"] = files["val"]["path"]
    if getattr(opts, "ptx_data", None) is not None:  # a dataset directory: its tokenizer is checked when it is used
        options["ptx_data"] = str(Path(opts.ptx_data).resolve())
    if is_rl and Path(opts.reward).is_dir():
        options["reward"] = str(Path(opts.reward).resolve())
    config = {
        "lmlab_version": __version__,
        "objective": method,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "finetune": {"method": method, "files": files, "options": options},
        "tokenizer_sha256": io.sha256_file(parent / "tokenizer.json"),
        "parent": {
            "run": str(parent.resolve()),
            "checkpoint": weights.name,
            "step": ckpt.read_state(weights).get("step"),
            "model_sha256": parent_weights_sha256(weights),
            "objective": pcfg.get("objective", "lm"),
        }
        if weights is not None
        else {"run": str(parent.resolve()), "checkpoint": None, "init": "random", "objective": pcfg.get("objective")},
    }
    if objective is not None and objective_cls.has_head:
        config["head"] = {"kind": method, "labels": list(objective.classes)}
    if objective is not None and objective.data_format:
        config["finetune"]["format"] = objective.data_format
    if lora is not None and lora.r:
        config["lora"] = dataclasses.asdict(lora)
    if (objective is not None and objective.chat) or template:  # a chat model, and every run descended from one
        config["chat_template"] = "lmlab"
    rt = runtime.setup(train_cfg.device, train_cfg.precision, "--train.device")
    lock = io.DirLock(run_dir, "run directory")

    def write_run_files() -> None:  # once the trainer is built: a refused fine-tune writes nothing
        if rt.is_main:
            io.write_json(run_dir / "config.json", config)
            io.write_bytes(run_dir / "tokenizer.json", (parent / "tokenizer.json").read_bytes())

    with new_run_dir(run_dir, rt.is_main):
        if rt.is_main:
            lock.acquire()
        try:
            return _finetune_fit(config, model_cfg, objective, weights, lora, is_rl, method, data, opts, train_cfg,
                                 run_dir, rt, tokenizer, template, write_run_files)  # fmt: skip
        finally:
            lock.release()


def _finetune_fit(config, model_cfg, objective, weights, lora, is_rl, method, data, opts, train_cfg, run_dir, rt,
                  tokenizer, template, on_ready) -> TrainResult:  # fmt: skip
    from lmlab.runs import build_run_model

    runtime.seed_everything(train_cfg.seed)
    if objective is not None and objective.new_model:
        weights = None  # the parent is the teacher; the student starts from random weights
    model = build_run_model(config) if "lora" in config else _finetune_model(model_cfg, objective, weights)
    if "lora" in config:
        from lmlab.models.lora import trainable_parameters

        n, total = trainable_parameters(model), sum(p.numel() for p in model.parameters())
        note = f"LoRA r={lora.r} on {', '.join(lora.targets)}: {n:,} of {total:,} parameters train"
        if objective is not None:
            objective.summary += "; " + note
        else:
            print(f"lora: {note}", file=sys.stderr)
    if is_rl:
        return _fit_rl(model, method, data, opts, train_cfg, run_dir, rt, tokenizer, template, on_ready=on_ready)
    return fit(model, objective, train_cfg, run_dir, rt, None, str(data), on_ready)


def _fit_rl(model, method, data, opts, train_cfg, run_dir, rt, tokenizer, template, start=None, resume_from=None,
            on_ready=None):  # fmt: skip
    """Build and run the RL trainer (``lmlab.training.rl``) of a fine-tuned run."""
    from lmlab.training import rl

    try:
        trainer = rl.build(model, method, data, opts, train_cfg, run_dir, rt, tokenizer, template, start=start,
                           resume_from=resume_from)  # fmt: skip
        if on_ready is not None:
            on_ready()
        if rt.is_main:
            print(f"data: {trainer.summary}", file=sys.stderr)
            print(
                f"{method} on {model.config.arch} ({model.num_params() / 1e6:.2f}M parameters) -> {run_dir}\n"
                f"  {rt.describe()}; {train_cfg.batch_size} prompts per step; steps {trainer.step} -> "
                f"{train_cfg.max_steps}",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        result = trainer.fit()
        if rt.is_main:
            best = (f"; best {train_cfg.best_metric} {list(result.best.values())[1]:.4f} ({result.best['checkpoint']})"
                    if result.best else "")  # fmt: skip
            print(f"{result.status}: step {result.step}, {time.perf_counter() - t0:.1f}s{best}; "
                  f"{result.energy_kwh:.4f} kWh, {1000 * result.co2_kg:.1f} g CO2 ({result.energy_source}); "
                  f"run directory {run_dir}", file=sys.stderr)  # fmt: skip
        result.raise_if_interrupted()
        return result
    finally:
        runtime.teardown(rt)
