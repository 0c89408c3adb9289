"""Interop with Hugging Face GPT-2 checkpoints (``transformers.GPT2LMHeadModel`` directories).

A GPT-2 directory is ``config.json`` + ``model.safetensors`` (or sharded ``model-0000x-of-0000n``
files with an index). Reading and writing need only ``safetensors``; ``transformers`` is not
imported. GPT-2 stores its linear layers as ``Conv1D`` with (in, out) weights, the transpose of
``nn.Linear``; its fused ``c_attn`` has the same [q | k | v] row layout as lmlab's ``qkv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lmlab import io
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError

# GPT-2's activation names that mean "GELU, tanh approximation" (lmlab's "gelu")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The ModelConfig of a GPT-2 ``config.json`` (as a dict); refuses variants lmlab cannot reproduce."""
    if hf.get("model_type") != "gpt2":
        raise LmlabError(
            f"{where}: model_type is {hf.get('model_type')!r}, not 'gpt2'; import-hf reads GPT-2 checkpoints only"
        )
    act = hf.get("activation_function", "gelu_new")
    unsupported = {  # field: (refused?, why)
        "activation_function": (act not in _TANH_GELUS, f"is {act!r}; lmlab's gelu is GPT-2's gelu_new"),
        "scale_attn_by_inverse_layer_idx": (bool(hf.get("scale_attn_by_inverse_layer_idx")), "is true"),
        "scale_attn_weights": (not hf.get("scale_attn_weights", True), "is false"),
        "add_cross_attention": (bool(hf.get("add_cross_attention")), "is true"),
    }
    for name, (bad, why) in unsupported.items():
        if bad:
            raise LmlabError(f"{where}: {name} {why}, which lmlab's GPT does not support; import a standard GPT-2")
    try:
        n_embd = int(hf["n_embd"])
        return ModelConfig(
            arch="gpt",
            vocab_size=int(hf["vocab_size"]),
            block_size=int(hf["n_positions"]),
            n_layer=int(hf["n_layer"]),
            n_head=int(hf["n_head"]),
            n_embd=n_embd,
            ffn_hidden=int(hf.get("n_inner") or 4 * n_embd),
            pos="learned",
            norm="layernorm",
            norm_position="pre",
            activation="gelu",
            bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            dropout=float(hf.get("resid_pdrop", 0.0)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise LmlabError(f"{where}: missing field {e.args[0]!r}; is this a GPT-2 config.json?") from None


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A GPT-2 ``config.json`` dict for a GPT-2-shaped ModelConfig (see :func:`check_gpt2_shape`)."""
    check_gpt2_shape(cfg)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ffn_dim,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": "float32",
    }


def check_gpt2_shape(cfg: ModelConfig) -> None:
    """Refuse a config GPT-2 cannot express, naming the first field that differs."""
    need = {
        "arch": "gpt",
        "pos": "learned",
        "norm": "layernorm",
        "norm_position": "pre",
        "activation": "gelu",
        "bias": True,
    }
    for name, value in need.items():
        if getattr(cfg, name) != value:
            raise LmlabError(
                f"model.{name} is {getattr(cfg, name)!r} but GPT-2 needs {value!r}; "
                "export-hf writes GPT-2 checkpoints only (learned positions, LayerNorm, GELU, biases)"
            )
    if cfg.kv_heads != cfg.n_head:
        raise LmlabError(f"model.n_kv_head is {cfg.n_kv_head} but GPT-2 has no grouped-query attention; export needs 0")


# ---------------------------------------------------------------------------------------------
# weights


def _hf_names(i: int) -> dict[str, tuple[str, bool]]:
    """lmlab name -> (GPT-2 name, transposed?) for block i."""
    h, b = f"transformer.h.{i}", f"blocks.{i}"
    return {
        f"{b}.norm1.weight": (f"{h}.ln_1.weight", False),
        f"{b}.norm1.bias": (f"{h}.ln_1.bias", False),
        f"{b}.attn.qkv.weight": (f"{h}.attn.c_attn.weight", True),
        f"{b}.attn.qkv.bias": (f"{h}.attn.c_attn.bias", False),
        f"{b}.attn.proj.weight": (f"{h}.attn.c_proj.weight", True),
        f"{b}.attn.proj.bias": (f"{h}.attn.c_proj.bias", False),
        f"{b}.norm2.weight": (f"{h}.ln_2.weight", False),
        f"{b}.norm2.bias": (f"{h}.ln_2.bias", False),
        f"{b}.mlp.up.weight": (f"{h}.mlp.c_fc.weight", True),
        f"{b}.mlp.up.bias": (f"{h}.mlp.c_fc.bias", False),
        f"{b}.mlp.down.weight": (f"{h}.mlp.c_proj.weight", True),
        f"{b}.mlp.down.bias": (f"{h}.mlp.c_proj.bias", False),
    }


def _name_map(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    names = {
        "wte.weight": ("transformer.wte.weight", False),
        "wpe.weight": ("transformer.wpe.weight", False),
        "norm_f.weight": ("transformer.ln_f.weight", False),
        "norm_f.bias": ("transformer.ln_f.bias", False),
    }
    for i in range(cfg.n_layer):
        names.update(_hf_names(i))
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight", False)
    return names


def state_dict_to_hf(model: torch.nn.Module) -> dict[str, Tensor]:
    """GPT-2 tensors (Conv1D layout, contiguous, tied head left out as transformers does) of an lmlab GPT."""
    check_gpt2_shape(model.config)
    sd = model.state_dict()
    out = {}
    for ours, (theirs, transpose) in _name_map(model.config).items():
        t = sd[ours].detach()
        out[theirs] = (t.t() if transpose else t).contiguous().cpu()
    return out


def state_dict_from_hf(tensors: dict[str, Tensor], cfg: ModelConfig, where: str = "checkpoint") -> dict[str, Tensor]:
    """lmlab GPT tensors from GPT-2 ones (with or without the ``transformer.`` prefix), as float32."""
    if not any(k.startswith("transformer.") for k in tensors):
        tensors = {f"transformer.{k}": v for k, v in tensors.items()}  # saved from GPT2Model, not GPT2LMHeadModel
    out = {}
    for ours, (theirs, transpose) in _name_map(cfg).items():
        if theirs not in tensors:
            raise LmlabError(f"{where}: tensor {theirs!r} is missing; is this a complete GPT-2 checkpoint?")
        t = tensors[theirs].to(torch.float32)
        out[ours] = t.t().contiguous() if transpose else t
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]  # the same tensor under both names, as in the model
    return out


def _read_safetensors(src: Path) -> dict[str, Tensor]:
    index = src / "model.safetensors.index.json"
    if (src / "model.safetensors").is_file():
        files = [src / "model.safetensors"]
    elif index.is_file():
        files = [src / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (src / "pytorch_model.bin").is_file():
        raise LmlabError(
            f"{src} has only pytorch_model.bin (a pickle); lmlab reads safetensors only: re-save it with "
            "transformers' save_pretrained(dir) (safetensors is the default)"
        )
    else:
        raise LmlabError(f"{src} has no model.safetensors; save the model with transformers' save_pretrained")
    tensors: dict[str, Tensor] = {}
    for f in files:
        if not f.is_file():
            raise LmlabError(f"{f} is listed in the shard index but missing")
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[k] = sf.get_tensor(k)
    return tensors


def load_hf_model(src: str | Path) -> torch.nn.Module:
    """An lmlab GPT holding the weights of the GPT-2 directory ``src`` (in eval mode)."""
    from lmlab.models import build_model

    src = Path(src)
    if not src.is_dir():
        raise LmlabError(
            f"{src}: no such directory; give a directory saved by transformers (config.json + model.safetensors)"
        )
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise LmlabError(f"{src} has no config.json; give a directory saved by transformers' save_pretrained")
    try:
        hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    cfg = config_from_hf(hf_cfg, str(cfg_path))
    model = build_model(cfg)
    model.load_state_dict(state_dict_from_hf(_read_safetensors(src), cfg, str(src)), strict=True)
    return model.eval()


def _hf_tokenizer(src: Path):
    """An lmlab Tokenizer from the directory's tokenizer.json, or from GPT-2's vocab.json + merges.txt; else None."""
    from lmlab.data.tokenizer import Tokenizer, load_tokenizer

    if (src / "tokenizer.json").is_file():
        return load_tokenizer(src / "tokenizer.json")
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        hf = HFTokenizer(models.BPE.from_file(str(src / "vocab.json"), str(src / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return Tokenizer(hf, "bpe")
    return None


def save_hf_model(
    model: torch.nn.Module, out: str | Path, tokenizer_file: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` that ``GPT2LMHeadModel.from_pretrained`` loads. The
    directory is built beside ``out`` and swapped in whole: an interrupted export leaves nothing (or the old one).
    An existing ``out`` is replaced only with ``overwrite`` and only when it holds a checkpoint (a config.json)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out} exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LmlabError(f"{out} exists; pass --overwrite to replace it or choose another output directory")
        if not (out / "config.json").is_file():
            raise LmlabError(f"{out} is not a model directory (no config.json); --overwrite replaces only a model")
    tensors = state_dict_to_hf(model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io.write_error(out.parent, e) from None
    with io.atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        io.write_json(tmp / "config.json", config_to_hf(model.config))
        if tokenizer_file is not None and Path(tokenizer_file).is_file():
            io.write_bytes(tmp / "tokenizer.json", Path(tokenizer_file).read_bytes())
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size}
            io.write_json(tmp / "tokenizer_config.json", config)
    return out


# ---------------------------------------------------------------------------------------------
# the verbs


def import_hf_run(src: str | Path, out: str | Path) -> Path:
    """Read a GPT-2 checkpoint directory saved by ``transformers`` into a new lmlab run directory ``out``."""
    from lmlab.runs import save_run

    src, out = Path(src), Path(out)
    io.check_disjoint(out, [src], what="the output")
    if (out / "config.json").exists():
        raise LmlabError(f"{out} already holds a run; choose a new output directory")
    model = load_hf_model(src)
    return save_run(out, model, _hf_tokenizer(src), extra_config={"source": {"import_hf": str(src.resolve())}})


def export_hf_run(run: str | Path, out: str | Path, checkpoint: str | None = None, overwrite: bool = False) -> Path:
    """Write run ``run`` (a GPT-2-shaped GPT) as a directory ``GPT2LMHeadModel.from_pretrained(out)`` loads."""
    from lmlab.runs import load_run, read_config

    run = Path(run)
    io.check_disjoint(out, [run], what="the output")
    cfg = read_config(run)
    if "head" in cfg:
        raise LmlabError(f"{run} is a classifier; GPT-2's format has no place for its head, so it cannot be exported")
    if "lora" in cfg:
        raise LmlabError(f"{run} keeps LoRA adapters; merge them first (lmlab merge {run} --out NEW), then export NEW")
    check_gpt2_shape(ModelConfig.from_dict(cfg["model"]))  # before loading any weights
    model, _, _ = load_run(run, checkpoint=checkpoint)
    return save_hf_model(model, out, run / "tokenizer.json", overwrite=overwrite)
