"""Gaussian diffusion maths: noise schedules, parameterizations and samplers.

One convention everywhere (see DESIGN.md): timesteps are 1..T, ``abar[0] = 1``,
``y_t = sqrt(abar_t) y_0 + sqrt(1 - abar_t) eps``. Pure tensor code: the denoiser is
any callable ``denoise(y_t, t) -> prediction`` in one of three parameterizations.
"""

import math

import numpy as np
import torch
from tqdm.auto import tqdm

PREDICTION_TYPES = ("epsilon", "v", "sample")
SCHEDULES = ("cosine", "linear")
REVERSE_VARIANCES = ("beta_tilde", "beta", "analytic")
MAX_ABAR_T = 1e-3


def cosine_betas(timesteps, s=0.008):
    """Nichol & Dhariwal cosine schedule, betas capped at 0.999."""
    t = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], 0.999)


def linear_betas(timesteps):
    """Linear 1e-4..2e-2 schedule scaled by 1000/T (noise-complete for any T)."""
    scale = 1000.0 / timesteps
    return np.minimum(np.linspace(1e-4 * scale, 2e-2 * scale, timesteps), 0.999)


class NoiseSchedule:
    """Betas and cumulative products for a T-step schedule (float64 tensors).

    Arrays are indexed by timestep 0..T, with ``abar[0] = 1`` and ``betas[0] = 0``.
    """

    def __init__(self, timesteps=100, kind="cosine"):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if not (isinstance(timesteps, (int, np.integer)) and 10 <= timesteps <= 1000):
            raise ValueError(f"timesteps must be an integer in [10, 1000], got {timesteps!r}")
        betas = cosine_betas(timesteps) if kind == "cosine" else linear_betas(timesteps)
        abar = np.cumprod(1.0 - betas)
        if abar[-1] >= MAX_ABAR_T:
            raise ValueError(f"schedule {kind!r} with T={timesteps} ends at abar_T={abar[-1]:.2e}")
        self.timesteps, self.kind = int(timesteps), kind
        self.betas = torch.tensor(np.concatenate([[0.0], betas]))
        self.alphas = 1.0 - self.betas
        self.abar = torch.tensor(np.concatenate([[1.0], abar]))

    def _at(self, values, t, like):
        """Gather schedule values at timesteps ``t`` (int or tensor), as ``like``'s dtype."""
        out = values.to(like.device)[torch.as_tensor(t, device=like.device)]
        return out.to(like.dtype)

    def q_sample(self, y0, t, eps):
        """Forward noising ``y_t`` for per-element timesteps ``t`` (broadcastable to y0)."""
        ab = self._at(self.abar, t, y0)
        return ab.sqrt() * y0 + (1.0 - ab).sqrt() * eps

    def target(self, y0, eps, t, prediction_type):
        """What a network in ``prediction_type`` should output for (y0, eps, t)."""
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "sample":
            return y0
        ab = self._at(self.abar, t, y0)
        return ab.sqrt() * eps - (1.0 - ab).sqrt() * y0

    def to_y0_eps(self, pred, y_t, t, prediction_type):
        """Convert a prediction at ``y_t`` into the pair (y0_hat, eps_hat). No clipping."""
        ab = self._at(self.abar, t, y_t)
        a, b = ab.sqrt(), (1.0 - ab).sqrt()
        if prediction_type == "epsilon":
            return (y_t - b * pred) / a, pred
        if prediction_type == "v":
            return a * y_t - b * pred, b * y_t + a * pred
        if prediction_type == "sample":
            return pred, (y_t - a * pred) / b
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

    def posterior(self, y0, y_t, t, variance="beta_tilde", s=None, y0_var=None):
        """Mean and variance of the reverse step from y_t to y_s for scalar timesteps
        t > s >= 0 (default s = t - 1): q(y_s | y_t, y_0) at y_0 = ``y0``.

        ``variance``: "beta_tilde" (that of q), "beta" (the upper bound
        1 - abar_t / abar_s) or "analytic": beta_tilde + coef1^2 Var(y_0 | y_t), the
        variance of p(y_s | y_t) when y_0 is Gaussian with variance ``y0_var`` (a tensor
        broadcastable to y_t; Bao et al. 2022, Analytic-DPM, with a per-element data
        variance). With the exact denoiser of that Gaussian, ancestral sampling with
        it returns exactly the Gaussian, whatever the stride."""
        if variance not in REVERSE_VARIANCES:
            raise ValueError(f"variance must be one of {REVERSE_VARIANCES}, got {variance!r}")
        s = t - 1 if s is None else s
        ab, ab_prev = self.abar[t].item(), self.abar[s].item()
        alpha = ab / ab_prev
        beta = 1.0 - alpha
        coef1 = beta * math.sqrt(ab_prev) / (1.0 - ab)
        coef2 = (1.0 - ab_prev) * math.sqrt(alpha) / (1.0 - ab)
        var = beta if variance == "beta" else beta * (1.0 - ab_prev) / (1.0 - ab)
        if variance == "analytic":
            if y0_var is None:
                raise ValueError("variance='analytic' needs y0_var, the variance of y_0")
            var = var + coef1**2 * y0_var * (1.0 - ab) / (ab * y0_var + 1.0 - ab)
        return coef1 * y0 + coef2 * y_t, var


