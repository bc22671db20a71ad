"""The shared parameter update: AdamW against its closed-form rule, clipping, EMA."""

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
