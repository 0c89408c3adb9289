"""Generation: samplers on logits (``sampling``), the request every caller passes (``request``), the decode loop
on token ids (``engine``), text in and out (``text``: prompts, detokenizing, streaming), beam search (``beam``)
and translation with an encoder–decoder (``translation``).

The public text-level functions are ``lmlab.generate`` and ``lmlab.stream`` (defined in ``lmlab.api``);
this package is named as a noun so that importing it never hides them.
"""
