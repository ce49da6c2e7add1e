"""Reverse-chain sampling for in-context prediction, batched over tasks.

The context is encoded once per prediction (its keys and values never change); every
sampling step then runs only the (query, sample) target tokens, in chunks that change
nothing but memory use.
"""

import torch

from .denoiser import pad_features
from .diffusion import draw_noise, n_noise_draws, sample
from .priors import context_stats


def make_denoise_fn(model, x_ctx, y_ctx, x_q, chunk_size=4096):
    """Closure ``denoise(y_t, t)`` for y_t of shape (B, n_queries, n_samples).

    x_ctx: (B, k, F), y_ctx: (B, k), x_q: (B, m, F), all already standardized and padded.
    The context is encoded once; each call runs only the target tokens.
    """
    cache = model.encode_context(x_ctx, y_ctx)
    B = y_ctx.shape[0]
    targets = {}  # per n_samples: flattened target x and their features, built once

    def denoise(y_t, t):
        m, n_samples = y_t.shape[1:]
        if n_samples not in targets:
            flat_x = x_q.repeat_interleave(n_samples, dim=1)
            targets[n_samples] = (flat_x, model.target_features(cache, flat_x))
        flat_x, feats = targets[n_samples]
        flat_y = y_t.reshape(B, m * n_samples)
        out = []
        for i in range(0, m * n_samples, chunk_size):
            part = slice(i, i + chunk_size)
            f = None if feats is None else feats[:, part]
            out.append(model.forward_targets(cache, flat_x[:, part], flat_y[:, part], t, f))
        return torch.cat(out, 1).reshape(B, m, n_samples)

    return denoise


@torch.no_grad()
def sample_standardized(model, schedule, x_ctx, y_ctx, x_q, noise, sampler="ddpm",
                        n_steps=None, eta=0.0, prediction_type="v", variance="beta",
                        chunk_size=4096, progress=False):
    """Samples (B, n_queries, n_samples) of standardized y at standardized ``x_q``.

    x_ctx: (B, k, d), y_ctx: (B, k), x_q: (B, m, d) with d <= max_features;
    ``noise`` has shape (n_draws, B, m, n_samples), see :func:`n_noise_draws`.
    DDPM uses the posterior variance ``variance`` ("beta" is the calibrated default,
    see tests/test_diffusion.py).
    """
    x_ctx, x_q = pad_features(x_ctx, model.max_features), pad_features(x_q, model.max_features)
    denoise = make_denoise_fn(model, x_ctx, y_ctx, x_q, chunk_size)
    return sample(denoise, schedule, noise, sampler, n_steps, eta, prediction_type, variance,
                  progress)


def standardize_tasks(X_ctx, y_ctx, X_q):
    """Each task standardized by its own context, as in training: (x_ctx, y_ctx, x_q,
    y_mean, y_scale), the last two of shape (B, 1, 1) to map samples back."""
    is_ctx = torch.ones(X_ctx.shape[:2], dtype=torch.bool, device=X_ctx.device)
    x_mean, x_scale = context_stats(X_ctx, is_ctx)
    y_mean, y_scale = context_stats(y_ctx[..., None], is_ctx)
    y_c = ((y_ctx[..., None] - y_mean) / y_scale)[..., 0]
    return (X_ctx - x_mean) / x_scale, y_c, (X_q - x_mean) / x_scale, y_mean, y_scale


@torch.no_grad()
def sample_raw_tasks(model, schedule, X_ctx, y_ctx, X_q, n_samples, generator,
                     antithetic=False, **sampler_kw):
    """Samples (B, m, n_samples) of y in original units for a batch of raw tasks.

    Standardizes each task with its own context statistics (as training did), samples,
    and maps back. Used by the benchmarks; the estimator does the same with
    ``StandardScaler``. ``antithetic``: see :func:`~skdiffusion.diffusion.draw_noise`.
    """
    device = next(model.parameters()).device
    X_ctx, y_ctx, X_q = X_ctx.to(device), y_ctx.to(device), X_q.to(device)
    x_c, y_c, x_q, y_mean, y_scale = standardize_tasks(X_ctx, y_ctx, X_q)
    draws = n_noise_draws(schedule, sampler_kw.get("n_steps"))
    noise = draw_noise(draws, (*X_q.shape[:2], n_samples), generator, X_q.dtype,
                       antithetic=antithetic).to(device)
    s = sample_standardized(model, schedule, x_c, y_c, x_q, noise, **sampler_kw)
    return (s * y_scale + y_mean).cpu()
