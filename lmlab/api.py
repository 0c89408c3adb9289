"""The public functions of lmlab: one per verb of the command line, with the same options.

``lmlab.prepare(...)``, ``lmlab.train(...)``, ``lmlab.load("runs/x")``, ``lmlab.generate(...)`` … are defined
here and re-exported (lazily) by ``lmlab/__init__.py``. Each is a short, typed front: it checks and
normalizes its arguments, then calls the module that does the work, imported only when needed so that
``import lmlab`` stays fast. The CLI (``lmlab.cli``) parses argv into these same arguments and calls
these same functions. No package of lmlab is named like one of these functions, so importing any
submodule never hides a function (``lmlab.train`` is this function; the package is ``lmlab.training``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.config import ModelConfig, TrainConfig
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch

    from lmlab.data.prepare import PrepareConfig, PreparedDataset
    from lmlab.generation.request import GenerationRequest
    from lmlab.runs import Run
    from lmlab.training.trainer import TrainResult

__all__ = [
    "attention",
    "chat",
    "classify",
    "evaluate",
    "experiment",
    "export_hf",
    "finetune",
    "generate",
    "import_hf",
    "load",
    "merge",
    "plot",
    "prepare",
    "quantize",
    "stream",
    "train",
    "translate",
]


def prepare(config: PrepareConfig | str | None = None, /, **fields: Any) -> PreparedDataset:
    """Tokenize a corpus into a dataset directory; arguments are those of ``PrepareConfig`` (and of the CLI).

    ``lmlab.prepare("shakespeare", tokenizer="bpe", vocab_size=2048, source_file="input.txt")``
    """
    from lmlab.config import make_config
    from lmlab.data.prepare import PrepareConfig, run

    if isinstance(config, str | os.PathLike):
        cfg = make_config(PrepareConfig, {"source": str(config), **fields}, "prepare")
    elif config is None:
        if "source" not in fields:
            raise LmlabError('give the corpus to prepare: lmlab.prepare("shakespeare", tokenizer="char")')
        cfg = make_config(PrepareConfig, fields, "prepare")
    elif isinstance(config, PrepareConfig):
        cfg = make_config(PrepareConfig, {**dataclasses.asdict(config), **fields}, "prepare") if fields else config
    else:
        raise LmlabError(f"lmlab.prepare takes a source path or a PrepareConfig, got {type(config).__name__}")
    return run(cfg)


def train(
    data: str | Path | None = None,
    preset: str | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    model: dict[str, Any] | None = None,
    init_from: str | Path | None = None,
    init_checkpoint: str | None = None,
    **train_fields: Any,
) -> TrainResult:
    """Train ``preset`` (default ``baby``) on the dataset directory ``data``; or resume the run ``resume``.

    ``model`` overrides fields of the preset's ModelConfig; other keyword arguments override TrainConfig
    fields (``max_steps=500``). ``init_from`` starts from that run's weights and shape (``init_checkpoint``:
    best, latest or step-N) and records it as the new run's parent. The objective (language modeling,
    translation) is the one registered for the dataset's task.
    ``lmlab.train("data/shakespeare-char", "baby", max_steps=500)``
    """
    from lmlab.config import get_preset, preset_train_config
    from lmlab.training import launch

    if resume is not None:
        if init_from is not None:
            raise LmlabError("resume continues a run from its own checkpoints; init_from is for a new run")
        return launch.resume(Path(resume), data, model or {}, train_fields)
    if data is None:
        raise LmlabError("give the dataset directory to train on (made by lmlab prepare), e.g. data/shakespeare-char")
    if model is not None and not isinstance(model, dict):
        raise LmlabError(
            f"model= takes a dict of ModelConfig fields (e.g. {{'n_layer': 2}}), got {type(model).__name__}"
        )
    p = get_preset(preset or "baby")
    base = p.model if init_from is None else launch.parent_model_config(init_from)
    model_cfg = ModelConfig.from_dict({**base.to_dict(), **(model or {})})
    train_cfg = preset_train_config(p, **train_fields)
    return launch.start(
        Path(data), p, model_cfg, train_cfg, Path(out) if out else None,
        init_from=Path(init_from) if init_from is not None else None, init_checkpoint=init_checkpoint,
    )  # fmt: skip


def load(run: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: its model (eval mode) from ``checkpoint`` (best, latest, step-N; default best,
    else latest), its tokenizer and its config. ``lmlab.load("runs/baby-shakespeare-char").model``"""
    from lmlab import runs
    from lmlab.runtime import pick_device

    if not isinstance(run, str | os.PathLike):
        raise LmlabError(f"lmlab.load takes a run directory, got {type(run).__name__}")
    dev = device if hasattr(device, "type") else pick_device(device, "device")
    return runs.load(run, checkpoint=checkpoint, device=dev)


