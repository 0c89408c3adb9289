"""lmlab: build language models from scratch and put them to work.

The public API mirrors the CLI: each verb ``lmlab VERB`` is a function ``lmlab.VERB(...)`` with
the same options. Names are imported lazily so that ``import lmlab`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "LmlabError": "lmlab.errors",
    "ModelConfig": "lmlab.config",
    "Preset": "lmlab.config",
    "get_preset": "lmlab.config",
    "preset_names": "lmlab.config",
    "PrepareConfig": "lmlab.data.prepare",
    "prepare": "lmlab.data.prepare",
    "Tokenizer": "lmlab.data.tokenizer",
    "load_tokenizer": "lmlab.data.tokenizer",
    "BatchLoader": "lmlab.data.loader",
    "load_dataset": "lmlab.data.loader",
    "load": "lmlab.runs",
    "TrainConfig": "lmlab.config",
    "train": "lmlab.train.trainer",
    "Trainer": "lmlab.train.trainer",
    "plot": "lmlab.train.plot",
    "Run": "lmlab.runs",
    "generate": "lmlab.generate.engine",
    "stream": "lmlab.generate.engine",
    "SamplingParams": "lmlab.generate.sampling",
    "translate": "lmlab.translation",
    "evaluate": "lmlab.evaluation",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = ["__version__", *_EXPORTS]
