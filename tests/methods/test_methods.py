"""Closed-form and oracle tests every method passes (one parametrised module).

The variants under test are every objective and variant the records register
(``methods/records/``), and each one's oracle is built from its own path likelihood and
ideal output (``helpers.toy.MethodOracle``): a newly registered method runs through every
test here without being listed. ``test_the_generic_oracle_is_the_independent_one`` checks
those hooks against the independently written oracle for the methods it knows.
"""

import pytest
import torch
from helpers.toy import (
    CODEBOOK,
    GRID,
    PROBS,
    WRONG_PROBS,
    K,
    MethodOracle,
    Oracle,
    total_variation,
)

import methods
from methods.base import NULL_LABEL, categorical, guided_forward, nearest_code
from methods.purrception import velocity_from_posterior
from methods.records import records, variants
from shared.backbone import DiT

E = CODEBOOK.float()
VARIANTS = variants()  # {label: (method name, options)}
FIXED_GRID_STEPS = {"euler": 50, "heun": 25, "midpoint": 25, "euler-redraw": 50, "maskgit": 4}


def build(variant):
    name, kw = VARIANTS[variant]
    return methods.build(name, codebook=E, **kw)


def oracle(variant, probs=PROBS):
    return MethodOracle(build(variant), probs)


def exact_solvers(variant) -> list[str]:
    """The samplers that reproduce the data from an exact model: every fixed-grid solver the
    options allow, less the two that are exact only in the limit (the redraw variant of
    Euler and MaskGIT, tested on their own in test_dfm_variants.py)."""
    name, kw = VARIANTS[variant]
    rec = records()[name]
    values = {**rec.defaults(), **kw}
    return [
        s
        for s in rec.solvers
        if s not in ("euler-redraw", "maskgit") and not rec.solver_rules(s, values)
    ]


CASES = [(v, s, FIXED_GRID_STEPS[s]) for v in VARIANTS for s in exact_solvers(v)]
N_SAMPLES, TV_TOL = 4000, 0.04  # sampling error alone gives TV ≈ 0.01 at N=4000


@pytest.mark.parametrize("variant,solver,steps", CASES)
def test_oracle_reproduces_distribution_and_wrong_model_fails(variant, solver, steps):
    m = build(variant)
    for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
        model = oracle(variant, probs)
        g = torch.Generator().manual_seed(0)
        out = m.sample(model, N_SAMPLES, GRID, steps, solver=solver, generator=g)
        assert out.indices.shape == (N_SAMPLES, *GRID) and out.indices.dtype == torch.long
        assert out.nfe == model.calls  # NFE reported == model calls
        tv = total_variation(out.indices)
        assert (tv < TV_TOL) == should_pass, f"{variant}/{solver}: TV {tv:.3f} vs tol {TV_TOL}"


def test_every_registered_method_has_an_oracle_and_it_is_exact():
    """Every record's method gives its path likelihood and ideal output (the generic oracle
    fails without them); for the methods the independent oracle knows, both agree."""
    for variant, (name, kw) in VARIANTS.items():
        m = build(variant)
        x = (
            torch.randint(0, K, (3, *GRID))
            if m.input_kind == "tokens"
            else torch.randn(3, 2, *GRID)
        )
        t = torch.tensor([0.1, 0.5, 0.9])
        out = MethodOracle(m)(x, t)
        assert out.shape == (3, m.out_channels, *GRID) and torch.isfinite(out).all(), variant
        if name in ("cfm", "cfm-endpoint", "purr", "dfm", "dfm-metric"):
            independent = Oracle(name, kw.get("source", "mask"), method=m)(x, t)
            torch.testing.assert_close(out, independent, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if build(v).input_kind == "tokens"])
