"""The mixture path of discrete flow matching (Gat et al. 2024; Campbell et al. 2024) as an
object: its scheduler, its corruption, its likelihood, the posterior it makes exact, and one
Euler step of its conditional process. ``methods/dfm.py`` trains on it; the samplers move on
it without calling back into the method.

    x_t = c with probability κ(t) = t^a, else a source token x_0
        source "mask":    x_0 = K (the mask id; the vocabulary is K + 1)
        source "uniform": x_0 ~ U{0..K−1}
"""

from __future__ import annotations

import torch

from . import noise


class MixturePath:
    def __init__(self, num_codes: int, source: str, kappa_power: float):
        self.num_codes = num_codes
        self.source = source
        self.kappa_power = kappa_power

    @property
    def mask_id(self) -> int | None:
        return self.num_codes if self.source == "mask" else None

    @property
    def vocab_size(self) -> int:
        return self.num_codes + (1 if self.source == "mask" else 0)

    def kappa(self, t):
        """Scheduler κ(t) = t^a: probability that a position already holds its data token."""
        return t**self.kappa_power

    def kappa_dot(self, t):
        return self.kappa_power * t ** (self.kappa_power - 1)

    def kappa_inverse(self, k):
        return k ** (1.0 / self.kappa_power)

    def source_tokens(self, shape, device, generator=None) -> torch.Tensor:
        if self.source == "mask":
            return torch.full(shape, self.num_codes, dtype=torch.long, device=device)
        return noise.randint(self.num_codes, shape, device, generator)

    def corrupt(self, indices, t, generator=None) -> torch.Tensor:
        """Draw x_t given data indices (B,H,W) and t (B,)."""
        c = indices.long()
        keep_p = self.kappa(t.float()).view(-1, 1, 1)
        keep = torch.rand(c.shape, device=c.device, generator=generator) < keep_p
        return torch.where(keep, c, self.source_tokens(c.shape, c.device, generator))

    def path_loglik(self, x_t, t):
        """log p_t(x | c) = log(κ·1[x = c] + (1 − κ)·source(x)) per position and code c."""
        k = self.kappa(t.double()).view(-1, 1, 1, 1)
        point = torch.nn.functional.one_hot(x_t.clamp_max(self.num_codes - 1), self.num_codes)
        point = point.permute(0, 3, 1, 2).double()
        if self.source == "mask":
            masked = (x_t == self.mask_id)[:, None].double()
            point, source = point * (1 - masked), masked
        else:
            source = torch.full_like(point, 1.0 / self.num_codes)
        return (k * point + (1 - k) * source).clamp_min(1e-300).log()

    def carry_over(self, post: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Posterior (B,K,H,W) with the point mass δ_{x} at the unmasked positions of x, where
        the masked path leaves no doubt (the uniform source's posterior is returned as it is)."""
        if self.source != "mask":
            return post
        decoded = x != self.mask_id
        point = torch.nn.functional.one_hot(x.clamp_max(self.num_codes - 1), self.num_codes)
        point = point.permute(0, 3, 1, 2).to(post.dtype)
        return torch.where(decoded[:, None], point, post)

    def step(self, x, c, t: float, t_next: float, generator=None, carry_over: bool = True):
        """Discrete Euler from t to t_next given drawn codes c: a position jumps to c with
        probability (κ(t_next) − κ(t))/(1 − κ(t)) [= h·κ̇/(1 − κ) for κ(t) = t], with
        probability 1 on the last step. With ``carry_over`` (masked source) only masked
        positions may jump: an unmasked one holds its data code for sure (its posterior is a
        point mass, and the exact rate is zero)."""
        kappa_t, kappa_next = self.kappa(t), self.kappa(t_next)
        jump_p = 1.0 if t_next >= 1.0 else (kappa_next - kappa_t) / (1.0 - kappa_t)
        if jump_p >= 1.0:
            jump = torch.ones(x.shape, dtype=torch.bool, device=x.device)
        else:  # the same uniforms whichever positions may jump
            jump = noise.rand(x.shape, x.device, generator) < jump_p
        if carry_over:
            jump &= x == self.mask_id
        return torch.where(jump, c, x)
