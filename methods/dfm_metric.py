"""Discrete flow matching on a metric-induced path over the codebook (Shaul et al. 2024,
"Flow Matching with General Discrete Paths: A Kinetic-Optimal Perspective").

Each position moves on the K codes with the path
    p_t(x | x1) = softmax_x(−β_t · d(x, x1)),     β_t = c · (t/(1−t))^a,
so β_0 = 0 is the uniform source and β_1 = ∞ the data. d is the distance between codebook
vectors (``distance="l2"``: ‖e_x − e_y‖, or ``"sqeuclidean"``), divided by its mean over
distinct pairs so that c means the same on every codebook. Unlike the mixture path, a
corrupted position holds a code *near* its data code: the method knows the codebook's
geometry, as Purrception does. Default c = 10, a = 1: on the shipped Fashion codebook a
position holds its data code with probability 0.08 / 0.35 / 0.83 at t = 0.3 / 0.5 / 0.7
(the mixture path's κ(t) = t holds it with probability t).

    training:  x_t ~ p_t(· | c) per position;  L = CE(ℓ_θ(x_t, t), c) (+ λ·z-loss)
    kinetic-optimal conditional rates (from state z to x ≠ z):
        u_t(x, z | x1) = β̇_t · p_t(x | x1) · [d(z, x1) − d(x, x1)]_+
    (they satisfy the Kolmogorov equation of p_t(·|x1): tests/methods/test_dfm_variants.py)
    sampling (Euler): draw x1 ~ p_θ(· | z, t) = softmax(ℓ/τ) (CFG on ℓ), then jump with
        probability 1 − exp(−h·Λ), Λ = Σ_x u_t(x, z | x1), to x ∝ u_t(x, z | x1); the last
        step takes x1 (β_1 = ∞). Drawing x1 and applying the conditional rates has, in
        expectation, the marginal rates Σ_x1 p_θ(x1|z) u_t(x, z | x1).

One model call per step. Distances are computed once for K ≤ 4096 (a K×K table) and per
row otherwise (K=16384 would need 1 GiB); corruption and jump targets are drawn a chunk of
positions at a time.
"""

from __future__ import annotations

import torch

from . import noise
from .base import Method, inverse_cdf
from .head import CategoricalHead
from .sampling import DrawAndMove

TABLE_MAX_CODES = 4096


