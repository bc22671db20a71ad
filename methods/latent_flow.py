"""Shared machinery of the continuous methods (CFM, CFM-endpoint, Purrception).

Interpolant (t=0 noise, t=1 data):  z_t = t·z1 + (1−t)·z0,  z0 ~ N(0, I),  z1 = E[c].
Sampling integrates dz/dt = v(z_t, t) from t=0 to t=1 on the uniform grid
t_i = i/steps (i = 0..steps), i.e. exactly ``steps`` steps, with

- euler:    z ← z + h·v(z, t)                                  (NFE = steps)
- heun:     z' = z + h·v(z, t);  z ← z + h/2·(v(z,t) + v(z', t+h))  (NFE = 2·steps − 1)
- midpoint: z ← z + h·v(z + h/2·v(z,t), t + h/2)               (NFE = 2·steps)
- dopri5:   adaptive Dormand–Prince 5(4) (torchdiffeq, the ODE library of the official
            Purrception code) on [0, 1 − ADAPTIVE_TAIL] with rtol = atol = ``tolerance``,
            then one Euler step to t = 1; NFE is counted from the actual model calls
            (``steps`` is ignored). Its step size is controlled on the whole batch's state,
            so NFE and images depend on the batch, unlike the fixed-grid solvers. Not an
            ``eval.solver`` choice: ``analysis/nfe_sweep.py`` sweeps it.

``latent_scale="unit"`` runs the flow on the standardised codebook E' = (E − mean)/std (one
scalar std over all entries, after centring each dimension), so that data latents have the
scale of the N(0, I) noise (the shipped Fashion codebook's std is ≈0.4). The map is affine
with one scale, so nearest codes, posterior means and indices are unchanged in meaning;
only the signal-to-noise ratio along the path changes. Off by default.

Velocities of the form (μ − z)/(1−t) are singular at t=1, so no method is ever evaluated
there: Heun's correction is skipped on the final step (as in EDM), which makes the last
step of an endpoint/posterior method land exactly on its predicted endpoint μ. The final
state is snapped to the nearest code.
"""

from __future__ import annotations

import torch

from . import noise
from .base import Method, SampleOutput, check_steps, nearest_code
from .sampling import Calls, fixed_grid

ADAPTIVE_TAIL = 1e-3  # dopri5 stops at t = 1 − this; a last Euler step (one NFE) reaches t = 1


def standardise(codebook: torch.Tensor) -> torch.Tensor:
    """(E − mean over codes) / std over all entries of the centred codebook."""
    centred = codebook - codebook.mean(0, keepdim=True)
    return centred / centred.pow(2).mean().sqrt()


