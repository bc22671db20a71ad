"""Samplers driven by networks that are wrong where they were not trained, and losses at the
extreme times the time samplers can return.

A trained network is right only where its loss looked. On the masked mixture path an
MDLM-weighted loss never looks at unmasked positions, so a sampler that asks the network
about them samples noise, although every oracle test (exact everywhere) passes. Here the
model is the exact posterior at masked positions and arbitrary elsewhere; the masked
samplers must still reproduce the toy distribution, because the posterior at an unmasked
position is a point mass and they never ask. ``euler-redraw`` (the official code's sampler)
asks, and fails; it stays exact for the exact oracle.
"""

import contextlib

import pytest
import torch
from helpers.toy import CODEBOOK, GRID, PROBS, WRONG_PROBS, K, Oracle, total_variation

import methods
from methods import dfm_samplers
from methods.base import below
from methods.records.dfm import MaskGITOptions
from shared.backbone import DiT

E = CODEBOOK.float()
N_SAMPLES, TV_TOL = 4000, 0.04  # as tests/methods/test_methods.py: sampling error alone ≈ 0.01


class TrainedWhereMasked:
    """The exact posterior at masked positions; at unmasked ones, what an untrained head
    might say: ``uniform`` logits, or a confident ``wrong`` code (x + 1 mod K)."""

    def __init__(self, probs=PROBS, elsewhere: str = "uniform"):
        self.oracle = Oracle("dfm", "mask", probs)
        self.elsewhere = elsewhere
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        exact = self.oracle(x, t, y)
        if self.elsewhere == "uniform":
            junk = torch.zeros_like(exact)
        else:
            wrong = (x.clamp_max(K - 1) + 1) % K
            junk = 10.0 * torch.nn.functional.one_hot(wrong, K).permute(0, 3, 1, 2).float()
        return torch.where((x != K)[:, None], junk, exact)


def masked_dfm(**kw):
    return methods.build("dfm", codebook=E, source="mask", **kw)


# (solver, steps, method options, sampler options): Euler at 50 steps; MaskGIT one position
# per step in random order (confidence swamped by choice noise), an exact sequential sampler
# of the oracle
MASKED_SAMPLERS = [
    ("euler", 50, {}, {}),
    ("euler", 50, {"weighting": "mdlm"}, {}),
    ("maskgit", 4, {}, {"solver_options": MaskGITOptions(choice_temperature=1e6)}),
]


@pytest.mark.parametrize("elsewhere", ["uniform", "wrong"])
@pytest.mark.parametrize(("solver", "steps", "kw", "sampler_kw"), MASKED_SAMPLERS)
def test_masked_samplers_are_exact_with_a_model_wrong_where_unmasked(
    solver, steps, kw, sampler_kw, elsewhere
):
    m = masked_dfm(**kw)
    for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
        model = TrainedWhereMasked(probs, elsewhere)
        g = torch.Generator().manual_seed(0)
        out = m.sample(model, N_SAMPLES, GRID, steps, solver=solver, generator=g, **sampler_kw)
        assert out.nfe == model.calls == steps
        tv = total_variation(out.indices)
        assert (tv < TV_TOL) == should_pass, f"{solver}/{elsewhere}: TV {tv:.3f}"


def test_euler_redraw_is_exact_only_where_the_model_is_exact_everywhere():
    """The official code's sampler: exact with the oracle, noise with the imperfect model
    (the defect carry-over removes; TV 0.998 at 20 steps in the issue's own toy)."""
    m = masked_dfm()
    g = torch.Generator().manual_seed(0)
    out = m.sample(Oracle("dfm", "mask"), N_SAMPLES, GRID, 50, solver="euler-redraw", generator=g)
    assert total_variation(out.indices) < TV_TOL
    for elsewhere in ("uniform", "wrong"):
        g = torch.Generator().manual_seed(0)
        out = m.sample(
            TrainedWhereMasked(elsewhere=elsewhere),
            N_SAMPLES,
            GRID,
            50,
            solver="euler-redraw",
            generator=g,
        )
        assert total_variation(out.indices) > 0.5, elsewhere


