"""The diffusion process of the motion generator: DDPM training with x0-prediction, DDIM sampling (η = 0).

    sched = Schedule.linear(1000, 1e-4, 0.02)
    x_t = sched.q_sample(x0, t, noise)                   # forward process at integer steps t [B]
    x_prev = sched.ddim_step(x_t, x0_hat, t, t_prev)     # one deterministic DDIM step from t to t_prev (-1: the end)
    ts = sched.ddim_timesteps(10)                        # the steps a 10-step sampler visits, descending

The network predicts x0 (DreamTalk's choice): with x0 in hand the sampler needs no ε-prediction, and guidance mixes
the conditional and unconditional x0.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class Schedule:
    alphas_cumprod: np.ndarray  # ᾱ_t for t = 0 .. T-1, float64

    @classmethod
    def linear(cls, steps: int, beta_start: float, beta_end: float) -> Schedule:
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
        return cls(np.cumprod(1.0 - betas))

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    def _abar(self, t: Int[Array, "B"]) -> Float[Array, "B"]:
        table = jnp.asarray(np.concatenate([self.alphas_cumprod, [1.0]]), jnp.float32)
        return table[jnp.where(t < 0, self.steps, t)]  # t = -1: ᾱ = 1 (clean)

    def q_sample(self, x0: Float[Array, "B T D"], t: Int[Array, "B"], noise: Float[Array, "B T D"]
                 ) -> Float[Array, "B T D"]:
        a = self._abar(t)[:, None, None]
        return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise

    def ddim_step(self, x_t: Float[Array, "B T D"], x0: Float[Array, "B T D"], t: Int[Array, "B"],
                  t_prev: Int[Array, "B"]) -> Float[Array, "B T D"]:
        a, a_prev = self._abar(t)[:, None, None], self._abar(t_prev)[:, None, None]
        eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(jnp.maximum(1.0 - a, 1e-12))
        return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps

    def ddim_timesteps(self, n: int) -> np.ndarray:
        """n steps evenly spaced over [0, T), descending, ending at 0."""
        return np.round(np.linspace(self.steps - 1, 0, n)).astype(np.int32)


__all__ = ["Schedule"]