def plot(
    runs: list[str | Path],
    out: str | Path = "runs/compare.png",
    *,
    x: str = "step",
    metrics: list[str] | None = None,
    log_y: bool = False,
) -> Path:
    """Draw ``metrics`` (default train_loss and val_loss) of each run against steps or tokens (``x``), one panel
    per metric; returns the PNG path."""
    from lmlab.training.plot import plot_curves

    return plot_curves(runs, out, x=x, metrics=metrics, log_y=log_y)


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[str] = "",
    request: GenerationRequest | None = None,
    **options: Any,
) -> str | list[str]:
    """The text a model writes after ``prompt`` (the prompt itself not included); a list of prompts is one batch
    and gives a list of texts. Options are the fields of ``GenerationRequest`` (``max_new_tokens``,
    ``temperature``, ``top_k``, ``top_p``, ``min_p``, penalties, ``seed``, ``stop``, ...), given as keywords or
    as a ``request``. ``lmlab.generate(run.model, run.tokenizer, "ROMEO:", max_new_tokens=100, top_k=50, seed=0)``
    """
    from lmlab.generation.text import generate_text

    return generate_text(model, tokenizer, prompt, request, **options)


def stream(
    model: torch.nn.Module, tokenizer: Any, prompt: str = "", request: GenerationRequest | None = None, **options: Any
) -> Iterator[str]:
    """Like ``generate`` for one prompt, but yields the text in pieces as the tokens come (never inside a
    multi-byte character, never the beginning of a stop string)."""
    from lmlab.generation.text import stream_text

    return stream_text(model, tokenizer, prompt, request, **options)


def translate(
    run: str | Path,
    text: str | Sequence[str] | None = None,
    *,
    file: str | Path | None = None,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_new_tokens: int = 0,
    long: str = "truncate",
    batch_size: int = 64,
    checkpoint: str | None = None,
    device: str = "auto",
) -> str | list[str]:
    """Translate ``text`` (a sentence → a string; a list → a list) or every line of ``file`` (→ a list) with
    the seq2seq run ``run``. ``lmlab.translate("runs/seq2seq-base-eng-fra", "I am cold.")``"""
    from lmlab.generation.translation import load_translation_run, read_lines, translate_texts
    from lmlab.runtime import pick_device

    if (text is None) == (file is None):
        raise LmlabError('give either sentences to translate or --file, not both: lmlab translate RUN "I am cold."')
    _check_ints(beam=beam, batch_size=batch_size)
    _check_ints(lowest=0, max_new_tokens=max_new_tokens)
    _check_finite(length_penalty=length_penalty)
    if file is not None:
        texts, names = read_lines(file)
    else:
        texts = [text] if isinstance(text, str) else list(text)
        names = [f"sentence {i + 1}" for i in range(len(texts))]
    tr = load_translation_run(run, checkpoint, pick_device(device))
    out = translate_texts(
        tr.model, tr.src_tokenizer, tr.tgt_tokenizer, texts, beam=beam, length_penalty=length_penalty,
        max_new_tokens=max_new_tokens, batch_size=batch_size, long=long, names=names,
    )  # fmt: skip
    return out[0] if isinstance(text, str) else out


