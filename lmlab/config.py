"""Configs as plain dataclasses, and the one registry of named presets.

A config is plain data: classes are chosen by name ("rope", "rmsnorm"), derived fields are filled
in ``__post_init__``, and a model is rebuilt from its ``config.json`` alone. Each field's trailing
comment is its ``--help`` line on the command line (tyro reads it).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lmlab.errors import LmlabError, did_you_mean


def check_types(obj: Any, prefix: str = "--") -> None:
    """Refuse a config field whose value is not of its declared type (``vocab_size="big"``, a NaN learning rate),
    naming the field as the Python API and the command line spell it. The command line parses types already; this
    guards the Python API, where any value can be passed."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints.get(f.name)
        if hint is not None and not _fits(value, hint):
            raise LmlabError(
                f"{f.name} must be {_describe(hint)}, got {value!r} ({prefix}{f.name.replace('_', '-')} on the "
                "command line)"
            )


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is Literal:  # the value itself is checked where the choices are named (with "did you mean")
        return isinstance(value, type(typing.get_args(hint)[0]))
    if origin is tuple:
        return isinstance(value, (tuple, list))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # a type this check does not know: left to the code that uses it


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "None"
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def make_config(cls: Any, fields: dict[str, Any], what: str) -> Any:
    """``cls(**fields)``, with an unknown field refused by name ("did you mean") instead of a TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise LmlabError(f"unknown {what} option {unknown[0]!r}{did_you_mean(unknown[0], known)}")
    return cls(**fields)


ARCHS = ("gpt", "rnn", "lstm", "seq2seq")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("layernorm", "rmsnorm", "batchnorm", "none")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "swiglu", "relu2", "relu")


@dataclass
class ModelConfig:
    """The shape of a model. One dataclass for every architecture; each uses the fields it needs."""

    arch: Literal["gpt", "rnn", "lstm", "seq2seq"] = "gpt"  # architecture
    vocab_size: int = 0  # vocabulary size; 0 = take it from the dataset's tokenizer
    block_size: int = 64  # context length in tokens (the largest position a model can see)
    n_layer: int = 4  # number of Transformer blocks or stacked recurrent layers
    n_head: int = 4  # attention heads
    n_kv_head: int = 0  # key/value heads for grouped-query attention; 0 = n_head (plain multi-head)
    n_embd: int = 128  # model width d_model (RNN/LSTM: embedding size)
    n_hidden: int = 0  # RNN/LSTM hidden size; 0 = n_embd
    ffn_hidden: int = 0  # feed-forward inner width; 0 = 4*n_embd (gelu/relu2/relu) or ~8/3*n_embd (swiglu)
    pos: Literal["learned", "sinusoidal", "rope", "none"] = "learned"  # positional encoding
    norm: Literal["layernorm", "rmsnorm", "batchnorm", "none"] = "layernorm"  # normalization layer
    norm_position: Literal["pre", "post"] = "pre"  # norm before each sublayer (GPT-2) or after (original)
    activation: Literal["gelu", "swiglu", "relu2", "relu"] = "gelu"  # feed-forward activation
    bias: bool = True  # biases in linear layers and norms
    tie_embeddings: bool = True  # share the input embedding and the output layer weights
    dropout: float = 0.0  # dropout probability (embeddings, attention, residuals, between RNN layers)
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # epsilon of LayerNorm / RMSNorm
    init_std: float = 0.02  # standard deviation of the normal weight initialization
    n_encoder_layer: int = 0  # seq2seq: encoder blocks; 0 = n_layer
    label_smoothing: float = 0.0  # label smoothing of the training loss (seq2seq uses 0.1)
    src_vocab_size: int = 0  # seq2seq: source vocabulary of its own embedding table; 0 = share the target's

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse an inconsistent shape with a message that names the field."""
        check_types(self, "--model.")
        for name, allowed in (
            ("arch", ARCHS),
            ("pos", POSITIONS),
            ("norm", NORMS),
            ("norm_position", NORM_POSITIONS),
            ("activation", ACTIVATIONS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise LmlabError(
                    f"model.{name}: unknown value {value!r}{did_you_mean(str(value), allowed)}; "
                    f"choose one of {', '.join(allowed)}"
                )
        for name in ("block_size", "n_layer", "n_embd"):
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vocab_size", "n_kv_head", "n_hidden", "ffn_hidden", "n_encoder_layer", "src_vocab_size"):
            if getattr(self, name) < 0:
                raise LmlabError(f"model.{name} must be >= 0 (0 = default), got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise LmlabError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.arch in ("gpt", "seq2seq"):
            if self.n_head < 1:
                raise LmlabError(f"model.n_head must be at least 1, got {self.n_head}")
            if self.n_embd % self.n_head:
                raise LmlabError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
            kv = self.n_kv_head or self.n_head
            if self.n_head % kv:
                raise LmlabError(
                    f"model.n_kv_head ({kv}) must divide model.n_head ({self.n_head}) for grouped-query attention"
                )
            if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
                raise LmlabError(
                    f"model.pos 'rope' needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}"
                )
            if self.pos == "sinusoidal" and self.n_embd % 2:
                raise LmlabError(f"model.pos 'sinusoidal' needs an even model.n_embd, got {self.n_embd}")

    # derived values, computed rather than stored so the config stays plain data
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        return self.n_hidden or self.n_embd

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.activation == "swiglu":
            # 2/3 of 4*d keeps the parameter count of a 4*d MLP; round up to a multiple of 64 for fast matmuls
            return (int(8 * self.n_embd / 3) + 63) // 64 * 64
        return 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LmlabError(f"unknown model option {unknown[0]!r}{did_you_mean(unknown[0], known)}")
        return cls(**d)


@dataclass(frozen=True)
class Preset:
    """A named starting point: a model shape plus the training settings that suit it."""

    name: str
    description: str
    model: ModelConfig
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the training config's defaults


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in _PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a mistyped name gets a "did you mean"."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise LmlabError(
            f"unknown preset {name!r}{did_you_mean(name, _PRESETS)}; known presets: {', '.join(_PRESETS)}"
        ) from None


def preset_names() -> list[str]:
    return list(_PRESETS)


def list_presets() -> list[Preset]:
    return list(_PRESETS.values())


# ---------------------------------------------------------------------------------------------
# The presets. Training fields are names of the training config (lmlab.train()); the values follow
# the published recipes the presets are named after.
register_preset(
    Preset(
        "tiny",
        "2-layer GPT of width 32 for tests; trains in seconds",
        ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32),
        {"batch_size": 8, "max_steps": 50, "lr": 3e-3, "warmup_steps": 5, "eval_every": 25, "eval_steps": 4},
    )
)
register_preset(
    Preset(
        "baby",
        "nanoGPT's CPU config: 4 layers, 4 heads, width 128, block 64",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        {
            "batch_size": 12,
            "max_steps": 2000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,  # nanoGPT's shakespeare_char value: each step sees few tokens
            "eval_every": 250,
            "eval_steps": 20,
        },
    )
)
register_preset(
    Preset(
        "speedrun",
        "baby's shape with RoPE, trained for time: Muon, bf16, 450 steps, one evaluation on the whole val split",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, pos="rope"),
        {
            # tiny Shakespeare (char) to val <= 1.88 in ~23 s on 2 cores with AMX/AVX512-BF16 (issue 19;
            # BENCHMARKS.md "speedrun": recipe and ablation). bf16 is slow on a CPU without bf16 instructions:
            # there, --train.precision fp32 (about 1.2x the time)
            "batch_size": 12,
            "max_steps": 450,
            "optimizer": "muon",
            "lr": 8e-3,
            "min_lr": 8e-4,
            "warmup_steps": 30,
            "beta2": 0.99,
            "precision": "bf16",
            "eval_every": 0,  # evaluate once, at the end
            "eval_steps": 1_000_000,  # over every validation window: the full split, not an estimate
            "sample_tokens": 0,
            "track": "none",  # metrics.jsonl only; --train.track tensorboard to add the events
        },
    )
)
register_preset(
    Preset(
        "shakespeare-char",
        "nanoGPT's Shakespeare config: 6 layers, 6 heads, width 384, block 256, dropout 0.2",
        ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        {
            "batch_size": 64,
            "max_steps": 5000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_every": 250,
            "eval_steps": 200,
        },
    )
)
register_preset(
    Preset(
        "gpt2-124m",
        "GPT-2 small: 12 layers, 12 heads, width 768, block 1024",
        ModelConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768),
        {
            "batch_size": 8,
            "max_steps": 10000,
            "lr": 6e-4,
            "min_lr": 6e-5,
            "warmup_steps": 700,
            "weight_decay": 0.1,
            "beta2": 0.95,
            "eval_every": 500,
            "eval_steps": 50,
        },
    )
)
register_preset(
    Preset(
        "modern-small",
        "Llama-style small GPT: RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention; 6 layers, width 384",
        ModelConfig(
            block_size=256,
            n_layer=6,
            n_head=6,
            n_kv_head=2,
            n_embd=384,
            pos="rope",
            norm="rmsnorm",
            activation="swiglu",
            bias=False,
            tie_embeddings=False,
        ),
        {
            "batch_size": 64,
            "max_steps": 5000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_every": 250,
            "eval_steps": 200,
        },
    )
)
register_preset(
    Preset(
        "lstm",
        "2-layer LSTM, embedding 128, hidden 256: about the parameter count of baby",
        ModelConfig(arch="lstm", block_size=64, n_layer=2, n_embd=128, n_hidden=256, tie_embeddings=False),
        {
            "batch_size": 12,
            "max_steps": 2000,
            "lr": 2e-3,
            "min_lr": 2e-4,
            "warmup_steps": 50,
            "eval_every": 250,
            "eval_steps": 20,
        },
    )
)
register_preset(
    Preset(
        "rnn",
        "2-layer Elman RNN (tanh), embedding 128, hidden 512: about the parameter count of baby",
        ModelConfig(arch="rnn", block_size=64, n_layer=2, n_embd=128, n_hidden=512, tie_embeddings=False),
        {
            "batch_size": 12,
            "max_steps": 2000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 50,
            "eval_every": 250,
            "eval_steps": 20,
        },
    )
)

