"""Discrete flow matching on GIDD's masked–uniform hybrid path (von Rütte et al. 2025,
"Generalized Interpolating Discrete Diffusion", arXiv 2503.04482), in this project's time
(t = 0 noise, t = 1 data; GIDD's t is 1 − t here).

Per position, with data code c among K codes and the mask token m = K:

    a_t = t^γ,   m_t = (1 − t)^γ,   u_t = B·(t(1 − t))^(γ/2),   C_t = a_t + m_t + (K − 1)·u_t
    p_t(c | c) = a_t / C_t,   p_t(m | c) = m_t / C_t,   p_t(k | c) = u_t / C_t  for each k ≠ c
    B = 1 / (1 + (1 − p_u)/p_u · N/2),  N = K + 1 tokens:  GIDD's B for its p_u, verbatim
        (their code's log_B); at t = 1/2 a share p_u·(K − 1)/(K + 1) of all positions hold
        a uniform code, for every γ (p_u = 0: B = 0, no uniform noise)

so the path starts all masked, ends on the data, and passes through uniform noise that peaks
mid-way. A position holding a code may still be noise, so unlike the masked path no token
is final before t = 1.

    training:  x_t ~ p_t(· | c) per position;  L = CE(ℓ_θ(x_t, t), c) (+ λ·z-loss), as the
               project's dfm trains (GIDD's ELBO weighting is not used)
    sampling (Euler, one model call per step, t → t + h): draw c ~ p_θ(· | x_t, t) =
        softmax(ℓ/τ) (CFG on ℓ) per position, then move each position by the conditional
        process of c that carries p_t(· | c) exactly to p_{t+h}(· | c). With ΔP the change of
        each probability over the step (P_c grows and P_m shrinks on the whole path; P_u, the
        probability of each other code, rises then falls):
          - ΔP_u ≥ 0: a masked position goes to each k ≠ c with probability ΔP_u / P_m and to
            c with probability ΔP_c / P_m; codes stay.
          - ΔP_u < 0: a masked position goes to c with probability −ΔP_m / P_m, and a code
            k ≠ c goes to c with probability −ΔP_u / P_u.
        In the limit h → 0 these are the rates mask → c, mask → k, k → c of a process whose
        Kolmogorov equation is d/dt p_t(· | c) (tests/methods/test_gidd.py); drawing c and
        applying them has, in expectation, the marginal rates. The last step takes c.
"""

from __future__ import annotations

import torch

from . import noise
from .base import Method
from .head import CategoricalHead
from .sampling import DrawAndMove


class GIDD(CategoricalHead, DrawAndMove, Method):
    name = "gidd"
    input_kind = "tokens"

    def __init__(self, codebook, options=None):
        super().__init__(codebook, options)
        self.init_head(self.options)
        p_u, tokens = self.options.p_uniform, self.num_codes + 1
        self.gamma = self.options.gamma
        self.b = 1.0 / (1.0 + (1.0 - p_u) / p_u * tokens / 2) if p_u > 0 else 0.0

    @property
    def mask_id(self) -> int:
        return self.num_codes

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 1

    @property
    def out_channels(self) -> int:
        return self.num_codes

    def probabilities(self, t):
        """(P_c, P_m, P_u) at times t (any shape, float64): the data code, the mask, and
        each one of the K − 1 other codes."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, m = t**self.gamma, (1 - t) ** self.gamma
        u = self.b * (t * (1 - t)) ** (self.gamma / 2)
        total = a + m + (self.num_codes - 1) * u
        return a / total, m / total, u / total

    def path_loglik(self, x_t, t):
        p_c, p_m, p_u = (p.to(x_t.device).view(-1, 1, 1, 1) for p in self.probabilities(t))
        k = torch.arange(self.num_codes, device=x_t.device).view(1, -1, 1, 1)
        x = x_t[:, None]
        lik = torch.where(x == self.mask_id, p_m, torch.where(x == k, p_c, p_u))
        return lik.expand(-1, self.num_codes, -1, -1).clamp_min(1e-300).log()

    def corrupt(self, indices, t, generator=None):
        """x_t ~ p_t(· | c) per position, for data codes (B,H,W) and times t (B,)."""
        c = indices.long()
        p_c, p_m, _ = (p.to(c.device).view(-1, 1, 1).float() for p in self.probabilities(t))
        u = torch.rand(c.shape, device=c.device, generator=generator)
        # uniform over the K − 1 codes ≠ c (K = 1 has none, and P_u = 0: never taken)
        others = max(self.num_codes - 1, 1)
        other = torch.randint(0, others, c.shape, device=c.device, generator=generator)
        other = (other + (other >= c)).clamp_max(self.num_codes - 1)
        return torch.where(
            u < p_c, c, torch.where(u < p_c + p_m, torch.full_like(c, self.mask_id), other)
        )

    def loss(self, model, indices, y=None, generator=None):
        t = self.time_sampler(indices.shape[0], indices.device, generator)
        x_t = self.corrupt(indices, t, generator)
        return self.categorical_loss_of(model, x_t, t, y, indices)

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0, cfg_scale=1.0):
        _, _, post, _ = self.draw(model, x_t, t, y, temperature, cfg_scale, None, True)
        return post

    def step(self, z, c, t: float, t_next: float, generator=None):
        """One step of the conditional process of the drawn codes c from t to t_next."""
        (_, pm0, pu0), (_, pm1, pu1) = self.probabilities(t), self.probabilities(t_next)
        d_u, d_m = float(pu1 - pu0), float(pm1 - pm0)
        pm0, pu0 = float(pm0), float(pu0)
        r = noise.rand((*z.shape, 2), z.device, generator)
        masked, settled = z == self.mask_id, z == c
        others = max(self.num_codes - 1, 1)
        other = torch.floor(r[..., 1] * others).long().clamp_max(others - 1)
        other = (other + (other >= c)).clamp_max(self.num_codes - 1)
        # the mask's outflow −ΔP_m / P_m (P_m = 0: nothing is masked any more); the data
        # code's share of it taken as the rest, not as ΔP_c / P_m, which cancels near P_c = 1
        leave = min(max(-d_m / pm0, 0.0), 1.0) if pm0 > 0 else 0.0
        if d_u >= 0:  # masks feed the rising uniform mass and the data code; codes stay
            to_other = min((self.num_codes - 1) * d_u / pm0, leave) if pm0 > 0 else 0.0
            to_c = leave - to_other
            unmask = torch.where(r[..., 0] < to_c, c, other)
            moves = masked & (r[..., 0] < leave)
            return torch.where(moves, unmask, z)
        to_c_masked, to_c_code = leave, min(-d_u / pu0, 1.0)
        p = torch.where(masked, to_c_masked, to_c_code)
        return torch.where(~settled & (r[..., 0] < p), c, z)

    def start(self, shape, generator=None):
        """All masked."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=self.codebook.device)

    def move(self, z, c, t: float, t_next: float, generator=None):
        """The conditional step of the drawn codes c; at t = 1 the state is c."""
        return c if t_next >= 1.0 else self.step(z, c, t, t_next, generator)
