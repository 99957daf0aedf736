"""The synthetic zoo: a small GPT-2-style base pretrained on procedural data, and fine-tunes with
known mechanisms (see :mod:`mechdiff.zoo`, which re-exports its public API)."""