register_preset(
    Preset(
        "seq2seq-tiny",
        "encoder-decoder Transformer for tests: 2+2 layers, 2 heads, width 32; trains in seconds",
        # init_std near 1/sqrt(width): at 0.02 a width-32 model starts with uniform attention and stalls
        ModelConfig(arch="seq2seq", block_size=32, n_layer=2, n_head=2, n_embd=32, pos="sinusoidal", init_std=0.1),
        {"batch_size": 16, "max_steps": 200, "lr": 3e-3, "warmup_steps": 10, "eval_every": 100, "eval_steps": 4},
    )
)
register_preset(
    Preset(
        "seq2seq-base",
        "the 2017 Transformer scaled to two CPU cores: 3+3 layers, 4 heads, width 256, sinusoidal positions, "
        "label smoothing 0.1",
        ModelConfig(
            arch="seq2seq",
            block_size=64,
            n_layer=3,
            n_head=4,
            n_embd=256,
            ffn_hidden=1024,
            pos="sinusoidal",
            activation="relu",
            dropout=0.1,
            label_smoothing=0.1,
            init_std=0.0625,  # 1/sqrt(width): 0.02 leaves attention uniform for longer and learns slower
        ),
        {
            "batch_size": 64,
            "max_steps": 6500,  # about 18 minutes on two CPU cores with --train.precision bf16
            "lr": 1e-3,
            "min_lr": 5e-5,
            "warmup_steps": 300,
            "weight_decay": 0.01,
            "beta2": 0.98,
            "eval_every": 500,
            "eval_steps": 20,
            "sample_tokens": 40,
        },
    )
)