def evaluate(
    run: str | Path,
    split: str | None = None,
    *,
    data: str | Path | None = None,
    beam: int = 4,
    length_penalty: float = 1.0,
    batch_size: int = 64,
    limit: int = 0,
    checkpoint: str | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    show: int = 0,
    prompts: str | Path | None = None,
    reward: str | None = None,
    reward_label: str | None = None,
    reward_transform: str = "prob",
    reference: str | Path | None = None,
    samples: int = 1,
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    compare: str | Path | None = None,
    per_layer: bool = False,
    compare_tokens: int = 0,
    report: Any = None,
) -> dict[str, Any]:
    """Scores of run ``run`` on ``split`` (default: test for translation, val for a language model) of its dataset
    (or ``data``): BLEU, chrF and loss for a translation run,
    loss and perplexity for a language model; also written to RUN/eval-SPLIT.json (or ``out``). A classifier
    is scored on the labeled file ``data`` (default: its validation file): accuracy, macro-F1, Matthews
    correlation, written to RUN/eval-classify.json. A reward model is scored on a preference file ``data``
    (default: its validation file): pairwise accuracy with its standard error, mean margin (eval-reward.json).
    With ``prompts`` and ``reward``, a policy's responses to every prompt are scored instead: mean reward, KL to
    ``reference`` (default the run's parent), the reference's perplexity of them, distinct-2 (eval-prompts.json,
    with the responses). With ``compare`` (a reference run, e.g. the one ``run`` was quantized from): file sizes,
    perplexities, their change in percent, mean KL(reference ‖ run), top-1 agreement, and with ``per_layer`` each
    quantized layer's errors (eval-compare.json). ``report(scores)`` is called before the scores are saved (the
    CLI prints them), so a failed save loses nothing."""
    import time

    from lmlab.data.dataset import load_dataset
    from lmlab.eval.evaluation import check_same_tokenizer, eval_lm, eval_translation
    from lmlab.io import check_disjoint, write_json
    from lmlab.runs import read_config
    from lmlab.runtime import pick_device

    _check_ints(beam=beam, batch_size=batch_size, samples=samples, max_new_tokens=max_new_tokens)
    _check_ints(lowest=0, limit=limit, min_new_tokens=min_new_tokens, show=show)
    _check_finite(length_penalty=length_penalty, temperature=temperature)
    if temperature < 0:
        raise LmlabError(f"--temperature must be at least 0, got {temperature}")
    run = Path(run)
    cfg = read_config(run)
    if out is not None:
        if Path(out).is_dir():
            raise LmlabError(
                f"--out {out} is a directory; give a file name for the scores (e.g. {Path(out) / 'eval.json'})"
            )
        check_disjoint(out, [run / "config.json", run / "checkpoints", data, prompts], what="--out")

    def save(path: Path, scores: dict[str, Any]) -> dict[str, Any]:
        if report is not None:
            report(scores)
        write_json(path, scores)
        return scores

    if per_layer and compare is None:
        raise LmlabError("--per-layer goes with --compare REF (the run to compare each layer with)")
    _check_ints(lowest=0, compare_tokens=compare_tokens)
    if compare is not None:
        from lmlab.eval.compare import compare_runs

        if prompts is not None or reward is not None or "head" in cfg or cfg["model"].get("arch") == "seq2seq":
            raise LmlabError("--compare scores language models on their text; it takes no --prompts/--reward, "
                             "and no classifier, reward or translation run")  # fmt: skip
        read_config(compare)
        data_path = Path(data) if data is not None else Path(cfg.get("data", {}).get("path", ""))
        if not str(data_path) or not data_path.is_dir():
            raise LmlabError(f"the dataset of run {run} ({data_path}) is not there; pass its directory with --data")
        ds = load_dataset(data_path)
        check_same_tokenizer(run, ds.path)
        scores = compare_runs(run, Path(compare), ds, split or "val", batch_size, compare_tokens, checkpoint,
                              pick_device(device), per_layer=per_layer)  # fmt: skip
        return save(Path(out) if out is not None else run / "eval-compare.json", scores)
    if prompts is not None or reward is not None:
        if prompts is None or reward is None:
            raise LmlabError("scoring a policy's responses takes both --prompts FILE and --reward REWARD")
        from lmlab.training.rl import evaluate_policy

        scores = evaluate_policy(
            run, prompts, reward, reward_label=reward_label, reward_transform=reward_transform, reference=reference,
            samples=samples, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
            seed=seed, batch_size=batch_size, checkpoint=checkpoint, device=device,
        )  # fmt: skip
        return save(Path(out) if out is not None else run / "eval-prompts.json", scores)
    if (cfg.get("head") or {}).get("kind") == "reward":
        from lmlab.eval.reward import score_pairs

        val = cfg.get("finetune", {}).get("files", {}).get("val", {}).get("path")
        if data is None and val is None:
            raise LmlabError(f"give the preference file to score {run} on with --data FILE.jsonl")
        scores = score_pairs(run, data or val, batch_size=batch_size, checkpoint=checkpoint, device=device)
        return save(Path(out) if out is not None else run / "eval-reward.json", scores)
    if "head" in cfg:  # a classifier: scores on a labeled file (default: its validation file)
        from lmlab.eval.classify import classifier_run, score_file

        val = cfg.get("finetune", {}).get("files", {}).get("val", {}).get("path")
        if data is None and val is None:
            raise LmlabError(f"give the labeled file to score {run} on with --data FILE.tsv")
        scores = score_file(classifier_run(run, checkpoint, pick_device(device)), data or val, batch_size)
        return save(Path(out) if out is not None else run / "eval-classify.json", scores)
    own = cfg.get("data", {}).get("path") or ""
    tuned = cfg.get("finetune", {}).get("files", {}).get("data", {}).get("path") or ""
    if not own and Path(tuned).name == "meta.json":  # fine-tuned on a prepared dataset (distill): that dataset
        own = str(Path(tuned).parent)
    if data is None and not own:
        raise LmlabError(f"run {run} was not trained on a prepared dataset; pass one to score it on with --data")
    data_path = Path(data) if data is not None else Path(own)
    if not data_path.is_dir():
        raise LmlabError(f"the dataset of run {run} ({data_path}) is not there; pass its directory with --data")
    ds = load_dataset(data_path)
    check_same_tokenizer(run, ds.path)
    dev = pick_device(device)
    t0 = time.perf_counter()
    split = split or ("test" if cfg["model"].get("arch") == "seq2seq" else "val")
    if cfg["model"].get("arch") == "seq2seq":
        scores = eval_translation(run, ds, split, beam, length_penalty, batch_size, limit, checkpoint, dev, show)
    else:
        scores = eval_lm(run, ds, split, batch_size, checkpoint, dev)
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    return save(Path(out) if out is not None else run / f"eval-{split}.json", scores)