class MetricDFM(CategoricalHead, DrawAndMove, Method):
    name = "dfm-metric"
    input_kind = "tokens"

    def __init__(self, codebook, options=None):
        super().__init__(codebook, options)
        self.init_head(self.options)
        self.beta_scale = self.options.beta_scale
        self.beta_power = self.options.beta_power
        self.distance = self.options.distance
        self.register_buffer("norms", self.codebook.pow(2).sum(1), persistent=False)
        k = self.num_codes
        if k <= TABLE_MAX_CODES:  # the whole table once; its mean is the normaliser
            raw = self._raw_rows(torch.arange(k))
            self.scale = float(raw.double().sum()) / (k * (k - 1))
            table = raw / self.scale
        else:
            self.scale = self._mean_distance()
            table = None
        self.register_buffer("table", table, persistent=False)

    # ------------------------------------------------------------------ the path
    @property
    def vocab_size(self) -> int:
        return self.num_codes

    @property
    def out_channels(self) -> int:
        return self.num_codes

    def _raw_rows(self, x1: torch.Tensor) -> torch.Tensor:
        """Unnormalised d(·, x1) → (N, K)."""
        e = self.codebook[x1]
        sq = (self.norms[x1, None] + self.norms[None] - 2 * e @ self.codebook.t()).clamp_min(0)
        sq[torch.arange(len(x1)), x1] = 0  # exactly zero on the diagonal
        return sq.sqrt() if self.distance == "l2" else sq

    def _mean_distance(self, rows: int = 1024) -> float:
        k = self.num_codes
        total = 0.0
        for s in range(0, k, rows):
            total += float(self._raw_rows(torch.arange(s, min(s + rows, k))).double().sum())
        return total / (k * (k - 1))

    def distances(self, x1: torch.Tensor) -> torch.Tensor:
        """d(·, x1) for codes x1 (N,) → (N, K), normalised to mean 1 over distinct pairs."""
        x1 = x1.to(self.codebook.device)
        return self.table[x1] if self.table is not None else self._raw_rows(x1) / self.scale

    def beta(self, t):
        return self.beta_scale * (t / (1 - t)) ** self.beta_power

    def beta_dot(self, t):
        a = self.beta_power
        return self.beta_scale * a * (t / (1 - t)) ** (a - 1) / (1 - t) ** 2

    def path_logprobs(self, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_t(· | x1) for codes x1 (N,) at times t (N,) → (N, K)."""
        beta = self.beta(t.to(self.codebook.dtype)).view(-1, 1)
        return torch.log_softmax(-beta * self.distances(x1), dim=-1)

    def path_loglik(self, x_t, t):
        """log p_t(x | c) = log softmax_x(−β_t·d(x, c)) per position and code c."""
        b, k = x_t.shape[0], self.num_codes
        codes = torch.arange(k, device=x_t.device).repeat(b)
        logp = self.path_logprobs(codes, t.reshape(-1).repeat_interleave(k)).double()
        index = x_t.reshape(b, 1, -1).expand(b, k, -1)  # (B, c, H·W): log p_t(x_t | c)
        return logp.view(b, k, k).gather(2, index).view(b, k, *x_t.shape[1:])

    def rates(self, z: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Conditional rates u_t(x, z | x1) → (N, K) for states z, targets x1, times t (N,).
        The entry x = z is 0 (no distance gain)."""
        d = self.distances(x1)
        gain = (d.gather(1, z.view(-1, 1)) - d).clamp_min(0)
        tt = t.to(d.dtype).view(-1, 1)
        p = torch.softmax(-self.beta(tt) * d, dim=-1)
        return self.beta_dot(tt) * p * gain

    def _rows(self) -> int:
        """Positions per chunk: at most ``head_chunk`` K-wide rows' entries alive at once."""
        return max(1, self.head_chunk // self.num_codes)

    def corrupt(self, indices: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ p_t(· | c) per position, for data codes (B,H,W) and times t (B,)."""
        c = indices.long().reshape(-1)
        tt = t.view(-1, 1).expand(-1, indices[0].numel()).reshape(-1)
        u = torch.rand(c.shape[0], 1, device=c.device, generator=generator)
        out = torch.empty_like(c)
        rows = self._rows()
        for s in range(0, c.shape[0], rows):
            sl = slice(s, s + rows)
            out[sl] = inverse_cdf(self.path_logprobs(c[sl], tt[sl]).exp(), u[sl])
        return out.view(indices.shape)

    # ------------------------------------------------------------------ training, sampling
    def loss(self, model, indices, y=None, generator=None):
        t = self.time_sampler(indices.shape[0], indices.device, generator)
        x_t = self.corrupt(indices, t, generator)
        return self.categorical_loss_of(model, x_t, t, y, indices)

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0, cfg_scale=1.0):
        _, _, post, _ = self.draw(model, x_t, t, y, temperature, cfg_scale, None, True)
        return post

    def jump(self, z: torch.Tensor, x1: torch.Tensor, t: float, h: float, generator=None):
        """One Euler step of the conditional process from t to t + h: states z and drawn
        targets x1 (same shape) → the new states."""
        flat_z, flat_x1 = z.reshape(-1), x1.reshape(-1)
        n = flat_z.shape[0]
        u = noise.rand((*z.shape, 2), z.device, generator).view(n, 2)  # (B, H, W) order
        out = flat_z.clone()
        rows = self._rows()
        tt = torch.full((n,), t, dtype=torch.float64, device=z.device)
        for s in range(0, n, rows):
            sl = slice(s, s + rows)
            lam = self.rates(flat_z[sl], flat_x1[sl], tt[sl])
            total = lam.sum(1)
            go = u[sl, 0].to(total.dtype) < -torch.expm1(-h * total)
            target = inverse_cdf(lam.clamp_min(0) + (total == 0).unsqueeze(1), u[sl, 1:])
            out[sl] = torch.where(go, target, flat_z[sl])
        return out.view(z.shape)

    def start(self, shape, generator=None):
        """Uniform codes (β_0 = 0)."""
        return noise.randint(self.num_codes, shape, self.codebook.device, generator)

    def move(self, z, x1, t: float, t_next: float, generator=None):
        """One Euler step of the conditional process of the drawn codes x1; at t = 1 the
        state is x1 (β_1 = ∞)."""
        return x1 if t_next >= 1.0 else self.jump(z, x1, t, t_next - t, generator)