def test_corruption_draws_what_the_path_likelihood_says(variant):
    """The training corruption x_t ~ p_t(· | c) and the likelihood the oracle (and any
    posterior) is built from are the same path: empirical frequencies against exp(path_loglik)."""
    m = build(variant)
    n, t = 40000, torch.tensor([0.3, 0.7])
    codes = torch.tensor([[[1, 5]]]).expand(n, 1, 2)  # one position holds 1, the other 5
    for ti in t:
        x = m.corrupt(codes, ti.expand(n), torch.Generator().manual_seed(0))
        for pos, c in ((0, 1), (1, 5)):
            seen = torch.bincount(x[:, 0, pos], minlength=m.vocab_size).double() / n
            states = torch.arange(m.vocab_size).view(-1, 1, 1)
            lik = m.path_loglik(states, ti.expand(m.vocab_size))[:, c, 0, 0].exp()
            torch.testing.assert_close(seen, lik / lik.sum(), atol=0.01, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_interface(variant):
    m = build(variant)
    name, kw = VARIANTS[variant]
    assert m.input_kind in ("tokens", "latent")
    assert m.out_channels == (K if m.categorical_posterior else 2)
    if m.input_kind == "latent":
        assert m.vocab_size is None
    else:  # the codes, and at most one more token: the mask of an absorbing source
        assert K <= m.vocab_size <= K + 1
    x = torch.randint(0, K, (3, *GRID)) if m.input_kind == "tokens" else torch.randn(3, 2, *GRID)
    post = m.posterior(oracle(variant), x, torch.full((3,), 0.5))
    if m.categorical_posterior:
        assert post.shape == (3, K, *GRID)
        torch.testing.assert_close(post.sum(1), torch.ones(3, *GRID))
    else:
        assert post is None


def test_interpolant_endpoints():
    m = build("cfm")
    z0, z1 = torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2)
    assert torch.equal(m.interpolate(z0, z1, torch.zeros(4)), z0)
    assert torch.equal(m.interpolate(z0, z1, torch.ones(4)), z1)
    t = torch.tensor([0.25, 0.5, 0.75, 0.1])
    torch.testing.assert_close(
        m.interpolate(z0, z1, t), t.view(-1, 1, 1, 1) * z1 + (1 - t.view(-1, 1, 1, 1)) * z0
    )


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_corruption_rate_equals_kappa(source, power):
    m = methods.build("dfm", codebook=E, source=source, kappa_power=power)
    g = torch.Generator().manual_seed(1)
    c = torch.randint(0, K, (2000, 8, 8), generator=g)
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        x = m.corrupt(c, torch.full((2000,), t), generator=g)
        kappa = t**power
        expect = kappa if source == "mask" else kappa + (1 - kappa) / K  # a source draw may hit c
        rate = (x == c).double().mean().item()
        assert abs(rate - expect) < 4e-3, (t, rate, expect)  # 4e-3 ≈ 6σ at n=128k
        if source == "mask":
            assert ((x == c) | (x == K)).all()
        else:
            assert x.max() < K


def test_one_hot_posterior_velocity_is_exact():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, K, (5, *GRID), generator=g)
    z = torch.randn(5, 2, *GRID, generator=g)
    t = torch.rand(5, generator=g) * 0.9
    one_hot = torch.nn.functional.one_hot(c, K).permute(0, 3, 1, 2).float()
    expect = (E[c].permute(0, 3, 1, 2) - z) / (1 - t).view(-1, 1, 1, 1)
    got = velocity_from_posterior(one_hot, E, z, (1 - t).view(-1, 1, 1, 1))
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    # the same through the method, with a model whose argmax is c and τ=0
    m = build("purr")
    logits_model = lambda x, t, y: 10.0 * one_hot + torch.randn(one_hot.shape, generator=g)
    v, post, _ = m.velocity(logits_model, z, t, None, temperature=0.0)
    torch.testing.assert_close(v, expect, rtol=0, atol=1e-6)
    assert torch.equal(post.argmax(1), c)


def test_temperature_to_zero_is_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, K, 3, 3, generator=g)
    top = logits.argmax(1, keepdim=True)
    logits.scatter_add_(1, top, torch.full(top.shape, 0.01))  # a margin ≫ τ=1e-4 at the top
    hard = categorical(logits, 0.0)
    assert torch.equal(hard.argmax(1), logits.argmax(1)) and torch.equal(
        hard.sum(1), torch.ones(4, 3, 3)
    )
    torch.testing.assert_close(categorical(logits, 1e-4), hard)
    torch.testing.assert_close(categorical(logits, 1.0), logits.softmax(1))
    flat = categorical(logits, 1e4)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / K), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        categorical(logits, -1.0)
    with pytest.raises(ValueError, match="no categorical posterior"):
        build("cfm").sample(oracle("cfm"), 2, GRID, 2, temperature=0.5)