def ddim_timesteps(timesteps, n_steps):
    """Decreasing 'trailing' timesteps starting at T, e.g. T=100, S=4 -> [100, 75, 50, 25]."""
    _check_steps(timesteps, n_steps)
    return np.round(np.arange(timesteps, 0, -timesteps / n_steps)).astype(int).tolist()


DDPM_SPACING = 1.5  # strided DDPM: t_i ~ T (i / S)^1.5, short steps near t = 0


def ddpm_timesteps(timesteps, n_steps):
    """Decreasing timesteps T = t_S > ... > t_1 >= 1 for a strided DDPM chain, at
    T (i / S)^DDPM_SPACING: the steps shorten towards t = 0, where a coarse chain loses
    the fine scale of narrow predictives (DESIGN.md's oracle chain law; see
    tests/test_diffusion.py). Every step T..1 when n_steps == T."""
    _check_steps(timesteps, n_steps)
    t = np.round(timesteps * (np.arange(1, n_steps + 1) / n_steps) ** DDPM_SPACING).astype(int)
    for i in range(n_steps):  # at least one apart, from the bottom up
        t[i] = max(t[i], t[i - 1] + 1 if i else 1)
    return t[::-1].tolist()


def _check_steps(timesteps, n_steps):
    if not 1 <= n_steps <= timesteps:
        raise ValueError(f"n_sampling_steps must be in [1, {timesteps}], got {n_steps}")


def n_noise_draws(schedule, n_steps=None):
    """How many standard-normal tensors a sampler consumes (initial noise included);
    ``n_steps=None`` means all T steps."""
    return 1 + (n_steps or schedule.timesteps)


def draw_noise(n_draws, shape, generator, dtype=torch.float32, device="cpu", antithetic=False):
    """All the noise a sampler needs, shape (n_draws, *shape), from one generator.

    With ``antithetic`` the last axis (the samples) holds pairs e, -e: its second half is
    the negated first half (one extra unpaired draw when odd). Each sample is still an
    exact draw from the sampler, and averaging a pair cancels the part of the sampler's
    output that is linear in its noise: all of it for a Gaussian target."""
    n = shape[-1]
    if not antithetic:
        return torch.randn((n_draws, *shape), generator=generator, dtype=dtype, device=device)
    half = torch.randn((n_draws, *shape[:-1], n - n // 2), generator=generator, dtype=dtype,
                       device=device)
    return torch.cat([half, -half[..., : n // 2]], dim=-1)


@torch.no_grad()
def ddpm_sample(denoise, schedule, noise, prediction_type="v", variance="beta_tilde",
                progress=False, n_steps=None, y0_var=None):
    """Ancestral DDPM over all T steps, or over the ``n_steps`` of :func:`ddpm_timesteps`
    (each step samples the reverse step of its stride, :meth:`NoiseSchedule.posterior`,
    at y0_hat; ``y0_var``: the data variance, for ``variance="analytic"`` and the last step).

    ``noise`` has shape (S + 1, *shape): ``noise[0]`` is y_T, ``noise[i]`` the step noise.
    No noise is added at the last step (q's variance is 0 there) unless ``y0_var`` is
    given: then the last step adds Var(y_0 | y_t) of a Gaussian y_0 of that variance
    (the "analytic" variance at s = 0), whatever ``variance``. Without it a predictive
    narrower than the last step's noise level sqrt(1 - abar_t) collapses towards
    E[y_0 | y_t] (T = 50, cosine: below 0.04 standardized units; docs/sampling.md).
    """
    steps = ddpm_timesteps(schedule.timesteps, n_steps or schedule.timesteps)
    y = noise[0]
    for i, t in enumerate(tqdm(steps, desc="DDPM", disable=not progress), start=1):
        s = steps[i] if i < len(steps) else 0
        y0, _ = schedule.to_y0_eps(denoise(y, t), y, t, prediction_type)
        step = "analytic" if s == 0 and y0_var is not None else variance
        mean, var = schedule.posterior(y0, y, t, step, s, y0_var)
        y = mean + var**0.5 * noise[i] if s > 0 or step == "analytic" else mean
    return y


@torch.no_grad()
def ddim_sample(denoise, schedule, noise, n_steps, eta=0.0, prediction_type="v",
                progress=False):
    """DDIM over ``n_steps`` trailing timesteps; ``noise`` has shape (n_steps + 1, *shape)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    steps = ddim_timesteps(schedule.timesteps, n_steps)
    y = noise[0]
    for i, t in enumerate(tqdm(steps, desc="DDIM", disable=not progress), start=1):
        t_prev = steps[i] if i < len(steps) else 0
        ab, ab_prev = schedule.abar[t].item(), schedule.abar[t_prev].item()
        y0, eps = schedule.to_y0_eps(denoise(y, t), y, t, prediction_type)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        y = math.sqrt(ab_prev) * y0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            y = y + sigma * noise[i]
    return y


def sample(denoise, schedule, noise, sampler="ddim", n_steps=25, eta=0.0,
           prediction_type="v", variance="beta_tilde", progress=False, y0_var=None):
    """Dispatch to :func:`ddpm_sample` or :func:`ddim_sample` (which has no variance
    choice)."""
    if sampler == "ddpm":
        return ddpm_sample(denoise, schedule, noise, prediction_type, variance, progress,
                           n_steps, y0_var)
    if sampler == "ddim":
        return ddim_sample(denoise, schedule, noise, n_steps, eta, prediction_type, progress)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