def _check_ints(lowest: int = 1, **values: Any) -> None:
    """Each value an integer of at least ``lowest`` (an option a user can get wrong: named in the message)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise LmlabError(f"--{name.replace('_', '-')} must be an integer, got {v!r}")
        if v < lowest:
            raise LmlabError(f"--{name.replace('_', '-')} must be at least {lowest}, got {v}")


def _check_finite(**values: Any) -> None:
    import math

    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LmlabError(f"--{name.replace('_', '-')} must be a finite number, got {v!r}")


def attention(
    run: str | Path,
    text: str = "",
    *,
    source: str | None = None,
    layers: Sequence[int] = (),
    out: str | Path | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Draw the attention weights of a GPT run on ``text`` (a grid: rows = ``layers``, default all; columns =
    heads), or, with ``source``, the cross-attention of a translation run between ``source`` and its
    translation. Returns the PNG path (default RUN/attention.png or RUN/cross-attention.png)."""
    if source is not None:
        from lmlab.eval.cross_attention import cross_attention

        return cross_attention(run, source, layers, out, checkpoint)
    from lmlab.eval.attention import gpt_attention

    return gpt_attention(run, text, layers, out, checkpoint)


def import_hf(src: str | Path, out: str | Path) -> Path:
    """Read a GPT-2 checkpoint directory saved by ``transformers`` into a new lmlab run directory ``out``."""
    from lmlab.models.hf import import_hf_run

    return import_hf_run(src, out)


def export_hf(run: str | Path, out: str | Path, checkpoint: str | None = None, overwrite: bool = False) -> Path:
    """Write run ``run`` (a GPT-2-shaped GPT) as a directory ``GPT2LMHeadModel.from_pretrained(out)`` loads; an
    existing ``out`` is replaced only with ``overwrite``."""
    from lmlab.models.hf import export_hf_run

    return export_hf_run(run, out, checkpoint, overwrite)


