"""GIDD's hybrid path (methods/gidd.py) against its closed forms: the probabilities, the
meaning of p_uniform, the masked path at p_uniform = 0, and a sampler step that carries
p_t(· | c) to p_{t+h}(· | c). The shared contract tests (test_methods.py) run it too, because
it is registered."""

import pytest
import torch

import methods

K = 8
E = torch.randn(K, 2, generator=torch.Generator().manual_seed(0))


def gidd(**options):
    return methods.build("gidd", codebook=E, **options)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_probabilities_are_a_path_from_the_mask_to_the_data(gamma):
    m = gidd(p_uniform=0.3, gamma=gamma)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    p_c, p_m, p_u = m.probabilities(t)
    torch.testing.assert_close(p_c + p_m + (K - 1) * p_u, torch.ones_like(t))
    assert (p_m[0], p_c[0], p_c[-1], p_m[-1]) == (1, 0, 1, 0)
    assert (p_c.diff() > 0).all() and (p_m.diff() < 0).all()  # what the sampler relies on
    # p_uniform is GIDD's p_u: its B = 1/(1 + (1 − p_u)/p_u · N/2), N = K + 1 tokens
    assert m.b == pytest.approx(1 / (1 + 0.7 / 0.3 * (K + 1) / 2))
    assert float((K - 1) * p_u[50]) == pytest.approx(0.3 * (K - 1) / (K + 1))


def test_p_uniform_zero_is_the_masked_path():
    """At p_uniform = 0 and γ = 1 the likelihood is the project's masked dfm with κ(t) = t."""
    x = torch.randint(0, K + 1, (5, 3, 3), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97])
    masked = methods.build("dfm", codebook=E).path_loglik(x, t)
    ours = gidd(p_uniform=0.0, gamma=1.0).path_loglik(x, t)
    finite = masked > -600  # both floor impossible states, at different depths
    assert torch.equal(finite, ours > -600)
    torch.testing.assert_close(ours[finite], masked[finite])


@pytest.mark.parametrize(("t", "t_next"), [(0.0, 0.1), (0.1, 0.25), (0.6, 0.8), (0.45, 0.55)])
def test_a_step_carries_the_path_to_the_next_time(t, t_next):
    """From x_t ~ p_t(· | c) with c known, one sampler step gives p_{t+h}(· | c): rising
    and falling uniform mass, and a step across the peak."""
    m = gidd(p_uniform=0.4)
    n, c = 200_000, 3
    g = torch.Generator().manual_seed(2)
    codes = torch.full((n, 1, 1), c)
    z = m.corrupt(codes, torch.full((n,), t), g)
    z = m.step(z, codes, t, t_next, g)
    seen = torch.bincount(z.flatten(), minlength=K + 1).double() / n
    p_c, p_m, p_u = (float(p) for p in m.probabilities(t_next))
    want = torch.full((K + 1,), p_u, dtype=torch.float64)
    want[c], want[K] = p_c, p_m
    torch.testing.assert_close(seen, want, atol=4e-3, rtol=0)


def test_the_end_of_the_path_is_safe_where_the_mask_underflows():
    """Near t = 1 with a large γ, P_m underflows to 0 and P_c rounds to 1: a step neither
    divides by zero nor leaves [0, 1], and every position still ends on a code."""
    m = gidd(p_uniform=0.0, gamma=120.0)
    z = torch.tensor([[[K, 2], [5, K]]])
    c = torch.tensor([[[1, 2], [3, 4]]])
    out = m.step(z, c, 0.999, 0.9995, torch.Generator().manual_seed(0))
    assert ((out == z) | (out == c)).all()
    m = gidd(p_uniform=0.0, gamma=3.0)  # cancellation in ΔP_c / P_m near P_c = 1
    n = 100_000
    codes = torch.full((n, 1, 1), 3)
    z = m.corrupt(codes, torch.full((n,), 0.9), torch.Generator().manual_seed(3))
    z = m.step(z, codes, 0.9, 0.95, torch.Generator().manual_seed(4))
    p_c, p_m, _ = (float(p) for p in m.probabilities(0.95))
    assert abs(float((z == K).double().mean()) - p_m) < 4e-3
    assert abs(float((z == 3).double().mean()) - p_c) < 4e-3


def test_bad_options_are_refused_in_the_checks_words():
    with pytest.raises(ValueError, match="p_uniform=1.0 is not allowed; expected a number in"):
        gidd(p_uniform=1.0)
    with pytest.raises(ValueError, match="gamma=0.0 is not allowed"):
        gidd(gamma=0.0)
