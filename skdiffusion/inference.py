"""Reverse-chain sampling for in-context prediction on standardized tasks.

All targets of a prediction are laid out as [k context tokens | chunk of targets] per
sequence; since targets attend only to the context and themselves, chunking changes
nothing but memory use.
"""

import torch

from .denoiser import pad_features
from .diffusion import draw_noise, n_noise_draws, sample
from .priors import context_stats


def make_denoise_fn(model, x_ctx, y_ctx, x_q, chunk_size=2048):
    """Closure ``denoise(y_t, t)`` for y_t of shape (n_queries, n_samples)."""
    k, m = x_ctx.shape[0], x_q.shape[0]

    def denoise(y_t, t):
        flat_y = y_t.reshape(-1)
        n_samples = y_t.shape[1]
        flat_x = x_q.repeat_interleave(n_samples, dim=0)
        out = []
        for start in range(0, flat_y.shape[0], chunk_size):
            yq, xq = flat_y[start:start + chunk_size], flat_x[start:start + chunk_size]
            c = yq.shape[0]
            x = torch.cat([x_ctx, xq])[None]
            y = torch.cat([y_ctx, yq])[None]
            is_ctx = (torch.arange(k + c, device=x.device) < k)[None]
            ts = torch.full((1, k + c), t, dtype=torch.long, device=x.device)
            out.append(model(x, y, is_ctx, ts)[0, k:])
        return torch.cat(out).reshape(m, n_samples)

    return denoise


@torch.no_grad()
def sample_standardized(model, schedule, x_ctx, y_ctx, x_q, noise, sampler="ddpm",
                        n_steps=None, eta=0.0, prediction_type="v", variance="beta",
                        chunk_size=2048, progress=False):
    """Samples (n_queries, n_samples) of standardized y at standardized ``x_q``.

    ``noise`` has shape (n_draws, n_queries, n_samples); see :func:`noise_shape`.
    """
    x_ctx, x_q = pad_features(x_ctx, model.max_features), pad_features(x_q, model.max_features)
    denoise = make_denoise_fn(model, x_ctx, y_ctx, x_q, chunk_size)
    return sample(denoise, schedule, noise, sampler, n_steps, eta, prediction_type, variance,
                  progress)


@torch.no_grad()
def sample_task(model, schedule, X_ctx, y_ctx, X_q, n_samples, generator, **sampler_kw):
    """Samples of y at ``X_q`` in original units for one raw task (torch tensors).

    Standardizes with the context's own statistics (as training did), samples, and maps
    back. Used by the benchmarks; the estimator does the same with ``StandardScaler``.
    """
    is_ctx = torch.ones(1, X_ctx.shape[0], dtype=torch.bool)
    x_mean, x_scale = context_stats(X_ctx[None], is_ctx)
    y_mean, y_scale = context_stats(y_ctx[None, :, None], is_ctx)
    x_ctx = ((X_ctx - x_mean[0]) / x_scale[0])
    x_q = ((X_q - x_mean[0]) / x_scale[0])
    y_c = ((y_ctx[:, None] - y_mean[0]) / y_scale[0])[:, 0]
    draws = n_noise_draws(schedule, sampler_kw.get("sampler", "ddpm"), sampler_kw.get("n_steps"))
    noise = draw_noise(draws, (X_q.shape[0], n_samples), generator, X_q.dtype)
    s = sample_standardized(model, schedule, x_ctx, y_c, x_q, noise, **sampler_kw)
    return s * y_scale[0, 0, 0] + y_mean[0, 0, 0]