def finetune(
    run: str | Path,
    method: str,
    data: str | Path,
    *,
    out: str | Path | None = None,
    checkpoint: str | None = None,
    lora: dict[str, Any] | None = None,
    scratch: bool = False,
    **options: Any,
) -> TrainResult:
    """Fine-tune the trained run ``run`` with ``method`` on ``data`` into a new run that records ``run`` as its
    parent. ``classify`` (GPT-1): a linear head on the last token, loss = classification + ``aux_lm`` × LM;
    ``data`` is a labeled .tsv (with a header) or .jsonl. ``sft``: next-token loss on the assistant replies of
    conversations rendered by lmlab's chat template (``data``: messages, prompt-completion, Alpaca, Dolly,
    GSM8K or Self-Instruct records). ``reward``: a reward model (Bradley–Terry) and ``dpo`` (DPO, IPO, hinge) on
    preference pairs or rankings (JSONL). ``ppo`` and ``grpo``: RL with ``data`` the prompt file and
    ``reward=`` a reward-model run, a classifier run (with ``reward_label``) or ``"module:function"``.
    ``options`` are the method's (``val``, ``val_fraction``, ``epochs``; ``aux_lm`` for classify, ``format``
    for sft, ``beta`` for dpo, ``kl_coef`` for ppo ...) and TrainConfig fields (``lr=1e-4``); the defaults
    are each method's recipe (GPT-1's for classify). ``lora`` (``{"r": 8, "alpha": 16, "dropout": 0.0, "targets":
    ["attention"]}``) trains low-rank adapters only and saves just them. ``scratch=True`` takes only ``run``'s
    architecture and tokenizer and starts from random weights (the "no pre-training" baseline).
    ``lmlab.finetune("runs/base", "classify", "sst2/train.tsv", val="sst2/dev.tsv")``"""
    from lmlab.errors import did_you_mean
    from lmlab.objectives.base import FINETUNE_METHODS, finetune_method
    from lmlab.training import launch
    from lmlab.training.rl import METHODS as RL_METHODS

    methods = {m: finetune_method(m).Options for m in FINETUNE_METHODS} | RL_METHODS
    if method not in methods:
        raise LmlabError(f"unknown fine-tuning method {method!r}{did_you_mean(method, methods)}; the methods are "
                         + ", ".join(methods))  # fmt: skip
    own = {f.name for f in dataclasses.fields(methods[method])}
    known = own | {f.name for f in dataclasses.fields(TrainConfig)}
    for name in options:
        if name not in known:
            others = [m for m, c in methods.items() if name in {f.name for f in dataclasses.fields(c)}]
            where = f"an option of {others[0]}, not of {method}" if others else f"not an option of {method}"
            raise LmlabError(f"--{name.replace('_', '-')} is {where}")
    opts = methods[method](**{k: v for k, v in options.items() if k in own})
    train_over = {k: v for k, v in options.items() if k not in own}
    TrainConfig(**{**TrainConfig().to_dict(), **train_over})  # check the values before reading any data
    run, data = Path(run), Path(data)
    from lmlab.models.lora import LoRAConfig

    lora_cfg = LoRAConfig(**{k: tuple(v) if k == "targets" else v for k, v in (lora or {}).items()})
    return launch.finetune(
        run, method, data, opts, train_over, out=Path(out) if out else None, checkpoint=checkpoint, lora=lora_cfg,
        scratch=scratch,
    )  # fmt: skip


