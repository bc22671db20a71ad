"""A small known distribution over 2×2 index grids and its exact ("oracle") posteriors.

K=8 codes on a circle of radius 2 in d=2; six joint configurations with correlated
positions. For the continuous path z_t = t·z1 + (1−t)·z0 the posterior over
configurations is w_m ∝ π_m · N(z_t; t·E[c_m], (1−t)² I); for the mixture path it is
w_m ∝ π_m · Π_pos p(x_t | c_m) with p(x|c) = κ·1[x=c] + (1−κ)·source(x); for the metric
path p(x|c) = softmax_x(−β_t·d(x, c)).
Per-position marginals of w give the exact categorical posterior each method learns.
"""

from __future__ import annotations

import math

import torch

K, D, GRID = 8, 2, (2, 2)
ANGLES = torch.arange(K, dtype=torch.float64) * (2 * math.pi / K)
CODEBOOK = 2.0 * torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1)  # (K, 2)
CONFIGS = torch.tensor(
    [
        [[0, 1], [2, 3]],
        [[0, 1], [2, 4]],
        [[5, 5], [5, 5]],
        [[7, 6], [1, 0]],
        [[3, 3], [0, 0]],
        [[2, 1], [2, 1]],
    ]
)
PROBS = torch.tensor([0.3, 0.1, 0.2, 0.15, 0.15, 0.1], dtype=torch.float64)
WRONG_PROBS = torch.tensor([0.05, 0.35, 0.05, 0.05, 0.1, 0.4], dtype=torch.float64)


def config_onehot() -> torch.Tensor:
    return torch.nn.functional.one_hot(CONFIGS, K).permute(0, 3, 1, 2).double()  # (M,K,H,W)


def marginal(w: torch.Tensor) -> torch.Tensor:
    """Configuration weights (B, M) → per-position posterior (B, K, H, W)."""
    return torch.einsum("bm,mkhw->bkhw", w, config_onehot())


def latent_weights(z, t, probs=PROBS, codebook=CODEBOOK) -> torch.Tensor:
    z, t = z.double(), t.double().view(-1, 1)
    z1 = codebook[CONFIGS].permute(0, 3, 1, 2)  # (M, d, H, W)
    diff = z[:, None] - t.view(-1, 1, 1, 1, 1) * z1[None]  # (B, M, d, H, W)
    sq = diff.pow(2).flatten(2).sum(-1)  # (B, M)
    logw = probs.log()[None] - sq / (2 * (1 - t).pow(2))
    return torch.softmax(logw, dim=1)


def token_weights(x, t, source: str, kappa=lambda t: t, probs=PROBS) -> torch.Tensor:
    k = kappa(t.double()).view(-1, 1, 1, 1)  # (B,1,1,1)
    match = (x[:, None] == CONFIGS[None]).double()  # (B, M, H, W)
    if source == "mask":
        masked = (x == K)[:, None].double()
        lik = match * k + masked * (1 - k)
    else:
        lik = match * k + (1 - k) / K
    logw = probs.log()[None] + lik.clamp_min(1e-300).log().flatten(2).sum(-1)
    return torch.softmax(logw, dim=1)


def metric_weights(x, t, method, probs=PROBS) -> torch.Tensor:
    """Posterior over configurations for the metric path of ``method`` (a MetricDFM):
    w_m ∝ π_m · Π_pos p_t(x_t | c_m) with p_t(·|c) = softmax(−β_t d(·, c))."""
    b = x.shape[0]
    codes, t = torch.arange(K).repeat(b), t.reshape(-1).repeat_interleave(K)
    logp = method.path_logprobs(codes, t).double().view(b, K, K)  # (B, c, x): log p_t(x | c)
    lik = logp[torch.arange(b).view(b, 1, 1, 1), CONFIGS[None], x[:, None]]  # (B, M, H, W)
    return torch.softmax(probs.log()[None] + lik.flatten(2).sum(-1), dim=1)


class Oracle:
    """model(x, t, y) returning what a perfectly trained network of a method would return."""

    def __init__(
        self,
        kind: str,
        source: str = "mask",
        probs=PROBS,
        kappa=lambda t: t,
        method=None,
        codebook=CODEBOOK,
    ):
        self.kind = kind
        self.source = source
        self.probs = probs
        self.kappa = kappa
        self.method = method  # the MetricDFM whose path the "dfm-metric" oracle inverts
        self.codebook = codebook.double()  # the latent methods' codebook (E, or standardised)
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        if self.kind == "dfm-metric":
            post = marginal(metric_weights(x, t, self.method, self.probs))
            return post.clamp_min(1e-30).log().float()
        if self.kind == "dfm":
            post = marginal(token_weights(x, t, self.source, self.kappa, self.probs))
            return post.clamp_min(1e-30).log().float()
        post = marginal(latent_weights(x, t, self.probs, self.codebook))
        if self.kind == "purr":
            return post.clamp_min(1e-30).log().float()
        mu = torch.einsum("bkhw,kd->bdhw", post, self.codebook)
        if self.kind == "cfm-endpoint":
            return mu.float()
        return ((mu - x.double()) / (1 - t.double()).view(-1, 1, 1, 1)).float()  # cfm


class MethodOracle:
    """model(x, t, y) returning what a perfectly trained network of ``method`` returns on the
    toy distribution, built from the method's own path likelihood (``path_loglik``) and
    ideal output (``ideal_output``): the oracle of every registered method, so a new method
    is tested because it is registered. :class:`Oracle` above is the independent check of
    these two hooks for the methods it knows (tests/methods/test_methods.py)."""

    def __init__(self, method, probs=PROBS):
        self.method = method
        self.probs = probs
        self.calls = 0

    def posterior(self, x, t) -> torch.Tensor:
        lik = self.method.path_loglik(x, t)  # (B, K, H, W)
        index = CONFIGS[None].expand(x.shape[0], *CONFIGS.shape).to(lik.device)
        per_config = lik.gather(1, index).flatten(2).sum(-1)  # (B, M)
        return marginal(torch.softmax(self.probs.log()[None] + per_config, dim=1))

    def __call__(self, x, t, y=None):
        self.calls += 1
        return self.method.ideal_output(self.posterior(x, t), x, t).float()


def total_variation(indices: torch.Tensor, probs=PROBS) -> float:
    """TV between the empirical distribution of sampled grids and ``probs`` (off-support
    samples count fully against)."""
    n = indices.shape[0]
    eq = (indices[:, None] == CONFIGS[None]).flatten(2).all(-1)  # (N, M)
    counts = eq.double().sum(0) / n
    other = 1.0 - counts.sum().item()
    return 0.5 * ((counts - probs).abs().sum().item() + other)