SCHEDULES = ("cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("adamw", "muon", "sgd", "adafactor")


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, batches, evaluation, checkpoints, tracking."""

    batch_size: int = 12  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step (overridden by tokens_per_step)
    tokens_per_step: int = 0  # target tokens per optimizer step over all processes; 0 = use grad_accum
    max_steps: int = 2000  # optimizer steps in total
    optimizer: Literal["adamw", "muon", "sgd", "adafactor"] = "adamw"  # muon: Muon on hidden matrices + AdamW
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # final learning rate of the decay
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # shape after warmup
    warmup_steps: int = 100  # steps of linear warmup from 0 to lr
    decay_fraction: float = 0.2  # wsd: the final share of steps that decays to min_lr
    weight_decay: float = 0.1  # decoupled weight decay, on weight matrices only
    embedding_decay: bool = False  # decay the embedding tables too (nanoGPT does; grokking needs it)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 on GPUs that have it, else fp32
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 1337  # seeds weights, data order and dropout
    eval_every: int = 250  # evaluate on the validation split every N steps (and at the end)
    eval_steps: int = 20  # validation batches per evaluation
    sample_tokens: int = 200  # tokens of text sampled at each evaluation (0 = none)
    log_every: int = 10  # write train metrics every N steps
    save_every: int = 0  # save a checkpoint every N steps; 0 = at each evaluation
    save_every_minutes: float = 0.0  # also save when this many minutes passed since the last save (0 = off)
    keep_last: int = 2  # keep the newest N checkpoints
    keep_best: int = 1  # keep the best N checkpoints by best_metric
    best_metric: str = "val_loss"  # metric that ranks checkpoints
    best_mode: Literal["min", "max"] = "min"  # whether lower or higher best_metric is better
    on_nan: Literal["stop", "skip"] = "stop"  # non-finite loss: stop the run, or skip the step
    track: Literal["tensorboard", "wandb", "none"] = "tensorboard"  # experiment tracker besides metrics.jsonl
    wandb_project: str = "lmlab"  # W&B project name
    progress: bool = True  # show the live progress bar
    power_watts: float = 0.0  # energy: assume this many watts; 0 = read RAPL/NVML counters, else a stated estimate
    carbon_intensity: float = 480.0  # grams of CO2 per kWh for the CO2 estimate (world average, IEA 2023)

    def __post_init__(self) -> None:
        check_types(self, "--train.")
        positive = ("batch_size", "grad_accum", "max_steps", "eval_steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise LmlabError(f"--train.{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("tokens_per_step", "warmup_steps", "save_every", "keep_best", "sample_tokens", "eval_every"):
            if getattr(self, name) < 0:
                raise LmlabError(f"--train.{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise LmlabError(f"--train.keep-last must be at least 1, got {self.keep_last}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise LmlabError(
                f"need 0 <= --train.min-lr <= --train.lr and lr > 0, got lr {self.lr}, min_lr {self.min_lr}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise LmlabError(f"AdamW betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.save_every_minutes < 0:
            raise LmlabError("--train.grad-clip, --train.weight-decay and --train.save-every-minutes must be >= 0")
        if self.power_watts < 0 or self.carbon_intensity < 0:
            raise LmlabError(
                f"--train.power-watts and --train.carbon-intensity must be >= 0, got {self.power_watts:g} and "
                f"{self.carbon_intensity:g}"
            )
        if not 0 < self.decay_fraction <= 1:
            raise LmlabError(f"--train.decay-fraction must be in (0, 1], got {self.decay_fraction}")
        for name, allowed in (
            ("schedule", SCHEDULES),
            ("optimizer", OPTIMIZERS),
            ("precision", ("auto", "fp32", "bf16", "fp16")),
            ("on_nan", ("stop", "skip")),
            ("track", ("tensorboard", "wandb", "none")),
            ("best_mode", ("min", "max")),
        ):
            if getattr(self, name) not in allowed:
                value = getattr(self, name)
                raise LmlabError(
                    f"--train.{name.replace('_', '-')}: unknown value {value!r}{did_you_mean(str(value), allowed)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def preset_train_config(preset: Preset, **overrides: Any) -> TrainConfig:
    """The training config a preset starts from, with ``overrides`` applied."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LmlabError(f"unknown training option {unknown[0]!r}{did_you_mean(unknown[0], known)}")
    return TrainConfig(**{**preset.train, **overrides})