class LabelModel:
    """Output depends on x, t and y (row NULL_LABEL = the unconditional branch)."""

    def __init__(self, out_channels, num_classes=3, ignore_labels=False):
        g = torch.Generator().manual_seed(7)
        self.table = torch.randn(num_classes + 1, out_channels, 1, 1, generator=g)
        self.ignore = ignore_labels
        self.calls = 0
        self.rows = 0

    def __call__(self, x, t, y):
        self.calls = self.calls + 1
        self.rows = self.rows + x.shape[0]
        base = (x.float().unsqueeze(1) if x.ndim == 3 else x.float()).mean(1, keepdim=True)
        base = base + t.view(-1, 1, 1, 1)
        if self.ignore or y is None:
            return base * torch.ones_like(self.table[0])
        y = torch.where(y == NULL_LABEL, self.table.shape[0] - 1, y)
        return base + self.table[y]


def test_cfg_formula_scale_one_and_label_blind():
    model = LabelModel(out_channels=K)
    x, t, y = torch.randn(4, 2, *GRID), torch.rand(4), torch.tensor([0, 1, 2, 1])
    out, mult = guided_forward(model, x, t, y, 1.0)
    assert mult == 1 and torch.equal(out, model(x, t, y))
    out, mult = guided_forward(model, x, t, y, 2.5)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL_LABEL))
    assert mult == 2
    torch.testing.assert_close(out, uncond + 2.5 * (cond - uncond))
    model.calls = 0
    guided_forward(model, x, t, y, 4.0)
    assert model.calls == 1  # one batched forward over both halves
    with pytest.raises(ValueError, match="needs class labels"):
        guided_forward(model, x, t, None, 2.0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cfg_is_noop_for_label_blind_model(variant):
    m = build(variant)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    outs = []
    for scale in (1.0, 3.0):
        model = LabelModel(m.out_channels, ignore_labels=True)
        g = torch.Generator().manual_seed(3)
        outs.append(m.sample(model, 6, GRID, 4, y=y, cfg_scale=scale, generator=g))
        assert outs[-1].nfe == model.calls == 4
        assert outs[-1].nfe_rows == (4 if scale == 1.0 else 8)
        assert model.rows == 6 * outs[-1].nfe_rows
    assert torch.equal(outs[0].indices, outs[1].indices)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_and_time_grid(variant, steps):
    m = build(variant)
    solvers = exact_solvers(variant)
    expected = {"euler": steps, "heun": 2 * steps - 1, "midpoint": 2 * steps}
    for solver in solvers:
        seen_t = []
        base = oracle(variant)

        def model(x, t, y, seen_t=seen_t, base=base):
            seen_t.append(round(t[0].item(), 6))
            return base(x, t, y)

        out = m.sample(model, 3, GRID, steps, solver=solver, trace=True)
        assert out.nfe == len(seen_t) == expected[solver]
        assert max(seen_t) < 1.0  # never evaluated at the singular t=1
        assert [r["t"] for r in out.trace] == pytest.approx([i / steps for i in range(steps + 1)])
        assert out.indices.min() >= 0 and out.indices.max() < K  # no mask id survives
    with pytest.raises(ValueError, match="positive integer"):
        m.sample(oracle(variant), 2, GRID, 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trace_holds_states_and_posteriors(variant):
    m = build(variant)
    out = m.sample(oracle(variant), 5, GRID, 6, trace=True)
    assert len(out.trace) == 7
    for rec in out.trace[:-1]:
        if m.categorical_posterior:
            assert rec["posterior"].shape == (5, K, *GRID)
            torch.testing.assert_close(rec["posterior"].sum(1), torch.ones(5, *GRID))
        else:
            assert rec["posterior"] is None
    last = out.trace[-1]["state"]
    if m.input_kind == "tokens":
        assert torch.equal(last, out.indices)
    else:
        assert torch.equal(nearest_code(last, E), out.indices)
    if variant == "dfm":
        assert (out.trace[0]["state"] == K).all()  # starts fully masked


def test_nearest_code_and_lookup_roundtrip():
    m = build("purr")
    c = torch.randint(0, K, (4, 3, 3))
    assert torch.equal(nearest_code(m.lookup(c), E), c)
    z = m.lookup(c) + 0.1 * torch.randn(4, 2, 3, 3)  # small perturbations stay put
    assert torch.equal(nearest_code(z, E), c)


def test_the_snap_to_the_codebook_is_exact_under_bf16_autocast():
    """Two codes 1e-3 apart and a state between them, nearer the second: in bf16 the cross
    term z·e of both rounds to 1.0 and the first code wins. The search runs in float32
    whatever the caller's autocast, so a bf16 sampler snaps as an fp32 one does."""
    book = torch.zeros(2, 4)
    book[0, 0], book[1, 0] = 1.0, 1.001
    z = torch.zeros(1, 4, 1, 1)
    z[0, 0] = 1.0006
    exact = ((z.flatten() - book.double()) ** 2).sum(1).argmin()
    assert int(exact) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert int(nearest_code(z, book)) == 1
        assert int(nearest_code(z.bfloat16().float(), book)) == int(
            ((z.bfloat16().float().flatten() - book) ** 2).sum(1).argmin()
        )


def test_time_sampler_ranges():
    g = torch.Generator().manual_seed(0)
    u = methods.TimeSampler("uniform", t_min=0.2)(20000, "cpu", g)
    assert u.min() >= 0.2 and u.max() < 1.0 and abs(u.mean().item() - 0.6) < 0.01
    ln = methods.TimeSampler("logit_normal", t_min=1e-3, mean=0.0, std=1.0)(20000, "cpu", g)
    assert ln.min() >= 1e-3 and ln.max() < 1.0 and abs(ln.median().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="logit_normal"):
        methods.TimeSampler("cosine", 0.0)


def test_build_errors():
    with pytest.raises(ValueError, match="unknown method 'flow'"):
        methods.build("flow", codebook=E)
    with pytest.raises(TypeError, match="bad option for method 'cfm'"):
        methods.build("cfm", codebook=E, source="mask")
    with pytest.raises(ValueError, match="source=.absorb. is not allowed; expected one of mask"):
        methods.build("dfm", codebook=E, source="absorb")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_z_loss_is_added_for_categorical_methods(variant):
    m = build(variant)
    if not m.categorical_posterior:
        return
    name, kw = VARIANTS[variant]
    model = LabelModel(K)
    c = torch.randint(0, K, (4, *GRID))
    lw = methods.build(name, codebook=E, z_loss_weight=0.5, **kw).loss(
        model, c, generator=torch.Generator().manual_seed(0)
    )
    l0 = methods.build(name, codebook=E, z_loss_weight=0.0, **kw).loss(
        model, c, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(lw.loss, l0.loss + 0.5 * l0.logs["z_loss"])
    if "weighting" not in kw:
        torch.testing.assert_close(l0.loss, l0.logs["ce"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_dit_loss_falls(variant):
    """A few dozen steps on 4 fixed 4×4 patterns: the loss must fall."""
    torch.manual_seed(0)
    k = 16
    codebook = torch.randn(k, 4)
    name, kw = VARIANTS[variant]
    m = methods.build(name, codebook=codebook, **kw)
    net = DiT(
        input_size=4,
        patch_size=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=4,
        **m.model_kwargs(),
    )
    patterns = torch.randint(0, k, (4, 4, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        y = torch.randint(0, 4, (32,), generator=g)
        out = m.loss(net, patterns[y], y, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        # the CE where a method logs one: the MDLM-weighted loss is an unbiased but noisy
        # estimate at batch 32 (its weight reaches 1/ε), the CE it optimises is not
        losses.append(out.logs.get("ce", out.loss).item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"{variant}: loss {first:.3f} → {last:.3f}"


def test_inverse_cdf_draws_match_probabilities():
    from methods.base import inverse_cdf

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, K, generator=g) * 2, dim=1)
    probs[0, 3] = 0.0  # a zero-probability code is never drawn
    probs = probs / probs.sum(1, keepdim=True)
    draws = inverse_cdf(probs.expand(20000, -1), torch.rand(20000, 1, generator=g))
    freq = torch.bincount(draws, minlength=K).float() / len(draws)
    assert (draws != 3).all() and 0.5 * (freq - probs.flatten()).abs().sum() < 0.02
    one_hot = torch.nn.functional.one_hot(torch.tensor([5]), K).float()
    assert inverse_cdf(one_hot, torch.rand(1, 1, generator=g)).item() == 5


def test_categorical_pieces_match_float64_reference():
    """Posterior, CE + z-loss and posterior mean against plain float64 formulas on (B,K,H,W)."""
    from methods.base import categorical_loss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 11, 4, 5, generator=g) * 3
    idx = torch.randint(0, 11, (3, 4, 5), generator=g)
    ref64 = logits.double()
    for tau in (1.0, 0.6):
        post = categorical(logits, tau)
        assert post.shape == logits.shape and post.dtype == torch.float32
        torch.testing.assert_close(post.double(), torch.softmax(ref64 / tau, 1), atol=1e-6, rtol=0)
    # bf16 logits (CUDA autocast) give a float32 posterior of the bf16 values
    torch.testing.assert_close(
        categorical(logits.bfloat16()).double(),
        torch.softmax(logits.bfloat16().double(), 1),
        atol=1e-6,
        rtol=0,
    )
    out = categorical_loss(logits, idx, 0.1)
    logp = torch.log_softmax(ref64, 1)
    ce = -logp.gather(1, idx[:, None]).mean()
    zl = torch.logsumexp(ref64, 1).pow(2).mean()
    assert abs(out.logs["ce"].item() - ce.item()) < 1e-5
    assert abs(out.logs["z_loss"].item() - zl.item()) < 1e-4
    assert abs(out.loss.item() - (ce + 0.1 * zl).item()) < 1e-4
    # posterior mean Σ_k π_k e_k (one matmul per image)
    cb, z = torch.randn(11, 2, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    post = categorical(logits)
    v = velocity_from_posterior(post, cb, z, torch.tensor(0.25))
    mu = torch.einsum("bkhw,kd->bdhw", torch.softmax(ref64, 1), cb.double())
    torch.testing.assert_close(v.double(), (mu - z.double()) / 0.25, atol=1e-5, rtol=0)


def test_standardised_latents_keep_codes_and_reproduce_the_toy():
    """latent_scale=unit: the flow runs on (E − mean)/std. A shifted, shrunk toy codebook
    standardises to unit scale; nearest codes and the sampled distribution are unchanged in
    meaning (oracle in the standardised space: TV < tol; the wrong oracle fails)."""
    from methods.latent_flow import standardise

    shifted = 0.3 * E + torch.tensor([3.0, -1.0])
    std = standardise(shifted)
    torch.testing.assert_close(std.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(std.pow(2).mean(), torch.tensor(1.0))
    z = torch.randn(50, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    scale = (shifted - shifted.mean(0)).pow(2).mean().sqrt()
    z_std = (z - shifted.mean(0).view(1, 2, 1, 1)) / scale
    assert torch.equal(nearest_code(z, shifted), nearest_code(z_std, std))
    for name in ("purr", "cfm"):
        m = methods.build(name, codebook=shifted, latent_scale="unit")
        torch.testing.assert_close(m.codebook, std)
        for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
            model = Oracle(name, probs=probs, codebook=m.codebook)
            out = m.sample(model, N_SAMPLES, GRID, 50, generator=torch.Generator().manual_seed(0))
            tv = total_variation(out.indices, probs=PROBS)
            assert (tv < TV_TOL) == should_pass, f"{name}: TV {tv:.3f}"
    with pytest.raises(ValueError, match="latent_scale"):
        methods.build("cfm", codebook=E, latent_scale="global")


def test_every_record_names_its_class_and_the_class_its_record():
    """The records (read by the start-up checks without torch) against the classes."""
    from methods.records import records

    for name, rec in records().items():
        m = methods.build(name, codebook=E)
        assert type(m).name == name and m.record is rec
        assert m.solvers == rec.solvers and m.categorical_posterior == rec.categorical
        assert isinstance(m.options, rec.options) and m.options.name == name


def bad_values():
    """(method, option, a value its record refuses) for every option with allowed values."""
    from methods.options import meta, options_of

    out = []
    for name, rec in records().items():
        for f in options_of(rec.options):
            choices, within = meta(f, "choices"), meta(f, "within")
            if choices is not None:
                out.append((name, f.name, "bogus"))
            elif within is not None:
                out.append((name, f.name, float("nan")))
    return out


@pytest.mark.parametrize(("name", "option", "value"), bad_values())
def test_every_bad_option_is_refused_in_the_same_words_by_the_method_and_the_checks(
    name, option, value
):
    """Each record's choices and ranges are the one rule: the line the start-up checks print
    for a config is in the error the method raises for the same option."""
    from omegaconf import OmegaConf

    from experiments.runner.checks import validation_errors

    with pytest.raises(ValueError, match="is not allowed; expected") as raised:
        methods.build(name, codebook=E, **{option: value})
    cfg = OmegaConf.create(
        {"method": {"name": name, option: value}, "eval": {"solver": "euler", "temperature": 1.0}}
    )
    lines = [line for line in validation_errors(cfg) if line.startswith(f"method.{option}=")]
    assert lines, f"the checks let {name}'s {option}={value!r} through"
    assert lines[0].removeprefix("method.") in str(raised.value)
