"""The stronger discrete baselines: metric-path DFM, the MDLM weighting, the MaskGIT sampler.

Closed forms (path marginals, the Kolmogorov equation of the kinetic-optimal rates, the MDLM
normaliser, the MaskGIT schedule), the oracle toy (the exact posterior of each path; the
sampler reproduces the toy distribution and a deliberately wrong model fails), NFE = model
calls, and the chunked head against the full path.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.toy import CODEBOOK, GRID, PROBS, WRONG_PROBS, K, Oracle, total_variation
from test_head import make

import methods
from methods.records.dfm import MASKGIT_SCHEDULES as SCHEDULES
from methods.records.dfm import MaskGITOptions

E = CODEBOOK.float()
N_SAMPLES, TV_TOL = 4000, 0.04  # as tests/methods/test_methods.py


def metric(**kw):
    return methods.build("dfm-metric", codebook=E, **kw)


# ------------------------------------------------------------------------- metric path
def test_distances_normalised_and_table_equals_rows():
    m = metric()
    d = torch.cdist(E.double(), E.double())
    ref = d / d[~torch.eye(K, dtype=torch.bool)].mean()
    torch.testing.assert_close(m.distances(torch.arange(K)).double(), ref, atol=1e-5, rtol=1e-5)
    table = m.distances(torch.arange(K))
    m.table = None  # the per-row path used for K > 4096
    torch.testing.assert_close(m.distances(torch.arange(K)), table)
    sq = metric(distance="sqeuclidean").distances(torch.arange(K)).double()
    torch.testing.assert_close(sq, d**2 / (d**2)[~torch.eye(K, dtype=torch.bool)].mean())


def test_beta_schedule_and_its_derivative():
    m = metric(beta_scale=3.0, beta_power=1.5)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    torch.testing.assert_close(m.beta(t), 3.0 * (t / (1 - t)) ** 1.5)
    eps = 1e-6
    fd = (m.beta(t + eps) - m.beta(t - eps)) / (2 * eps)
    torch.testing.assert_close(m.beta_dot(t), fd, rtol=1e-6, atol=0)
    # β_0 = 0: uniform source; β → ∞: the data code
    p0 = m.path_logprobs(torch.arange(K), torch.zeros(K)).exp()
    torch.testing.assert_close(p0, torch.full((K, K), 1 / K))
    p1 = m.path_logprobs(torch.arange(K), torch.full((K,), 1 - 1e-7, dtype=torch.float64)).exp()
    torch.testing.assert_close(p1.double(), torch.eye(K, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_corruption_draws_the_path_marginal(t):
    m = metric()
    c = torch.tensor([3, 0, 6]).view(3, 1, 1).expand(3, 100, 100)
    x_t = m.corrupt(c, torch.full((3,), t), torch.Generator().manual_seed(0))
    expect = m.path_logprobs(torch.tensor([3, 0, 6]), torch.full((3,), t)).exp()
    for i in range(3):
        freq = torch.bincount(x_t[i].flatten(), minlength=K).double() / 10_000
        assert 0.5 * (freq - expect[i].double()).abs().sum() < 0.02


@pytest.mark.parametrize("t", [0.1, 0.5, 0.85])
def test_kinetic_optimal_rates_solve_the_kolmogorov_equation(t):
    """d/dt p_t(x|x1) = Σ_z u(x, z) p_t(z) − p_t(x) Σ_z u(z, x), with the rates the sampler
    uses; and no rate points away from x1 (u(x, z) > 0 only if d(x, x1) < d(z, x1))."""
    m = metric(beta_power=1.3)
    m.codebook = m.codebook.double()
    m.table = m.table.double()
    for x1 in range(K):
        ones = torch.full((K,), x1)
        p = m.path_logprobs(ones[:1], torch.tensor([t], dtype=torch.float64)).exp()[0]
        eps = 1e-6
        dp = (
            m.path_logprobs(ones[:1], torch.tensor([t + eps], dtype=torch.float64)).exp()
            - m.path_logprobs(ones[:1], torch.tensor([t - eps], dtype=torch.float64)).exp()
        )[0] / (2 * eps)
        u = m.rates(torch.arange(K), ones, torch.full((K,), t, dtype=torch.float64))  # [z, x]
        assert torch.all(u.diagonal() == 0)
        flow = (u * p[:, None]).sum(0) - p * u.sum(1)
        torch.testing.assert_close(flow, dp, rtol=1e-6, atol=1e-9)
        d = m.distances(ones[:1])[0]
        assert torch.all((u > 0) <= (d[None, :] < d[:, None]))


def euler_transition(m, x1, t, h):
    """The analytic one-step kernel of ``jump`` [z, x]: stay w.p. exp(−hΛ_z), else x ∝ u."""
    z = torch.arange(K)
    u = m.rates(z, torch.full((K,), x1), torch.full((K,), t, dtype=torch.float64)).double()
    lam = u.sum(1, keepdim=True)
    move = -torch.expm1(-h * lam) * u / lam.clamp_min(1e-300)
    return move + torch.diag(torch.exp(-h * lam.squeeze(1)))


def test_euler_step_transports_the_path_to_second_order():
    """p_t(·|x1) after one step of h is p_{t+h}(·|x1) up to O(h²): halving h cuts the
    one-step error about fourfold."""
    m = metric()
    m.codebook = m.codebook.double()
    m.table = m.table.double()
    t, x1 = 0.2, 5

    def p(s):
        return m.path_logprobs(torch.tensor([x1]), torch.tensor([s], dtype=torch.float64)).exp()[0]

    errors = [
        0.5 * (p(t) @ euler_transition(m, x1, t, h) - p(t + h)).abs().sum().item()
        for h in (0.02, 0.01, 0.005)
    ]
    assert errors[0] < 0.01
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3, errors


def test_jump_draws_the_euler_transition():
    m = metric()
    t, h, n, x1 = 0.2, 0.05, 200_000, 5
    g = torch.Generator().manual_seed(0)
    z = m.corrupt(torch.full((n, 1, 1), x1), torch.full((n,), t), g).view(n)
    moved = m.jump(z, torch.full((n,), x1), t, h, g)
    freq = torch.bincount(moved, minlength=K).double() / n
    before = torch.bincount(z, minlength=K).double() / n
    expect = before @ euler_transition(m, x1, t, h).float().double()
    assert 0.5 * (freq - expect).abs().sum() < 0.006  # sampling noise ≈ 0.002
    assert 0.5 * (freq - before).abs().sum() > 0.03  # the step did move the distribution
    assert (moved[z == x1] == x1).all()  # at the target: no rate out


@pytest.mark.parametrize("steps", [100])
def test_metric_oracle_reproduces_distribution_and_wrong_model_fails(steps):
    m = metric()
    for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
        model = Oracle("dfm-metric", probs=probs, method=m)
        out = m.sample(model, N_SAMPLES, GRID, steps, generator=torch.Generator().manual_seed(0))
        assert out.nfe == model.calls == steps and out.nfe_rows == steps
        tv = total_variation(out.indices)
        assert (tv < TV_TOL) == should_pass, f"TV {tv:.3f} vs tol {TV_TOL}"


def test_metric_interface_and_errors():
    m = metric()
    assert (m.input_kind, m.vocab_size, m.out_channels) == ("tokens", K, K)
    assert m.model_kwargs()["vocab_size"] == K
    post = m.posterior(
        Oracle("dfm-metric", method=m), torch.randint(0, K, (3, *GRID)), torch.full((3,), 0.5)
    )
    torch.testing.assert_close(post.sum(1), torch.ones(3, *GRID))
    for bad, match in (
        ({"distance": "cosine"}, "distance"),
        ({"beta_power": 0.5}, "beta_power"),
        ({"beta_scale": 0.0}, "beta_scale"),
    ):
        with pytest.raises(ValueError, match=match):
            metric(**bad)
    with pytest.raises(ValueError, match="samples with euler"):
        m.sample(Oracle("dfm-metric", method=m), 2, GRID, 2, solver="maskgit")


# ------------------------------------------------------------------------------ MDLM
@pytest.mark.parametrize(
    ("t_min", "power", "eps", "stratified"),
    [
        (0.0, 1.0, 1e-3, True),
        (0.0, 2.0, 1e-3, False),
        (0.2, 1.0, 1e-2, True),
        (1e-3, 0.5, 1e-3, True),
    ],
)
def test_mdlm_weight_has_unit_mean_closed_form_and_bound(t_min, power, eps, stratified):
    """t is uniform on [t_min, 1 − ε] (MDLM's range): the divisor is E_t[κ̇] there, the
    weight is bounded by its value at 1 − ε, and E[w·1_masked] = 1 per position."""
    m = methods.build(
        "dfm",
        codebook=E,
        weighting="mdlm",
        kappa_power=power,
        t_min=t_min,
        mdlm_eps=eps,
        mdlm_stratified=stratified,
    )
    t_max = 1 - eps  # E_t[κ̇] = (κ(t_max) − κ(t_min))/(t_max − t_min)
    norm = (t_max**power - t_min**power) / (t_max - t_min)
    t = torch.tensor([0.3, 0.6])
    expect = power * t ** (power - 1) / (1 - t**power) / norm
    torch.testing.assert_close(m.mdlm_weight(t), expect)
    g = torch.Generator().manual_seed(0)
    t = m.time_sampler(400_000, "cpu", g)
    assert t.min() >= t_min and t.max() <= t_max
    bound = m.mdlm_weight(torch.tensor([t_max]))
    assert (m.mdlm_weight(t) <= bound * (1 + 1e-6)).all()
    # Monte Carlo: E[w(t)·1_masked] = 1 per position
    masked = torch.rand(t.shape, generator=g) >= m.path.kappa(t)
    w = (m.mdlm_weight(t) * masked).double()
    est, se = w.mean().item(), w.std().item() / math.sqrt(len(w))
    assert abs(est - 1) < max(4 * se, 0.01), (est, se)


def test_mdlm_refuses_what_is_not_its_elbo():
    with pytest.raises(ValueError, match="time_sampling='uniform'"):
        methods.build("dfm", codebook=E, weighting="mdlm", time_sampling="logit_normal")
    with pytest.raises(ValueError, match="mdlm_eps"):
        methods.build("dfm", codebook=E, weighting="mdlm", t_min=0.5, mdlm_eps=0.5)
    with pytest.raises(ValueError, match="t_min > 0"):
        methods.build("dfm", codebook=E, weighting="mdlm", kappa_power=0.5, t_min=0.0)


BAD_DFM_OPTIONS = [
    {"source": "absorb"},
    {"weighting": "mdlm", "source": "uniform"},
    {"weighting": "mdlm", "time_sampling": "logit_normal"},
    {"weighting": "mdlm", "kappa_power": 0.5, "t_min": 0.0},
    {"weighting": "mdlm", "t_min": 0.5, "mdlm_eps": 0.5},
    {"kappa_power": 1e300},
]


@pytest.mark.parametrize("options", BAD_DFM_OPTIONS)
def test_a_bad_dfm_option_is_refused_in_the_same_words_by_the_method_and_the_checks(options):
    """One rule, one source (the dfm record in methods/records/dfm.py): the line the start-up checks
    print for a config is the one DFM raises for the same options."""
    from omegaconf import OmegaConf

    from experiments.runner.checks import validation_errors

    with pytest.raises(ValueError, match="is not allowed; expected") as raised:
        methods.build("dfm", codebook=E, **options)
    cfg = OmegaConf.create(
        {"method": {"name": "dfm", **options}, "eval": {"solver": "euler", "temperature": 1.0}}
    )
    lines = [line for line in validation_errors(cfg) if line.startswith("method.")]
    assert lines
    for line in lines:
        assert line.removeprefix("method.") in str(raised.value)


def test_stratified_times_one_per_stratum():
    ts = methods.TimeSampler("uniform", t_min=0.0, stratified=True)
    t = ts(64, "cpu", torch.Generator().manual_seed(0))
    assert ((t * 64).floor() == torch.arange(64)).all()  # t_i in [i/64, (i+1)/64)


def test_mdlm_loss_weights_masked_positions_only():
    """The loss equals mean(w(t)·1_masked·CE) + λ·z computed by hand from the full logits."""
    full, chunked, model = make("dfm", 1, weighting="mdlm", z_loss_weight=1e-3)
    c = torch.randint(0, 12, (5, 4, 6), generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1])
    gen = torch.Generator().manual_seed(1)
    out = full.loss(model, c, y, generator=gen)
    gen = torch.Generator().manual_seed(1)  # replay the draws
    t = full.time_sampler(5, "cpu", gen)
    x_t = full.corrupt(c, t, gen)
    logits = model(x_t, t, y).double()
    ce = torch.nn.functional.cross_entropy(logits, c, reduction="none")
    w = (x_t == full.mask_id) * full.mdlm_weight(t).double().view(-1, 1, 1)
    zl = torch.logsumexp(logits, 1).pow(2).mean()
    torch.testing.assert_close(out.loss, (w * ce).mean() + 1e-3 * zl)
    torch.testing.assert_close(out.logs["ce"], ce.mean())
    assert 0 < (x_t == full.mask_id).float().mean() < 1
    with pytest.raises(ValueError, match="source=.mask."):
        methods.build("dfm", codebook=E, source="uniform", weighting="mdlm")


# ---------------------------------------------------------------------------- MaskGIT
def maskgit(**kw):
    return methods.build("dfm", codebook=E, source="mask", **kw)


class FixedLogits:
    """A model whose logits depend on nothing but the position (counts its calls)."""

    def __init__(self, grid):
        self.logits = torch.randn(1, K, *grid, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        return self.logits.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_maskgit_schedule_and_nfe(schedule, steps):
    m = maskgit()
    model = FixedLogits((3, 4))
    out = m.sample(
        model,
        6,
        (3, 4),
        steps,
        solver="maskgit",
        trace=True,
        generator=torch.Generator().manual_seed(0),
        solver_options=MaskGITOptions(schedule=schedule),
    )
    assert out.nfe == model.calls == steps and out.nfe_rows == steps
    masked = [int((r["state"][0] == K).sum()) for r in out.trace]  # before each step, then final
    assert masked[0] == 12 and masked[-1] == 0 and (out.indices < K).all()
    for i in range(steps):
        gamma = SCHEDULES[schedule]((i + 1) / steps)
        # at least one unmasked per step, at least one left for each step to come
        least = steps - 1 - i
        want = 0 if i == steps - 1 else max(least, min(math.floor(12 * gamma), masked[i] - 1))
        assert masked[i + 1] == want < masked[i]  # every call does work
        assert all(int((r == K).sum()) == masked[i + 1] for r in out.trace[i + 1]["state"])


def test_maskgit_random_order_one_token_per_step_is_exact_and_wrong_model_fails():
    """With one position unmasked per step in random order (confidence swamped by choice
    noise), MaskGIT is an exact sequential sampler of the oracle: TV < tol; the wrong oracle
    fails. NFE = steps = model calls."""
    m, random_order = maskgit(), MaskGITOptions(choice_temperature=1e6)
    for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
        model = Oracle("dfm", "mask", probs)
        g = torch.Generator().manual_seed(0)
        out = m.sample(
            model, N_SAMPLES, GRID, 4, solver="maskgit", generator=g, solver_options=random_order
        )
        assert out.nfe == model.calls == 4
        tv = total_variation(out.indices)
        assert (tv < TV_TOL) == should_pass, f"TV {tv:.3f}"


def test_maskgit_unmasks_the_most_confident_positions_first():
    """Choice temperature 0: a model sure at position (0,0), unsure elsewhere → (0,0) is the
    one position decoded by the first of 4 steps (γ(1/4)·4 = 3 stay masked)."""
    logits = torch.zeros(1, K, *GRID)
    logits[0, 2, 0, 0] = 10.0
    logits[0, 5, 1, 1] = 2.0

    def model(x, t, y=None):
        return logits.expand(x.shape[0], -1, -1, -1)

    m, greedy = maskgit(), MaskGITOptions(choice_temperature=0.0)
    g = torch.Generator().manual_seed(0)
    out = m.sample(
        model, 50, GRID, 4, solver="maskgit", trace=True, generator=g, solver_options=greedy
    )
    after_first = out.trace[1]["state"]
    assert (after_first[:, 0, 0] == 2).all()
    assert ((after_first == K).flatten(1).sum(1) == 3).all()


def test_maskgit_guidance_temperature_and_errors():
    m = maskgit()
    model = Oracle("dfm")
    y = torch.zeros(8, dtype=torch.long)
    out = m.sample(
        model,
        8,
        GRID,
        3,
        y=y,
        solver="maskgit",
        cfg_scale=2.0,
        temperature=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.nfe == 3 and out.nfe_rows == 6 and (out.indices < K).all()
    with pytest.raises(ValueError, match="need method.source=mask"):
        methods.build("dfm", codebook=E, source="uniform").sample(
            model, 2, GRID, 2, solver="maskgit"
        )


# ----------------------------------------------------------------- chunked head: the same
@pytest.mark.parametrize(("name", "kw"), [("dfm-metric", {}), ("dfm", {"weighting": "mdlm"})])
def test_chunked_head_equals_full_for_new_losses(name, kw):
    from test_head import loss_and_grads

    full, chunked, model = make(name, 2, z_loss_weight=1e-2, **kw)
    c = torch.randint(0, 12, (5, 4, 6), generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1])
    ref, ref_g = loss_and_grads(full, model, c, y)
    new, new_g = loss_and_grads(chunked, model, c, y)
    torch.testing.assert_close(new.loss, ref.loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(new_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("name", "solver"), [("dfm-metric", "euler"), ("dfm", "maskgit")])
def test_chunked_head_samples_equal_full_for_new_samplers(name, solver):
    full, chunked, model = make(name, 2)
    model.eval()
    y = torch.tensor([0, 1, 2])
    outs = [
        m.sample(
            model,
            3,
            (4, 6),
            5,
            y=y,
            solver=solver,
            temperature=0.8,
            cfg_scale=1.5,
            generator=torch.Generator().manual_seed(7),
        )
        for m in (full, chunked)
    ]
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert len(outs[0].indices.unique()) > 2
