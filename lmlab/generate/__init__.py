"""Generation: samplers on logits (``sampling``) and the decoding engine (``engine``).

``lmlab.generate(model, tokenizer, prompt, ...)`` is the text-level entry point. Because
``lmlab.generate`` is also the name of this package, the package itself is made callable: whichever
of the two ``lmlab.generate`` resolves to, calling it generates text.
"""

import sys
import types

from lmlab.generate.engine import (
    Completion,
    ContextWindowWarning,
    Detokenizer,
    TokenEvent,
    banned_special_ids,
    encode_prompt,
    generate,
    generate_ids,
    stream,
    stream_ids,
)
from lmlab.generate.sampling import (
    SamplingParams,
    apply_logit_bias,
    apply_penalties,
    apply_temperature,
    greedy,
    make_generator,
    min_p_filter,
    probs_from_logits,
    process_logits,
    sample,
    sample_next,
    token_counts,
    top_k_filter,
    top_logprobs,
    top_p_filter,
)

__all__ = [
    "Completion",
    "ContextWindowWarning",
    "Detokenizer",
    "SamplingParams",
    "TokenEvent",
    "apply_logit_bias",
    "apply_penalties",
    "apply_temperature",
    "banned_special_ids",
    "encode_prompt",
    "generate",
    "generate_ids",
    "greedy",
    "make_generator",
    "min_p_filter",
    "probs_from_logits",
    "process_logits",
    "sample",
    "sample_next",
    "stream",
    "stream_ids",
    "token_counts",
    "top_k_filter",
    "top_logprobs",
    "top_p_filter",
]


class _CallablePackage(types.ModuleType):
    # Importing any lmlab.generate.* submodule sets the attribute lmlab.generate to this package, which
    # would hide the function lmlab.generate; a callable package keeps `lmlab.generate(...)` working.
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
