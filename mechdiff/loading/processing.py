"""Weight processing that is checked to keep what the model computes.

TransformerLens's ``"compat"`` processing (``enable_compatibility_mode``: fold LayerNorm weights
into the next linear map, centre the weights that write to the residual stream, centre the
unembedding, fold value biases into the output bias) is meant to leave the model's log-probs
unchanged: logits may move by a constant per position (centring the unembedding), nothing else.
TransformerLens 4.3 picks the axis of some folds and centrings from a weight's shape, and picks the
wrong one when two sizes coincide (vocabulary == model width: ``center_unembed`` on LLaMA-family
bridges, the final-norm fold into the unembedding on GPT-2; MLP width == model width: the ``ln2``
fold into ``W_in``; for GPT-NeoX, Phi, OPT and OLMo also ``center_writing_weights``), which moves
logits by 8-30% of their range on the tiny models of the tests. Production checkpoints are rarely
square; toy models often are.

So processing is verified, every time, on a **probe batch**: :data:`PROBE_BATCH` sequences of
:data:`PROBE_LEN` token ids (fixed, spread over the vocabulary; cut to the context length). Its
logits are computed before processing (raw weights, which equal ``transformers``' forward) and
after; both are centred over the vocabulary (the free per-position constant), and the largest
absolute difference must be at most ``rtol * R``, where ``R`` is the largest logit range
(max - min over the vocabulary) of any probe position before processing and ``rtol`` is
:func:`probe_rtol` of the dtype: ``1e-4`` in float32 and float64 (measured error of correct
processing: about ``1e-6``; TransformerLens processes float64 weights in float32, so a float64
model stays float32-accurate, and loading warns: ``mechdiff.loading.model.FLOAT64_COMPAT``),
``16 * eps`` in 16-bit types (bfloat16: 0.125, float16: 0.0156, where correct processing of
SmolLM2-135M already moves logits by 2.3% and 0.34% of ``R``) and
under TF32 matmuls; only gross changes are caught there, so check toy models in float32. The
cost is two forwards of a few tokens (SmolLM2-135M on a CPU: 0.4 CPU-seconds of a 2.7 s load).

When the check fails, the steps that cannot be applied exactly are found by re-processing fresh
raw copies (a re-boot from disk, or a copy of a bridge passed in: processing mutates weights in
place and cannot be undone): steps are added one at a time, in TransformerLens's order, and kept if
the check still passes. The steps left out are recorded (:attr:`LoadInfo.processing_skipped`,
then in every result's provenance). Several models processed together (the two sides of a pair)
are processed with one set of steps, checked on each. If even no step at all passes, or the raw
logits are not finite, the model is refused with :class:`ProcessingError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import ProcessingError
from mechdiff.loading.options import PROCESSING_STEPS, ProcessingStep

PROBE_BATCH = 1
PROBE_LEN = 8
FLOAT32_RTOL = 1e-4
LOW_PRECISION_EPS = 16


@dataclass(frozen=True)
class ProbeCheck:
    """Processed against raw logits on the probe batch, both centred over the vocabulary.

    Attributes:
        error: the largest absolute difference.
        scale: the largest logit range (max - min over the vocabulary) of a raw probe position.
        rtol: the allowed error relative to ``scale``.
    """

    error: float
    scale: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.error <= self.rtol * self.scale

    @property
    def relative_error(self) -> float:
        if self.scale > 0:
            return self.error / self.scale
        return 0.0 if self.error == 0 else float("inf")


def probe_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance of the probe check for a parameter dtype (module docstring)."""
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        eps = 2.0**-10  # TF32 keeps 10 mantissa bits
    return max(FLOAT32_RTOL, LOW_PRECISION_EPS * eps)


def probe_tokens(model: TransformerBridge) -> Int[torch.Tensor, "batch pos"]:
    """The probe batch: fixed token ids spread over the vocabulary, on the model's device."""
    n = max(1, min(PROBE_LEN, int(model.cfg.n_ctx)))
    g = torch.Generator().manual_seed(0)  # a local generator: the global RNG is left alone
    tokens = torch.randint(0, int(model.cfg.d_vocab), (PROBE_BATCH, n), generator=g)
    return tokens.to(next(model.parameters()).device)


