"""The shared parameter update: AdamW against its closed-form rule, clipping, EMA."""

import copy

import pytest
import torch

from shared.optim import build_adamw, clip_and_step, ema_decay, ema_update


def adamw_reference(p, grads, lr, betas, wd, eps=1e-8):
    """AdamW written out (Loshchilov & Hutter; torch's bias-corrected form), in float64."""
    p = p.double().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for k, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** k), v / (1 - betas[1] ** k)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_closed_form_update(fused):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(37, 5, generator=g)
    grads = [torch.randn(37, 5, generator=g) * 10 ** (-k) for k in range(4)]
    w = torch.nn.Parameter(w0.clone())
    opt = build_adamw([w], lr=0.05, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
    ref = adamw_reference(w0, grads, 0.05, (0.9, 0.95), 0.1)
    assert (w.detach().double() - ref).abs().max() < 1e-6
    assert (w.detach() - w0).abs().max() > 1e-2  # it did move


def test_clip_and_step_scales_to_max_norm():
    model = torch.nn.Linear(4, 3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    norm = (sum(p.numel() for p in model.parameters()) * 4.0) ** 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: only the clipping acts
    clip_and_step(model, opt, 1.0)
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert abs(total.item() - 1.0) < 1e-5 and norm > 1
    for p in model.parameters():  # no clipping below the threshold / when disabled
        p.grad = torch.full_like(p, 2.0)
    clip_and_step(model, opt, 0.0)
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in model.parameters())


def test_ema_update_and_warmup_decay():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    for e0, e, m in zip(before, a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * e0 + 0.1 * m, atol=1e-7)
    assert ema_decay(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay(10**6, 0.999, True) == 0.999
    assert ema_decay(0, 0.999, False) == 0.999


def _two_layer_grads(seed, steps):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(7, 5, generator=g), torch.randn(5, generator=g)] for _ in range(steps)]


def _params(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(7, 5, generator=g)),
        torch.nn.Parameter(torch.randn(5, generator=g)),
    ]


def _steps(opt, params, grads, lrs):
    for gs, lr in zip(grads, lrs, strict=True):
        for p, gr in zip(params, gs, strict=True):
            p.grad = None if gr is None else gr.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)


def _same_state(a, b):
    """Two torch-layout state dicts are equal: hyperparameters, and every tensor bit for bit."""
    ga, gb = a["param_groups"], b["param_groups"]
    assert [dict(g) for g in ga] == [dict(g) for g in gb]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (i, k)


def test_fused_adamw_equals_torchs_fused_adamw_bit_for_bit_and_shares_its_checkpoints():
    """FusedAdamW is torch.optim.AdamW(fused=True) without torch.optim: the same parameters,
    moments and state dict after every step (with a changing lr and a parameter that has no
    gradient), and a state dict from either class resumes the other identically."""
    from shared.optim import FusedAdamW

    grads = _two_layer_grads(0, 6)
    grads[1][1] = None  # the bias gets no gradient in step 2: no update, no state change
    lrs = [1e-2, 2e-2, 3e-2, 3e-2, 1e-3, 5e-2]
    kw = {"lr": 0.0, "betas": (0.9, 0.95), "weight_decay": 0.1}
    pa, pb = _params(), _params()
    ours, theirs = FusedAdamW(pa, **kw), torch.optim.AdamW(pb, fused=True, **kw)
    for k in range(3):
        _steps(ours, pa, grads[k : k + 1], lrs[k : k + 1])
        _steps(theirs, pb, grads[k : k + 1], lrs[k : k + 1])
        assert all(torch.equal(a, b) for a, b in zip(pa, pb, strict=True)), k
        _same_state(ours.state_dict(), theirs.state_dict())
    assert not torch.equal(pa[0], _params()[0])  # it moved
    # resume: torch's checkpoint into ours, ours into torch's, both go on identically
    pc, pd = (
        [p.detach().clone().requires_grad_() for p in pb],
        [p.detach().clone().requires_grad_() for p in pa],
    )
    ours2, theirs2 = FusedAdamW(pc, **kw), torch.optim.AdamW(pd, fused=True, **kw)
    ours2.load_state_dict(theirs.state_dict())
    # deepcopy, as a checkpoint file would be: torch's load_state_dict keeps the given tensors
    theirs2.load_state_dict(copy.deepcopy(ours.state_dict()))
    # a loaded state is a copy, never the source's tensors (two optimizers would share moments)
    src, dst = theirs.state_dict()["state"], ours2.state_dict()["state"]
    assert all(src[i][k].data_ptr() != dst[i][k].data_ptr() for i in src for k in src[i])
    for opt, ps in ((ours, pa), (theirs, pb), (ours2, pc), (theirs2, pd)):
        _steps(opt, ps, grads[3:], lrs[3:])
    for name, ps in (("torch", pb), ("ours from torch's", pc), ("torch's from ours", pd)):
        assert all(torch.equal(a, b) for a, b in zip(pa, ps, strict=True)), name
    _same_state(ours2.state_dict(), theirs.state_dict())


def test_fused_adamw_refuses_what_it_cannot_resume():
    from shared.optim import FusedAdamW

    p = _params()
    opt = FusedAdamW(p, lr=1e-3)
    other = torch.optim.AdamW(_params()[:1], fused=True)
    with pytest.raises(ValueError, match="one group of 2"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="amsgrad=True"):
        opt.load_state_dict(torch.optim.AdamW(_params(), amsgrad=True).state_dict())
    with pytest.raises(RuntimeError, match="optim.fused=false"):
        FusedAdamW(
            [torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)], lr=1e-3
        )
