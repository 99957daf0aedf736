"""Sites own their hook names, labels and contribution deltas; every method goes through them."""

from __future__ import annotations

import pytest
import torch

from mechdiff.errors import SiteError
from mechdiff.sites import MLP, AttnOut, Head, Resid, family, head_outputs


def test_sites_know_their_hooks_and_labels() -> None:
    assert (Head(3, 7).label, Head(3, 7).read_hook, Head(3, 7).write_hook) == (
        "L3H7", "blocks.3.attn.hook_z", "blocks.3.hook_attn_out")
    assert (MLP(2).label, MLP(2).read_hook) == ("MLP2", "blocks.2.hook_mlp_out")
    assert (AttnOut(0).label, AttnOut(0).write_hook) == ("ATTN0", "blocks.0.hook_attn_out")
    assert (Resid(4).label, Resid(4).read_hook) == ("RESID4", "blocks.4.hook_resid_pre")
    assert family("heads").labels(2, 2) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert family("mlp").dims == ("layer",) and family("heads").dims == ("layer", "head")
    assert sorted([MLP(2), MLP(0)]) == [MLP(0), MLP(2)]


def test_kind_is_not_a_constructor_argument() -> None:
    with pytest.raises(TypeError):
        Head(1, 2, "mlp")  # type: ignore[call-arg]
    with pytest.raises(SiteError, match="unknown site kind 'neurons'"):
        family("neurons")


def test_head_deltas_and_gradient_dots_match_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    b, t, h, e, d = 2, 3, 4, 5, 6
    z_r, z_d = torch.randn(b, t, h, e, generator=g), torch.randn(b, t, h, e, generator=g)
    w_r, w_d = torch.randn(1, h, e, d, generator=g), torch.randn(1, h, e, d, generator=g)
    rec, don = {"blocks.0.attn.hook_z": z_r}, {"blocks.0.attn.hook_z": z_d}
    fam = family("heads")
    deltas = fam.deltas(0, rec, don, (w_r, w_d))
    for head in range(h):
        by_hand = z_d[:, :, head] @ w_d[0, head] - z_r[:, :, head] @ w_r[0, head]
        torch.testing.assert_close(deltas[head], by_hand)
    torch.testing.assert_close(fam.summed_delta(0, rec, don, (w_r, w_d)), deltas.sum(0))
    grad = torch.randn(b, t, d, generator=g)
    torch.testing.assert_close(fam.grad_dot(0, grad, rec, don, (w_r, w_d)),
                               (deltas * grad).sum(-1))
    torch.testing.assert_close(head_outputs(z_r, w_r[0]).sum(0),
                               torch.einsum("bthe,hed->btd", z_r, w_r[0]))
