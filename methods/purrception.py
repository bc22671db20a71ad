"""Purrception: variational flow matching with a categorical posterior over the codebook
(arXiv 2510.01478).

The model predicts logits ℓ_θ(z_t, t) ∈ R^{K} per latent position.
    training:  L = CE(ℓ_θ, c) + λ · mean(logsumexp_k ℓ_θ)²          (z-loss; λ: z_loss_weight)
    sampling:  π = softmax(ℓ/τ),  μ_t = Σ_k π_k e_k = π·E,  v = (μ_t − z_t)/(1 − t)
τ trades fidelity (τ<1) for diversity (τ>1); τ=0 uses the argmax code. CFG acts on ℓ
before τ. With a DiT, loss and μ_t come from the head's hidden states a chunk at a time,
never materialising (B, K, H, W) logits (``methods/head.py``; ``head="full"`` is the
reference path).
"""

from __future__ import annotations

import torch

from .base import LossOutput, categorical, guided_forward
from .head import CategoricalHead
from .latent_flow import LatentFlowMethod


def velocity_from_posterior(posterior, codebook, z_t, one_minus_t):
    """v = (π·E − z_t)/(1 − t): posterior (B,K,H,W), codebook (K,d), z_t (B,d,H,W), and
    ``one_minus_t`` = 1 − t broadcastable to z_t (guarded away from 0 by the caller)."""
    b, k, h, w = posterior.shape  # μ = Eᵀπ per image: one (d×K)·(K×HW) product, no permutes
    mu = torch.matmul(codebook.t().to(posterior.dtype), posterior.reshape(b, k, h * w))
    mu = mu.view(b, -1, h, w)
    return (mu - z_t) / one_minus_t


class Purrception(CategoricalHead, LatentFlowMethod):
    name = "purr"

    def __init__(self, codebook, options=None):
        super().__init__(codebook, options)
        self.init_head(self.options)

    @property
    def out_channels(self) -> int:
        return self.num_codes

    def loss(self, model, indices, y=None, generator=None) -> LossOutput:
        z_t, _, _, t = self.noisy_latents(indices, generator)
        return self.categorical_loss_of(model, z_t, t, y, indices)

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0, cfg_scale=1.0):
        logits, _ = guided_forward(model, x_t, t, y, cfg_scale)
        return categorical(logits, temperature)

    def velocity(self, model, z, t, y, temperature=1.0, cfg_scale=1.0, need_posterior=False):
        head = None if need_posterior else self.head_for(model)
        if head is not None:
            hidden, mult = guided_forward(model, z, t, y, cfg_scale, features=True)
            mu = head.posterior_mean(hidden, self.codebook, temperature).to(z.dtype)
            return (mu - z) / self.one_minus_t(t), None, mult
        logits, mult = guided_forward(model, z, t, y, cfg_scale)
        post = categorical(logits, temperature)
        return velocity_from_posterior(post, self.codebook, z, self.one_minus_t(t)), post, mult
