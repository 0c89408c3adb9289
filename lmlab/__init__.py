"""lmlab: build language models from scratch and put them to work.

The public API mirrors the CLI: each verb ``lmlab VERB`` is a function ``lmlab.VERB(...)`` with
the same options, defined in ``lmlab.api``. Names are imported lazily so that ``import lmlab`` (and
the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the verbs (lmlab.api)
    "prepare": "lmlab.api",
    "train": "lmlab.api",
    "load": "lmlab.api",
    "plot": "lmlab.api",
    "generate": "lmlab.api",
    "stream": "lmlab.api",
    "translate": "lmlab.api",
    "evaluate": "lmlab.api",
    "experiment": "lmlab.api",
    "attention": "lmlab.api",
    "import_hf": "lmlab.api",
    "export_hf": "lmlab.api",
    "finetune": "lmlab.api",
    "classify": "lmlab.api",
    "chat": "lmlab.api",
    "merge": "lmlab.api",
    "quantize": "lmlab.api",
    "score": "lmlab.api",
    "serve": "lmlab.api",
    # the types they take and return
    "LmlabError": "lmlab.errors",
    "ModelConfig": "lmlab.config",
    "TrainConfig": "lmlab.config",
    "Preset": "lmlab.config",
    "get_preset": "lmlab.config",
    "preset_names": "lmlab.config",
    "PrepareConfig": "lmlab.data.prepare",
    "Tokenizer": "lmlab.data.tokenizer",
    "load_tokenizer": "lmlab.data.tokenizer",
    "load_dataset": "lmlab.data.dataset",
    "BatchLoader": "lmlab.data.loader",
    "Run": "lmlab.runs",
    "lineage": "lmlab.runs",
    "Trainer": "lmlab.training.trainer",
    "Objective": "lmlab.objectives.base",
    "LossOut": "lmlab.objectives.base",
    "SamplingParams": "lmlab.generation.sampling",
    "GenerationRequest": "lmlab.generation.request",
}


# subpackages with an API of their own, reachable as lmlab.NAME without importing them first
_SUBPACKAGES = ("rag", "scaling")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"lmlab.{name}")
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + list(_SUBPACKAGES))


__all__ = ["__version__", *_EXPORTS]
