"""Continuous flow matching on codebook latents (Lipman et al. 2023; Liu et al. 2023).

velocity parameterisation (``cfm``):
    L = E ‖v_θ(z_t, t) − (z1 − z0)‖²,      dz/dt = v_θ(z_t, t)
endpoint parameterisation (``cfm-endpoint``):
    L = E ‖μ_θ(z_t, t) − z1‖²,             dz/dt = (μ_θ(z_t, t) − z_t)/(1 − t)
CFG acts on the model output (velocity or endpoint).
"""

from __future__ import annotations

from .base import LossOutput, guided_forward
from .latent_flow import LatentFlowMethod


class CFM(LatentFlowMethod):
    name = "cfm"

    @property
    def out_channels(self) -> int:
        return self.code_dim

    def loss(self, model, indices, y=None, generator=None) -> LossOutput:
        z_t, z0, z1, t = self.noisy_latents(indices, generator)
        v = model(z_t, t, y).float()
        mse = (v - (z1 - z0)).pow(2).mean()
        return LossOutput(mse, {"loss": mse.detach(), "mse": mse.detach()})

    def velocity(self, model, z, t, y, temperature=1.0, cfg_scale=1.0, need_posterior=False):
        v, mult = guided_forward(model, z, t, y, cfg_scale)
        return v.float(), None, mult

    def ideal_output(self, posterior, z_t, t):
        """The marginal velocity E[z1 − z0 | z_t] = (E[z1 | z_t] − z_t)/(1 − t)."""
        one_minus_t = (1 - t.double()).view(-1, 1, 1, 1)
        return (self.posterior_mean(posterior) - z_t.double()) / one_minus_t


class CFMEndpoint(LatentFlowMethod):
    name = "cfm-endpoint"

    @property
    def out_channels(self) -> int:
        return self.code_dim

    def loss(self, model, indices, y=None, generator=None) -> LossOutput:
        z_t, _, z1, t = self.noisy_latents(indices, generator)
        mse = (model(z_t, t, y).float() - z1).pow(2).mean()
        return LossOutput(mse, {"loss": mse.detach(), "mse": mse.detach()})

    def velocity(self, model, z, t, y, temperature=1.0, cfg_scale=1.0, need_posterior=False):
        mu, mult = guided_forward(model, z, t, y, cfg_scale)
        return (mu.float() - z) / self.one_minus_t(t), None, mult

    def ideal_output(self, posterior, z_t, t):
        """The endpoint E[z1 | z_t]."""
        return self.posterior_mean(posterior)