class LatentFlowMethod(Method):
    input_kind = "latent"
    snap_chunk = 1 << 24  # distances alive at once when snapping to the nearest code

    def prepare_codebook(self, codebook):
        return standardise(codebook) if self.options.latent_scale == "unit" else codebook

    @property
    def latent_scale(self) -> str:
        return self.options.latent_scale

    @staticmethod
    def interpolate(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (z1.ndim - 1)))
        return t * z1 + (1 - t) * z0

    def velocity(self, model, z, t, y, temperature=1.0, cfg_scale=1.0, need_posterior=False):
        """→ (velocity (B,d,H,W), posterior (B,K,H,W) or None, batch multiplier); the
        posterior may be None unless ``need_posterior``."""
        raise NotImplementedError

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0):
        return None

    def path_loglik(self, z_t, t):
        """log N(z_t; t·e_k, (1 − t)² I) per position and code k, less its constant."""
        e = self.codebook.double()
        tt = t.double().view(-1, 1, 1, 1, 1)
        diff = z_t.double()[:, None] - tt * e[None, :, :, None, None]  # (B, K, d, H, W)
        return -diff.pow(2).sum(2) / (2 * (1 - tt[:, :, 0]) ** 2)

    def posterior_mean(self, posterior):
        """Σ_k π_k e_k per position: (B, K, H, W) → (B, d, H, W), in the posterior's dtype."""
        return torch.einsum("bkhw,kd->bdhw", posterior, self.codebook.to(posterior.dtype))

    def noisy_latents(self, indices, generator=None):
        """(z_t, z0, z1, t) for a training batch of indices."""
        z1 = self.lookup(indices)
        z0 = torch.randn(z1.shape, device=z1.device, generator=generator, dtype=z1.dtype)
        t = self.time_sampler(z1.shape[0], z1.device, generator)
        return self.interpolate(z0, z1, t), z0, z1, t

    @torch.no_grad()
    def sample(
        self,
        model,
        num_samples,
        grid,
        steps,
        y=None,
        solver="euler",
        temperature=1.0,
        cfg_scale=1.0,
        generator=None,
        trace=False,
        tolerance=1e-3,
    ) -> SampleOutput:
        check_steps(steps)
        self.check_temperature(temperature)
        if solver not in self.solvers + self.adaptive_solvers:
            known = self.solvers + self.adaptive_solvers
            raise ValueError(f"unknown solver {solver!r}; choose one of {known}")
        dev = self.codebook.device
        shape = (num_samples, self.code_dim, *grid)
        z = noise.randn(shape, dev, generator, dtype=self.codebook.dtype)
        calls = Calls()

        def v_at(z, t):
            tt = torch.full((num_samples,), t, device=dev, dtype=torch.float32)
            v, post, mult = self.velocity(model, z, tt, y, temperature, cfg_scale, trace)
            calls.add(mult)
            return v, post

        def snap(z):
            return nearest_code(z, self.codebook, self.snap_chunk)

        if solver in self.adaptive_solvers:
            if trace:
                raise ValueError(
                    f"trace=True needs a fixed-grid solver ({self.solvers}), not {solver}"
                )
            z = self.integrate_adaptive(lambda t, z: v_at(z, t)[0], z, solver, tolerance)
            return SampleOutput(snap(z), calls.nfe, calls.rows, None)

        def step(i, t, t_next, z, calls):
            h = t_next - t
            v, post = v_at(z, t)
            if solver == "euler" or (solver == "heun" and i == steps - 1):
                return z + h * v, post, None
            if solver == "heun":
                v2, _ = v_at(z + h * v, t_next)
                return z + 0.5 * h * (v + v2), post, None
            v2, _ = v_at(z + 0.5 * h * v, t + 0.5 * h)  # midpoint
            return z + h * v2, post, None

        return fixed_grid(z, steps, step, trace, finish=snap, calls=calls)

    @staticmethod
    def integrate_adaptive(v, z, solver: str, tolerance: float) -> torch.Tensor:
        """z(1) from z(0) under dz/dt = v(t, z) (t a Python float): torchdiffeq's ``solver``
        on [0, 1 − ADAPTIVE_TAIL], landing exactly there (``step_t``: no stage is evaluated
        past it, since a velocity (μ − z)/(1 − t) is singular at t = 1), then one Euler step."""
        if not (isinstance(tolerance, float | int) and 0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
        try:
            from torchdiffeq import odeint
        except ImportError:  # pragma: no cover - a pinned dependency
            raise ImportError("solver=dopri5 needs torchdiffeq: pip install torchdiffeq") from None
        end = 1.0 - ADAPTIVE_TAIL
        span = torch.tensor([0.0, end], dtype=torch.float64, device=z.device)
        path = odeint(
            lambda t, y: v(float(t), y),
            z,
            span,
            rtol=tolerance,
            atol=tolerance,
            method=solver,
            options={"step_t": span[1:]},
        )
        z = path[-1]
        return z + ADAPTIVE_TAIL * v(end, z)

    def one_minus_t(self, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """(1 − t) as (B,1,1,1), floored at eps: a guard, never active on the sampling grid."""
        return (1 - t).clamp_min(eps).view(-1, 1, 1, 1)