def centred_logits(
    model: TransformerBridge, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """The model's logits on ``tokens`` in float64, minus their mean over the vocabulary."""
    with torch.no_grad():
        logits = model(tokens).to(torch.float64)
    return logits - logits.mean(-1, keepdim=True)


def compare(
    raw: Float[torch.Tensor, "batch pos d_vocab"],
    processed: Float[torch.Tensor, "batch pos d_vocab"],
    dtype: torch.dtype,
) -> ProbeCheck:
    """The probe check of ``processed`` against ``raw`` centred logits."""
    scale = float((raw.amax(-1) - raw.amin(-1)).max())
    diff = (processed - raw).abs().max()
    error = float(diff) if torch.isfinite(diff) else float("inf")
    return ProbeCheck(error=error, scale=scale, rtol=probe_rtol(dtype))


@dataclass
class Raw:
    """A model before processing: the bridge to process next, how to get a fresh one, and the
    probe logits of its raw weights.

    Attributes:
        name: the model's identity, for messages.
        bridge: a raw bridge, consumed by the next processing attempt.
        fresh: returns another raw bridge of the same weights (re-boot or copy).
        reference: centred raw logits on the probe batch.
    """

    name: str
    bridge: TransformerBridge | None
    fresh: Callable[[], TransformerBridge]
    reference: Float[torch.Tensor, "batch pos d_vocab"]

    @classmethod
    def of(cls, name: str, bridge: TransformerBridge,
           fresh: Callable[[], TransformerBridge]) -> Raw:
        reference = centred_logits(bridge, probe_tokens(bridge))
        if not torch.isfinite(reference).all():
            raise ProcessingError(
                f"{name} gives NaN/inf logits with its raw weights, so weight processing cannot "
                "be checked; the checkpoint holds non-finite weights (load it with "
                "processing='none' to inspect it)"
            )
        return cls(name, bridge, fresh, reference)

    def take(self) -> TransformerBridge:
        """The next raw bridge (the one held, else a fresh one); processing will consume it."""
        bridge, self.bridge = self.bridge, None
        return bridge if bridge is not None else self.fresh()

    def take_back(self) -> TransformerBridge:
        """A raw bridge to look at, held again for the next :meth:`take`."""
        self.bridge = self.take()
        return self.bridge


def declined_by_transformer_lens(model: TransformerBridge) -> tuple[ProcessingStep, ...]:
    """Steps TransformerLens itself leaves out for this model (applying them would not be exact):
    ``center_unembed`` under logit soft-capping, ``fold_ln`` for adapters that cannot fold."""
    out: list[ProcessingStep] = []
    if not getattr(model.adapter, "supports_fold_ln", True):
        out.append("fold_ln")
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and float(cap) > 0:
        out.append("center_unembed")
    return tuple(out)


def apply(model: TransformerBridge, skip: Sequence[ProcessingStep]) -> TransformerBridge:
    """Run ``"compat"`` processing on ``model`` in place without the steps in ``skip``."""
    flags = {step: step not in skip for step in PROCESSING_STEPS}
    model.enable_compatibility_mode(disable_warnings=True, **flags)
    return model


def process_checked(
    raws: Sequence[Raw], skip: Sequence[ProcessingStep] = ()
) -> tuple[list[TransformerBridge], tuple[ProcessingStep, ...], list[ProbeCheck]]:
    """Process every model with one set of steps that passes the probe check on each.

    Args:
        raws: the models (their next raw bridges are consumed).
        skip: steps to leave out whatever the check says.

    Returns:
        The processed bridges (in the order of ``raws``), the steps left out (those asked, those
        TransformerLens declines, those that failed the check), and each model's probe check.

    Raises:
        ProcessingError: no set of steps passes the check on every model.
    """
    declined = {s for r in raws for s in declined_by_transformer_lens(
        r.bridge if r.bridge is not None else r.take_back())}
    full = [s for s in PROCESSING_STEPS if s not in set(skip) | declined]
    bridges, checks = _attempt(raws, full)
    if bridges:
        return bridges, _left_out(full), checks
    kept: list[ProcessingStep] = []
    result: tuple[list[TransformerBridge], list[ProbeCheck]] | None = None
    for step in full:  # greedy, in TransformerLens's order: keep each step that still passes
        result = None  # drop the last processed copies before making new ones
        bridges, checks = _attempt(raws, [*kept, step])
        if bridges:
            kept.append(step)
            result = bridges, checks
    if result is None:
        bridges, checks = _attempt(raws, kept)
        if not bridges:
            worst = max(checks, key=lambda c: c.relative_error)
            raise ProcessingError(
                "TransformerLens weight processing changes what "
                + " and ".join(r.name for r in raws)
                + f" computes even with every step left out (probe logits off by "
                f"{worst.relative_error:.2g} of their range, allowed {worst.rtol:.2g}); "
                "load with processing='none'"
            )
        result = bridges, checks
    return result[0], _left_out(kept), result[1]


def _left_out(applied: Sequence[ProcessingStep]) -> tuple[ProcessingStep, ...]:
    return tuple(s for s in PROCESSING_STEPS if s not in applied)


def _attempt(
    raws: Sequence[Raw], steps: Sequence[ProcessingStep]
) -> tuple[list[TransformerBridge], list[ProbeCheck]]:
    """Process a raw copy of each model with ``steps``; the bridges if all pass, else ``[]``."""
    bridges: list[TransformerBridge] = []
    checks: list[ProbeCheck] = []
    for raw in raws:
        model = apply(raw.take(), _left_out(steps))
        dtype = next(model.parameters()).dtype
        checks.append(compare(raw.reference, centred_logits(model, probe_tokens(model)), dtype))
        if not checks[-1].passed:
            return [], checks
        bridges.append(model)
    return bridges, checks