def classify(
    run: str | Path,
    text: str | Sequence[str] | None = None,
    *,
    file: str | Path | None = None,
    pair: str | None = None,
    batch_size: int = 64,
    checkpoint: str | None = None,
    device: str = "auto",
) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify ``text`` (a string → one result; a list → a list) or every line of ``file`` with a fine-tuned
    classifier run. A result is ``{"label": ..., "probs": {label: p, ...}}``; ``pair`` is the second text of a
    pair task (entailment), shared by every text."""
    from lmlab.data.formats.labeled import Example
    from lmlab.eval.classify import classifier_run, probabilities
    from lmlab.generation.translation import read_lines
    from lmlab.runtime import pick_device

    if (text is None) == (file is None):
        raise LmlabError('give either texts to classify or --file, not both: lmlab classify RUN "a fine film"')
    texts = read_lines(file)[0] if file is not None else ([text] if isinstance(text, str) else list(text))
    for i, t in enumerate(texts, start=1):
        if not t.strip():
            raise LmlabError(f"{'line' if file is not None else 'text'} {i} is empty; there is nothing to classify")
    loaded = classifier_run(run, checkpoint, pick_device(device))
    examples = [Example(t, "", pair, i) for i, t in enumerate(texts, start=1)]
    probs = probabilities(loaded, examples, batch_size, str(file) if file is not None else "text")
    labels = loaded.labels
    out = [{"label": labels[int(p.argmax())], "probs": dict(zip(labels, map(float, p)))} for p in probs]
    return out[0] if isinstance(text, str) else out


def chat(
    run: str | Path,
    messages: Sequence[dict[str, str]] | str,
    *,
    system: str | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    **options: Any,
) -> str:
    """The reply of run ``run`` to a conversation (``[{"role": "user", "content": ...}, ...]``, or one user
    message as a string). A chat model (an SFT run) sees it through lmlab's chat template and stops at
    ``<|end|>``; a base model continues the messages' text. ``system`` adds a system message first; ``options``
    are ``GenerationRequest`` fields (``max_new_tokens``, ``temperature``, ``seed`` ...)."""
    from lmlab.generation.chat import stream_reply, uses_template
    from lmlab.generation.request import GenerationRequest
    from lmlab.runs import check_generates_text, load, read_config
    from lmlab.runtime import pick_device

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + list(messages)
    request = GenerationRequest(**options)  # bad options fail before the model is loaded
    check_generates_text(run, read_config(run), "chat")
    loaded = load(run, checkpoint=checkpoint, device=pick_device(device))
    if loaded.tokenizer is None:
        raise LmlabError(f"{run} has no tokenizer.json; copy its dataset's tokenizer.json into it")
    pieces = stream_reply(loaded.model, loaded.tokenizer, messages, request, template=uses_template(loaded.config))
    return "".join(pieces)


def score(
    run: str | Path,
    prompt: str | Sequence[dict[str, str]],
    responses: str | Sequence[str],
    *,
    label: str | None = None,
    transform: str = "prob",
    checkpoint: str | None = None,
    device: str = "auto",
) -> float | list[float]:
    """The reward of ``responses`` (a string → one float; a list → a list) to ``prompt`` (text, or the messages before
    the response) under a reward-model run; or, with ``label``, the probability (``transform="logprob"``: its log) of
    that label under a classifier run. ``lmlab.score("runs/rm", "How do I bake bread?", ["Knead...", "No."])``"""
    from lmlab.eval.reward import score as score_

    values = score_(run, prompt, [responses] if isinstance(responses, str) else list(responses), label=label,
                    transform=transform, checkpoint=checkpoint, device=device)  # fmt: skip
    return values[0] if isinstance(responses, str) else values


def merge(run: str | Path, out: str | Path, *, checkpoint: str | None = None) -> Path:
    """Fold the LoRA adapters of run ``run`` into its base weights and write a standalone run ``out`` (its parent
    is ``run``; its logits equal the LoRA run's). Returns ``out``."""
    from lmlab.models.lora import merge_lora
    from lmlab.runs import load, read_config, save_run

    run, out = Path(run), Path(out)
    cfg = read_config(run)
    if "lora" not in cfg:
        raise LmlabError(f"{run} has no LoRA adapters (it was not fine-tuned with --lora.r); nothing to merge")
    if out.resolve() == run.resolve() or (out / "config.json").exists():
        raise LmlabError(f"{out} already holds a run; choose a new output directory")
    loaded = load(run, checkpoint=checkpoint)
    merge_lora(loaded.model)
    config = {k: v for k, v in cfg.items() if k not in ("lora", "model", "parent", "resumes")}
    config["parent"] = {
        "run": str(run.resolve()), "checkpoint": loaded.checkpoint.name, "step": loaded.state.get("step"),
        "objective": cfg.get("objective"), "method": "merge",
    }  # fmt: skip
    return save_run(out, loaded.model, loaded.tokenizer, extra_config=config, step=int(loaded.state.get("step", 0)))


def quantize(
    run: str | Path,
    out: str | Path,
    *,
    scheme: str = "int8",
    group_size: int = 0,
    method: str = "rtn",
    symmetric: bool = True,
    keep: Sequence[str] | str = ("embeddings", "head"),
    calib: str | Path | None = None,
    calib_tokens: int = 32768,
    eval_tokens: int = 65536,
    batch_size: int = 16,
    checkpoint: str | None = None,
    seed: int = 0,
    report: Any = None,
) -> dict[str, Any]:
    """Quantize the weights of run ``run`` and write the child run ``out`` (see ``lmlab.models.quant``): ``scheme``
    int8 (per output channel) or int4 (groups of ``group_size`` inputs, default 128), ``method`` rtn (no data) or
    gptq (calibrated on ``calib_tokens`` tokens of the train split of ``calib``, default the run's dataset);
    ``keep`` names the float tensors kept (embeddings, head; "none" quantizes both). Then compares ``out`` with
    ``run`` on up to ``eval_tokens`` validation tokens (0 = the whole split; skipped when the dataset is not
    there): sizes, perplexities, KL, top-1 agreement. ``report(line)`` receives the progress and result lines.
    Returns the comparison (also in OUT/quantize.json)."""
    import time

    import numpy as np
    import torch

    from lmlab.data.dataset import load_dataset
    from lmlab.eval.compare import compare_runs, format_comparison
    from lmlab.io import check_disjoint, sha256_file, write_json
    from lmlab.models import quant
    from lmlab.runs import load, read_config, save_run

    _check_ints(calib_tokens=calib_tokens, batch_size=batch_size)
    _check_ints(lowest=0, eval_tokens=eval_tokens, group_size=group_size)
    say = report or (lambda line: None)
    run, out = Path(run), Path(out)
    cfg = read_config(run)
    if isinstance(keep, str):
        keep = () if keep.strip() in ("", "none") else tuple(k.strip() for k in keep.split(","))
    spec = quant.QuantSpec(scheme, group_size, symmetric, method, tuple(keep))
    if cfg.get("quant"):
        raise LmlabError(f"{run} is quantized already ({quant.QuantSpec.from_dict(cfg['quant']).name}); quantize "
                         "its parent instead")  # fmt: skip
    arch = cfg["model"].get("arch")
    if arch in ("rnn", "lstm"):
        raise LmlabError(f"{run} is an {arch} run: its recurrent cells run PyTorch's fused float kernels, which take "
                         "no quantized weights; quantize a GPT or seq2seq run")  # fmt: skip
    if "lora" in cfg:
        raise LmlabError(f"{run} is a LoRA run; merge its adapters first (lmlab merge {run} --out RUN) and quantize "
                         "the merged run")  # fmt: skip
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmlabError(f"--out {out} exists; choose a new run directory")
    check_disjoint(out, [run], what="--out")
    data_path = Path(calib) if calib is not None else Path((cfg.get("data") or {}).get("path", ""))
    t0 = time.perf_counter()
    loaded = load(run, checkpoint=checkpoint)
    model = loaded.model
    names = quant.targets(model, spec)
    if not names:
        raise LmlabError(f"--keep {','.join(spec.keep) or 'none'} leaves nothing of {run} to quantize")
    for name in names:
        quant.check_layer(name, model.get_submodule(name), spec)
    results = None
    if method == "gptq":
        if arch == "seq2seq":
            raise LmlabError("--method gptq calibrates on language-model text; use rtn for a translation run")
        if not str(data_path) or not data_path.is_dir():
            raise LmlabError(f"--method gptq needs calibration text: the run's dataset ({data_path}) is not there; "
                             "pass a dataset directory with --calib")  # fmt: skip
        ds = load_dataset(data_path)
        tok = run / "tokenizer.json"
        if (
            not tok.is_file()
            or not (ds.path / "tokenizer.json").is_file()
            or (sha256_file(tok) != sha256_file(ds.path / "tokenizer.json"))
        ):
            raise LmlabError(f"--calib {data_path} was tokenized with another tokenizer than {run}; calibrate on "
                             "text prepared with the run's own tokenizer")  # fmt: skip
        tokens = ds.tokens("train")
        block = model.config.block_size
        n = max(1, min(calib_tokens // block, (len(tokens) - 1) // block))
        if (len(tokens) - 1) // block < 1:
            raise LmlabError(f"--calib {data_path}: its train split is shorter than one window of {block} tokens")
        starts = np.random.default_rng(seed).choice((len(tokens) - 1) // block, size=n, replace=False) * block
        windows = torch.from_numpy(np.stack([tokens[s : s + block].astype(np.int64) for s in starts]))
        say(f"GPTQ: Hessians of {len(names)} layers from {n * block:,} calibration tokens of {data_path}")
        hess = quant.hessians(model, names, windows.split(batch_size))
        results = {}
        for name in names:
            if name in hess:
                results[name] = quant.gptq(model.get_submodule(name).weight, hess[name], spec)
    done = quant.quantize_model(model, spec, results)
    config = {k: v for k, v in cfg.items() if k not in ("model", "parent", "resumes", "tokenizer_sha256")}
    config["quant"] = spec.to_dict()
    config["parent"] = {
        "run": str(run.resolve()), "checkpoint": loaded.checkpoint.name, "step": loaded.state.get("step"),
        "objective": cfg.get("objective"), "method": "quantize",
    }  # fmt: skip
    extra = tuple(p for p in (run / "tokenizer.src.json",) if p.is_file())
    save_run(
        out, model, loaded.tokenizer, extra_config=config, step=int(loaded.state.get("step", 0)), extra_files=extra
    )
    say(f"quantized {len(done)} layers of {run} ({spec.name}) -> {out}  [{time.perf_counter() - t0:.1f}s]")
    scores: dict[str, Any] = {"run": str(out), "reference": str(run), "quant": spec.to_dict(), "layers": done}
    if arch != "seq2seq" and "head" not in cfg and str(data_path) and (data_path / "meta.json").is_file():
        ds = load_dataset(data_path)
        scores = compare_runs(
            out, run, ds, "val", batch_size, eval_tokens, None, "cpu", reference_checkpoint=checkpoint
        )
        scores["quantized"] = done
        for line in format_comparison(scores):
            say(line)
    write_json(out / "quantize.json", scores)
    return scores


def experiment(name: str, **options: Any) -> dict[str, Any]:
    """Run the experiment ``name`` (``gpt1-ablation``, ``sft-skills``) end to end and return its results (also
    written as NAME.md, NAME.json and NAME.png in ``out``, default runs/experiments). ``options`` are those of
    ``lmlab experiment NAME --help`` (``quick=True``, ``seeds=3``, ``out=...``).
    ``lmlab.experiment("gpt1-ablation", quick=True)``"""
    import importlib
    import inspect

    from lmlab.errors import did_you_mean
    from lmlab.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise LmlabError(f"unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)}")
    run = importlib.import_module(EXPERIMENTS[name].module).run
    known = inspect.signature(run).parameters
    for key in options:
        if key not in known:
            raise LmlabError(f"{key!r} is not an option of experiment {name}{did_you_mean(key, known)}")
    return run(**options)


def serve(
    runs: str | Path | Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    names: Sequence[str] = (),
    max_batch: int = 16,
    max_queue: int = 64,
    checkpoint: str | None = None,
    device: str = "auto",
    log_level: str = "warning",
    background: bool = False,
):
    """Serve runs over an OpenAI-compatible HTTP API with a chat page at ``/`` (see ``lmlab.serving``).

    Blocks until Ctrl-C, or with ``background=True`` returns a started ``lmlab.serving.server.Server`` (``.url``,
    ``.close()``; a context manager) on a background thread."""
    from lmlab.serving.server import Server, load_served, serve_forever

    run_list = [runs] if isinstance(runs, str | os.PathLike) else list(runs)
    if not background:
        return serve_forever(
            run_list, host=host, port=port, api_key=api_key, names=names, max_batch=max_batch,
            max_queue=max_queue, device=device, checkpoint=checkpoint, log_level=log_level,
        )  # fmt: skip
    served = load_served(run_list, names=names, max_batch=max_batch, max_queue=max_queue, device=device,
                         checkpoint=checkpoint)  # fmt: skip
    try:
        return Server(served, host=host, port=port, api_key=api_key, log_level=log_level).start()
    except BaseException:
        for s in served:
            s.scheduler.close()
        raise
