"""The chunked categorical head (methods/head.py) against the full-logit reference.

Float64 throughout, so "equal" means equal to rounding: loss, every parameter gradient,
posterior means and the drawn codes (same generator → same codes). Also: bf16 autocast
agrees within bf16 rounding, guidance on hidden states equals guidance on logits, and the
chunked path never holds a (B, K, H, W)-sized tensor while the full path does.
"""

from __future__ import annotations

import pytest
import torch

import methods
from experiments.benchmark import LargestTensor
from methods.base import categorical, categorical_loss, guided_forward
from methods.head import LinearHead, linear_head, patchify, unpatchify
from shared.backbone import build_dit

GRID = (4, 6)


def make(name, patch, k=12, chunk=40, dtype=torch.float64, seed=0, **kw):
    """(full method, chunked method, random DiT) sharing one codebook."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(k, 3, generator=g, dtype=dtype)
    ms = [
        methods.build(name, codebook=e, head=h, head_chunk=chunk, **kw) for h in ("full", "chunked")
    ]
    for m in ms:
        m.codebook = e.clone()  # keep float64 (build stores float32)
    preset = "DiT-Nano/1" if patch == 1 else "DiT-Mini/2"
    model = build_dit(
        preset, input_size=GRID, num_classes=3, class_dropout=0.5, **ms[0].model_kwargs()
    )
    model = model.to(dtype)
    with torch.no_grad():  # adaLN-Zero starts at zero: randomise so every path matters
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + i)) * 0.2)
        # logits of order 1 that vary over positions: posteriors neither one-hot nor alike
        for block in [*model.blocks, model.final_layer]:
            block.adaLN_modulation[-1].weight.mul_(0.05)
        model.final_layer.linear.weight.mul_(2.0)
    return ms[0], ms[1], model


def loss_and_grads(method, model, c, y, seed=1):
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    y = model.drop_labels(y, gen)  # label dropout, as the training step does
    out = method.loss(model, c, y, generator=gen)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["purr", "dfm"])
@pytest.mark.parametrize("patch", [1, 2])
def test_chunked_loss_and_gradients_equal_full_logits_float64(name, patch):
    full, chunked, model = make(name, patch, z_loss_weight=1e-2)
    c = torch.randint(0, 12, (5, *GRID), generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1])
    ref, ref_g = loss_and_grads(full, model, c, y)
    new, new_g = loss_and_grads(chunked, model, c, y)
    for key in ("loss", "ce", "z_loss"):
        torch.testing.assert_close(new.logs[key], ref.logs[key], rtol=1e-12, atol=1e-12)
    assert ref.logs["z_loss"] > 1  # the z-loss term is not negligible here
    for (pname, _), a, b in zip(model.named_parameters(), new_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=pname)
    names = [n for n, _ in model.named_parameters()]
    assert new_g[names.index("final_layer.linear.weight")].abs().max() > 0


def test_loss_function_against_independent_reference_with_uneven_chunks():
    """The autograd function alone: random hidden states and head, p=2, chunks of 3 tokens
    (N=10 tokens: the last chunk is short); the reference unpatchifies the full logits
    with the DiT's own layout and uses F.cross_entropy."""
    g = torch.Generator().manual_seed(0)
    b, p, k, d = 2, 2, 7, 5
    grid = (4, 6)
    n = b * (grid[0] // p) * (grid[1] // p)
    h = torch.randn(b, n // b, d, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(p * p * k, d, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(p * p * k, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randint(0, k, (b, *grid), generator=g)
    head = LinearHead(w, bias, p, grid, chunk=3 * p * p * k)
    loss, ce, zl = head.loss(h, c, 0.1)
    grads = torch.autograd.grad(loss, (h, w, bias))
    dit = build_dit("DiT-Nano/1", input_size=grid, out_channels=k)
    dit.patch_size = p
    dit.grid = grid
    logits = dit.unpatchify(h @ w.t() + bias)  # (B, K, H, W)
    ref = categorical_loss(logits, c, 0.1)
    ref_grads = torch.autograd.grad(ref.loss, (h, w, bias))
    torch.testing.assert_close(loss, ref.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(ce, ref.logs["ce"], rtol=1e-12, atol=0)
    torch.testing.assert_close(zl, ref.logs["z_loss"], rtol=1e-12, atol=0)
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    # and the layout helpers invert each other
    x = torch.arange(b * grid[0] * grid[1]).view(b, *grid)
    assert torch.equal(unpatchify(patchify(x, p), b, grid, p), x)


@pytest.mark.parametrize("patch", [1, 2])
def test_bf16_autocast_is_as_accurate_as_the_full_path(patch):
    """Under bf16 autocast both paths round; measured against the float32 full-logit result,
    the chunked path's loss and gradients are no further off than the full path's."""
    full, chunked, model = make("purr", patch, dtype=torch.float32, z_loss_weight=1e-3)
    c = torch.randint(0, 12, (4, *GRID), generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0])
    truth, truth_g = loss_and_grads(full, model, c, y)
    err = {}
    for m in (full, chunked):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads = loss_and_grads(m, model, c, y)
        rel = [
            ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
            for a, b in zip(grads, truth_g, strict=True)
        ]
        err[m.head] = (abs(out.loss.item() - truth.loss.item()) / truth.loss.item(), rel)
    assert err["chunked"][0] <= 2 * err["full"][0] + 1e-3
    for new, ref in zip(err["chunked"][1], err["full"][1], strict=True):
        assert new <= 2 * ref + 1e-3, (new, ref)
    assert max(err["full"][1]) > 1e-4  # bf16 did round (the comparison means something)


@pytest.mark.parametrize("name", ["purr", "dfm"])
@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize(("tau", "cfg"), [(1.0, 1.0), (0.7, 2.0), (0.0, 1.0), (1.3, 3.0)])
def test_sampling_equals_full_posterior_path(name, patch, tau, cfg):
    """Same generator → the same codes: Purrception's attention-form posterior mean and DFM's
    chunked inverse-CDF draws reproduce the full path, with guidance mixed on hidden states."""
    full, chunked, model = make(name, patch)
    model.eval()
    y = torch.tensor([0, 1, 2])
    outs = [
        m.sample(
            model,
            3,
            GRID,
            5,
            y=y,
            temperature=tau,
            cfg_scale=cfg,
            generator=torch.Generator().manual_seed(7),
        )
        for m in (full, chunked)
    ]
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert outs[0].nfe == outs[1].nfe == 5 and outs[0].nfe_rows == outs[1].nfe_rows
    assert len(outs[0].indices.unique()) > 2  # a non-degenerate draw


def test_posterior_mean_and_guidance_on_hidden_states_are_exact():
    full, chunked, model = make("purr", 2)
    z = torch.randn(3, 3, *GRID, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t, y = torch.full((3,), 0.4, dtype=torch.float64), torch.tensor([0, 1, 2])
    head = LinearHead.of(model)
    for tau in (1.0, 0.5):
        logits, _ = guided_forward(model, z, t, y, 2.5)
        ref = torch.einsum("bkhw,kd->bdhw", categorical(logits, tau), full.codebook)
        hidden, _ = guided_forward(model, z, t, y, 2.5, features=True)
        torch.testing.assert_close(head.posterior_mean(hidden, full.codebook, tau), ref)


def test_linear_head_is_found_through_wrappers_and_not_invented():
    _, chunked, model = make("purr", 1)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert linear_head(Wrapper(model)) is model
    assert linear_head(lambda x, t, y: x) is None
    assert chunked.head_for(Wrapper(model)) is not None
    with pytest.raises(ValueError, match="head=.fused. is not allowed; expected one of chunked"):
        methods.build("purr", codebook=torch.randn(4, 2), head="fused")


@pytest.mark.parametrize("name", ["purr", "dfm"])
def test_chunked_path_never_holds_the_full_logit_map(name):
    """K=2048 on a 4×6 grid, batch 8: the (B, K, H, W) map has 393 216 entries (the largest
    backbone activation, the MLP's with CFG, has 98 304; the head's weight 131 072); chunks of
    8192 logits. Every tensor produced in loss, backward and sampling stays below half the
    map on the chunked path; the full path does produce it (so this test can fail)."""
    k = 2048
    full, chunked, model = make(name, 1, k=k, chunk=8192, dtype=torch.float32)
    chunked.snap_chunk = 8192  # Purrception's final snap to the nearest code, chunked too
    c = torch.randint(0, k, (8, *GRID), generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3
    logit_map = 8 * k * GRID[0] * GRID[1]
    largest = {}
    for m in (full, chunked):
        with LargestTensor() as probe:
            loss_and_grads(m, model, c, y)
            m.sample(model, 8, GRID, 2, y=y, cfg_scale=2.0, generator=torch.Generator())
        largest[m.head] = probe.bytes // 4  # float32 entries
    assert largest["full"] >= logit_map
    assert largest["chunked"] < logit_map / 2, largest
