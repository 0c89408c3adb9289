"""Generation: samplers on logits (``sampling``), the decoding engine (``engine``), beam search (``beam``).

The public text-level functions are ``lmlab.generate`` and ``lmlab.stream`` (defined in ``lmlab.api``);
this package is named as a noun so that importing it never hides them.
"""
