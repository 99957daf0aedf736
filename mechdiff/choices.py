"""The named choices of mechdiff's options, in one module that imports nothing heavy.

The analysis modules define their options' names here and re-export them (``mechdiff.sites``'s
``SITE_KINDS``, ``mechdiff.tasks``'s ``METRICS``, ``mechdiff.circuits``' ``METHODS`` and
``ABLATIONS``, ``mechdiff.demos``' ``DEFAULT_DEMO``), so that the command line can build its
parser, answer ``--help`` and refuse a bad option in a fraction of a second, before torch and
TransformerLens are imported.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

SiteKind: TypeAlias = Literal["heads", "attn", "mlp", "resid"]
SITE_KINDS: tuple[SiteKind, ...] = ("heads", "attn", "mlp", "resid")
"""Site kinds of patching and attribution: every head, attention output, MLP, residual stream."""

MetricName: TypeAlias = Literal["logit_diff", "logprob", "kl", "kl_all"]
METRICS: tuple[MetricName, ...] = ("logit_diff", "logprob", "kl", "kl_all")
"""Task metrics (:mod:`mechdiff.metrics`). ``logit_diff``: logit(answer) - logit(wrong answer) at
the final position. ``logprob``: log p(answer) at the final position. ``kl``: -KL(donor || model)
at the final position (task-free). ``kl_all``: -KL(donor || model) averaged over every real
position (task-free, for texts)."""

Method: TypeAlias = Literal["eap", "eap_ig"]
METHODS: tuple[Method, ...] = ("eap", "eap_ig")
"""Edge attribution methods (:mod:`mechdiff.circuits.attribution`)."""

Ablation: TypeAlias = Literal["corrupted", "mean"]
ABLATIONS: tuple[Ablation, ...] = ("corrupted", "mean")
"""What an ablated edge carries (:mod:`mechdiff.circuits.ablation`)."""

DemoName: TypeAlias = Literal["real", "synthetic"]
DEMO_NAMES: tuple[DemoName, ...] = ("real", "synthetic")
"""The demos ``mechdiff demo`` runs (:mod:`mechdiff.demos`)."""
DEFAULT_DEMO: DemoName = "real"
"""What ``mechdiff demo`` runs without a flag."""
REAL_N_PROMPTS = 4
"""Prompts per task of the real-model demo: keeps a run from the cache within about 5 minutes
on 2 CPU cores."""