class RandomLogits:
    """Logits that depend on nothing: any token anywhere, confident or not."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, x, t, y=None):
        return 3 * torch.randn(x.shape[0], K, *x.shape[1:], generator=self.g)


@pytest.mark.parametrize(("temperature", "cfg"), [(1.0, 1.0), (0.5, 1.0), (1.5, 2.5), (0.0, 1.0)])
@pytest.mark.parametrize("solver", ["euler", "euler-redraw", "maskgit"])
def test_a_decoded_token_never_changes(solver, temperature, cfg):
    """Along the trace, a position that holds a code keeps it to the end, at any τ and CFG
    (τ ≠ 1 and CFG once changed every decoded token at the last Euler step). The redraw
    sampler, which does change them, shows the check can fail."""
    m = masked_dfm()
    y = torch.arange(64) % 3
    g = torch.Generator().manual_seed(1)
    out = m.sample(
        RandomLogits(),
        64,
        (4, 4),
        8,
        y=y,
        solver=solver,
        temperature=temperature,
        cfg_scale=cfg,
        generator=g,
        trace=True,
    )
    states = [r["state"] for r in out.trace]
    assert (states[-1] == out.indices).all() and (out.indices < K).all()
    changed = 0
    for before, after in zip(states, states[1:], strict=False):
        decoded = before != K
        changed += int((decoded & (after != before)).sum())
    assert (changed > 0) == (solver == "euler-redraw"), changed


def test_posterior_is_a_point_mass_where_unmasked():
    """What the entropy maps read: zero entropy at decoded positions, the network elsewhere."""
    m = masked_dfm(weighting="mdlm")
    x = torch.tensor([[[K, 3], [5, K]]])
    t = torch.tensor([0.5])
    post = m.posterior(RandomLogits(), x, t, temperature=0.7)
    torch.testing.assert_close(post.sum(1), torch.ones(1, *GRID))
    assert post[0, 3, 0, 1] == 1 and post[0, 5, 1, 0] == 1
    assert (post[0, :, 0, 0] < 1).all() and (post[0, :, 1, 1] < 1).all()
    out = m.sample(
        RandomLogits(), 5, GRID, 4, generator=torch.Generator().manual_seed(0), trace=True
    )
    for r in out.trace[:-1]:
        decoded = r["state"] != K
        top = r["posterior"].max(1).values
        assert (top[decoded] == 1).all()


def test_maskgit_refuses_more_steps_than_positions_and_keeps_the_default_schedule():
    m = masked_dfm()
    with pytest.raises(ValueError, match="exceeds the 4 latent positions"):
        m.sample(RandomLogits(), 2, GRID, 5, solver="maskgit")
    # the headline setting (8×8 grid, 20 cosine steps): the rule that guarantees progress
    # leaves the schedule as it was, so dfm-maskgit rows are unaffected
    import math

    masked = 64
    for i in range(20):
        old = (
            0
            if i == 19
            else max(0, min(math.floor(64 * math.cos(math.pi / 2 * (i + 1) / 20)), masked - 1))
        )
        new = dfm_samplers.maskgit_masked(64, i, 20, masked, MaskGITOptions().schedule)
        assert new == old
        masked = new
    with pytest.raises(ValueError, match="need method.source=mask"):
        methods.build("dfm", codebook=E, source="uniform").sample(
            RandomLogits(), 2, GRID, 2, solver="euler-redraw"
        )


# ------------------------------------------------------------- losses at extreme times
TOP = 1 - 2**-24  # the largest float32 below 1: what torch.rand can return


@contextlib.contextmanager
def extreme_draws(high: bool):
    """Every torch.rand returns its largest (or smallest) value and every torch.randn ±40,
    so the time samplers return their extreme times (through whatever map they use)."""
    real_rand, real_randn = torch.rand, torch.randn

    def fill(value, size, kw):
        if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size):
            size = tuple(size[0])
        dtype = kw.get("dtype") or torch.float32
        return torch.full(size, value, dtype=dtype, device=kw.get("device"))

    def rand(*size, **kw):
        return fill(TOP if high else 0.0, size, kw)

    def randn(*size, **kw):
        return fill(40.0 if high else -40.0, size, kw)

    torch.rand = rand
    torch.randn = randn
    try:
        yield
    finally:
        torch.rand = real_rand
        torch.randn = real_randn


class Recorder(torch.nn.Module):
    """A tiny DiT that records the times and inputs it is given."""

    def __init__(self, method):
        super().__init__()
        # ``.model``: the categorical methods find the DiT's head behind it (the chunked path)
        self.model = DiT(
            input_size=2,
            patch_size=1,
            hidden_size=32,
            depth=1,
            num_heads=2,
            num_classes=3,
            **method.model_kwargs(),
        )
        self.seen = []

    def forward(self, x, t, y=None, **kw):
        self.seen.append((x, t))
        return self.model(x, t, y, **kw)


LOSS_CASES = {
    "cfm": ("cfm", {}),
    "cfm-endpoint": ("cfm-endpoint", {}),
    "purr": ("purr", {}),
    "dfm": ("dfm", {}),
    "dfm-uniform": ("dfm", {"source": "uniform"}),
    "dfm-mdlm": ("dfm", {"weighting": "mdlm"}),
    "dfm-mdlm-k2": ("dfm", {"weighting": "mdlm", "kappa_power": 2.0}),
    "dfm-metric": ("dfm-metric", {}),
}
TIME_SAMPLERS = [
    {"time_sampling": "uniform", "t_min": 0.0},
    {"time_sampling": "uniform", "t_min": 1e-3},
    {"time_sampling": "uniform", "t_min": 0.5},  # t_min + (1 − t_min)·TOP rounds to 1.0
    {"time_sampling": "logit_normal", "t_min": 1e-3, "t_std": 1.0},
]


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_losses_are_finite_at_the_extreme_times(case):
    """For every method and weighting, every time sampler at both ends of its range, in
    float32 and under bf16 autocast: t < 1 in float32, the loss and its gradients finite, and
    dfm-metric's corruption at the top time still the data code."""
    name, kw = LOSS_CASES[case]
    c = torch.tensor([[[0, 1], [2, 3]], [[5, 5], [5, 5]]])
    y = torch.tensor([0, 1])
    for ts in TIME_SAMPLERS:
        if "mdlm" in case and ts["time_sampling"] != "uniform":
            continue  # refused (tests/methods/test_dfm_variants.py)
        m = methods.build(name, codebook=E, **kw, **ts)
        for high in (True, False):
            for bf16 in (False, True):
                torch.manual_seed(0)
                model = Recorder(m)
                with extreme_draws(high), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    out = m.loss(model, c, y)
                out.loss.backward()
                what = f"{case} {ts} high={high} bf16={bf16}"
                x_seen, t_seen = model.seen[-1]
                assert t_seen.dtype == torch.float32 and (t_seen < 1).all(), what
                assert (t_seen >= ts["t_min"]).all(), what
                assert torch.isfinite(out.loss), f"{what}: loss {out.loss}"
                for p in model.parameters():
                    assert p.grad is None or torch.isfinite(p.grad).all(), what
                if name == "dfm-metric" and high:
                    assert (x_seen == c).all(), f"{what}: x_t at t={t_seen} is not the data"


def test_time_sampler_draws_through_its_maps_and_never_reaches_one():
    """The extremes above are the samplers' own: ``__call__`` is ``from_uniform(rand)`` or
    ``from_normal(randn)``; the clamp is a float32 one (math.nextafter(1, 0) is not)."""
    assert below(1.0) == TOP and torch.tensor(below(1.0)) < 1
    assert torch.tensor(0.9999999999999999, dtype=torch.float32) == 1  # why the old clamp failed
    for kind in ("uniform", "logit_normal"):
        ts = methods.TimeSampler(kind, t_min=0.5, std=30.0)
        t = ts(1000, "cpu", torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        if kind == "uniform":
            ref = ts.from_uniform(torch.rand(1000, generator=g))
        else:
            ref = ts.from_normal(torch.randn(1000, generator=g))
        assert torch.equal(t, ref) and (t < 1).all() and (t >= 0.5).all()
    assert methods.TimeSampler("uniform", t_min=0.5).from_uniform(torch.tensor([TOP])) < 1


def test_float32_limits_hold_where_validation_puts_them():
    """At the largest β validation allows, dfm-metric's path at the top training time
    is a finite point mass on the data code; past it, it was NaN. τ at the smallest allowed
    value still draws the argmax; below it the method refuses."""
    from methods.base import MIN_TEMPERATURE, categorical
    from methods.records.dfm_metric import MAX_BETA, MAX_RATIO, beta_overflow

    codebook = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    power = 4.7  # beta_scale=10: the limit is 4.71
    assert beta_overflow(10.0, power) is None and beta_overflow(10.0, 4.72) is not None
    m = methods.build("dfm-metric", codebook=codebook, beta_scale=10.0, beta_power=power)
    assert m.beta(torch.tensor(below(1.0))) <= MAX_BETA
    assert float(m.beta(torch.tensor(below(1.0)))) == pytest.approx(10 * MAX_RATIO**power, 1e-3)
    codes = torch.arange(16)
    logp = m.path_logprobs(codes, torch.full((16,), below(1.0)))
    assert torch.isfinite(logp.exp()).all()
    assert torch.equal(logp.argmax(1), codes)  # the data code, not code K − 1
    with pytest.raises(ValueError, match="beta_power ≤ 4.71"):
        methods.build("dfm-metric", codebook=codebook, beta_scale=10.0, beta_power=20.0)
    # what validation used to let through: NaN at the top time
    loose = methods.build("dfm-metric", codebook=codebook, beta_scale=10.0, beta_power=1.0)
    loose.beta_power = 20.0
    assert torch.isnan(loose.path_logprobs(codes, torch.full((16,), below(1.0)))).any()
    logits = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(1)) * 30
    probs = categorical(logits, MIN_TEMPERATURE)
    assert torch.isfinite(probs).all() and torch.equal(probs.argmax(1), logits.argmax(1))
    with pytest.raises(ValueError, match="overflow float32"):
        categorical(logits, 1e-300)
