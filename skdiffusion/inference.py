"""Reverse-chain sampling for in-context prediction, batched over tasks.

The context is encoded once per prediction (its keys and values never change); every
sampling step then runs only the (query, sample) target tokens, in chunks that change
nothing but memory use.
"""

import torch

from . import kernels
from .denoiser import fit_ridge, pad_features, ridge_features_at
from .diffusion import draw_noise, n_noise_draws, sample
from .kernels import relevant_features
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


QUERY_CHUNK = 64  # queries per encoder pass; a multiple of every SIMD width
WHOLE_CONTEXT_MAX = 1024  # most points a GP baseline is fitted to (see below)
HEAD_ROWS = 16384  # (query, sample) rows per head pass, to bound memory (4 MB a tensor)
# context standard deviations beyond the context's range (in some feature the transformer
# reads) past which a query of a context that determines every direction gets the Gaussian
# baseline alone (see extrapolated; measured by benchmarks/extrapolation.py)
EXTRAPOLATION = 2.0
# Every task prior here is symmetric under y -> -y, so the Bayes predictive is too: a
# head model samples half its draws from the context with y negated and negates them
# (see sample_context_parts); measured in docs/functions.md, "The reflected context"
REFLECT = True


def context_fit(model, x_ctx, y_ctx):
    """The baseline's fit to a whole context, x_ctx (B, k, d) and y_ctx (B, k)
    standardized, that a model with ``whole_context_baseline`` (the GP baseline) gives
    every part of it (from ``WHOLE_CONTEXT_MAX`` of its points, evenly spaced, when it has
    more); None for other models. It depends on the context alone, so it can be computed
    once for all the queries of a context (:func:`sample_context_parts`' ``fit``)."""
    if not getattr(model, "whole_context_baseline", False):
        return None
    x_ctx = _model_columns(model, x_ctx)
    if y_ctx.shape[1] > WHOLE_CONTEXT_MAX:
        rows = torch.linspace(0, y_ctx.shape[1] - 1, WHOLE_CONTEXT_MAX,
                              device=y_ctx.device).round().long()
        x_ctx, y_ctx = x_ctx[:, rows], y_ctx[:, rows]
    return model._baseline_fit(x_ctx, y_ctx, torch.ones_like(y_ctx, dtype=torch.bool))


def make_head_denoise_fn(model, contexts, x_q, chunk=QUERY_CHUNK, reflect=False, fit=None):
    """(closure ``denoise(y_t, t)`` for a :class:`~skdiffusion.head.HeadDenoiser`, the
    variance (B, n_blocks * m, 1) of the Gaussian baseline at each query).

    ``contexts``: a list of (x_ctx (B, k_j, F), y_ctx (B, k_j)) for the same queries
    x_q (B, m, F); y_t has shape (B, n_blocks * m, n_samples), the queries of each
    context in turn: n_blocks = len(contexts), and with ``reflect`` twice that, the
    contexts with y negated following (see :func:`sample_context_parts`). The
    transformer runs once: the contexts are encoded in one batch (zero-padded to one
    length, the padding masked: :func:`_encode`), then every query against them in fixed
    chunks of ``chunk`` (zero-padded), so that its attention has the same shapes
    whatever the other queries are. Each step then runs only the head (in scratch memory
    kept for the whole chain), on the queries of all tasks and parts at once,
    zero-padded to a whole number of chunks (a GEMM over a handful of rows takes other
    kernels, whose rounding differs)
    and in passes of up to ``HEAD_ROWS`` (query, sample) rows (smaller passes measured
    slower: per-call overhead dominates). So in float32 too a query's result does not
    depend on the rest of the call (tested bit for bit, and by scikit-learn's subset and
    order invariance checks).

    A model with ``whole_context_baseline`` (the GP baseline) given several parts of one
    context takes its baseline's fit, for context and query tokens alike, from all the
    parts together (:func:`context_fit` of them, or ``fit`` where the caller has it);
    the transformer still attends to one part at a time. A model with
    ``wide_inputs`` (the ARD baseline) also takes x with more than ``max_features``
    columns: its baseline is fitted to and evaluated at all of them, and the transformer
    reads the ``max_features`` most relevant (:func:`~skdiffusion.kernels.relevant_features`).

    The queries that :func:`extrapolated` names, against all the parts together and the
    features the transformer reads, get no correction from the head: their chain samples
    the Gaussian baseline alone.
    """
    m = x_q.shape[1]
    wide = x_q.shape[-1] > model.max_features
    x_pad = torch.nn.functional.pad(x_q, (0, 0, 0, -m % chunk))
    whole, view = fit, lambda x: x  # noqa: E731 (the transformer's columns of x)
    shared_fit = len(contexts) > 1 or wide or reflect  # one fit serves every block
    if whole is None and shared_fit:
        whole = context_fit(model, torch.cat([x for x, _ in contexts], 1),
                            torch.cat([y for _, y in contexts], 1))
    if wide:
        cols = relevant_features(whole, model.max_features)[:, None]       # (B, 1, F)
        view = lambda x: torch.gather(x, 2, cols.expand(-1, x.shape[1], -1))  # noqa: E731
    starts = range(0, x_pad.shape[1], chunk)
    # one fit for every part: the queries' features are the same for all, computed once
    shared = ([model.target_features({"fit": whole}, x_pad[:, i:i + chunk]) for i in starts]
              if whole is not None else [None] * len(starts))
    # and the context tokens' (at all the columns of wide inputs), once per part
    ctx_feats = [model.target_features({"fit": whole}, x) if whole is not None else None
                 for x, _ in contexts]
    # (the transformer's view of the context, its y, context's and queries' features)
    blocks = [(view(x), y, f, shared) for (x, y), f in zip(contexts, ctx_feats)]
    if reflect:  # the GP fit to -y is the fit with its means negated (reflect_features)
        flip = lambda f: None if f is None else kernels.reflect_features(f)  # noqa: E731
        blocks += [(x, -y, flip(f), [flip(a) for a in q]) for x, y, f, q in blocks]
    h, feats = _encode(model, whole, blocks, [view(x_pad[:, i:i + chunk]) for i in starts], m)
    # the head sees queries, not tasks: all of them on one axis, zero-padded to whole chunks
    flat = lambda a: _pad_rows(a.reshape(-1, *a.shape[2:]), chunk)  # noqa: E731
    hc = model.head.project(flat(h))[:, None]  # a draws axis to broadcast
    moments = model.moments(flat(feats)[:, None])
    var = moments[1]
    near = ~extrapolated(view(torch.cat([x for x, _ in contexts], 1)), view(x_q))  # (B, m)
    gate = flat(near[:, None].expand(-1, len(blocks), -1).reshape(len(x_q), -1, 1)).to(var.dtype)

    buffers = {}  # the head's scratch memory, reused at every step

    def denoise(y_t, t):
        time = model.time_embedding(t, y_t)  # once per step
        y = flat(y_t)
        n = max(1, HEAD_ROWS // (y.shape[-1] * chunk)) * chunk  # queries per head pass
        part = lambda i: [None if a is None else a[i:i + n] for a in moments]  # noqa: E731
        out = torch.cat([model.denoise(hc[i:i + n], part(i), y[i:i + n], t, time,
                                       gate[i:i + n], buffers=buffers)
                         for i in range(0, len(y), n)])
        return out[:y_t.shape[0] * y_t.shape[1]].reshape(y_t.shape)

    n = x_q.shape[0] * len(blocks) * m
    return denoise, var[:n].reshape(x_q.shape[0], len(blocks) * m, 1)


def _encode(model, fit, blocks, chunks, m):
    """Query embeddings and features (B, len(blocks) * m, .), block after block, of the
    query ``chunks`` (each (B, chunk, F)) against each block (x_ctx, y_ctx, context
    features, list of the chunks' features) of :func:`make_head_denoise_fn`, in one
    batch: the contexts zero-padded to one length, the padding masked (see
    :meth:`~skdiffusion.denoiser.SetDenoiser.encode_context`). ``fit``: the baseline's
    fit that gave every block's features, or None where blocks come without features
    (each block is then fitted to its own context)."""
    n, B = len(blocks), len(chunks[0])
    k = max(x.shape[1] for x, *_ in blocks)
    pad = lambda a: torch.nn.functional.pad(a, (0, 0) * (a.dim() - 2) + (0, k - a.shape[1]))  # noqa: E731

    def cat(parts, padded=True):  # the blocks on the batch axis
        return None if parts[0] is None else torch.cat([pad(a) if padded else a for a in parts])

    real = None
    if any(x.shape[1] < k for x, *_ in blocks):
        rows = torch.arange(k, device=chunks[0].device)
        real = torch.cat([(rows < x.shape[1]).expand(B, -1) for x, *_ in blocks])
    x_ctx, y_ctx, ctx_feats, q_feats = zip(*blocks)
    cache = model.encode_context(cat(x_ctx), cat(y_ctx), fit, cat(ctx_feats), real)
    parts = [model.encode_queries(cache, x.repeat(n, 1, 1), cat([q[i] for q in q_feats], False))
             for i, x in enumerate(chunks)]
    # (n * B, m, .) block-major -> (B, n * m, .): each task's blocks on one axis
    return tuple(torch.cat(z, 1)[:, :m].unflatten(0, (n, B)).transpose(0, 1).flatten(1, 2)
                 for z in zip(*parts))


def extrapolated(x_ctx, x_q):
    """(B, m) bool: the queries of x_q (B, m, F) more than ``EXTRAPOLATION`` context
    standard deviations beyond the range of x_ctx (B, k, F) in some feature, in a context
    that determines every direction (k >= d + 2, d its non-zero columns). There the
    shipped network's correction was no better than its Gaussian baseline on tasks of its
    own prior, and worse on real data whose trends go on where the prior's functions turn;
    smaller contexts put many queries that far out, and meta-training learned those."""
    return (beyond_context(x_ctx, x_q) > EXTRAPOLATION) & determines_every_direction(x_ctx)[:, None]


def determines_every_direction(x_ctx):
    """(B,) bool: contexts x_ctx (B, k, F) of at least d + 2 points, d their non-zero
    columns (a line through them and the noise level are then determined)."""
    return x_ctx.shape[1] >= (x_ctx != 0).any(dim=1).sum(-1) + 2


def beyond_context(x_ctx, x_q):
    """How far (B, m) each query of x_q (B, m, F) lies outside the range of x_ctx (B, k, F):
    the largest distance over features beyond the context's minimum or maximum, 0 inside
    (and for an empty context, whose model was meta-trained on such tasks too)."""
    if x_ctx.shape[1] == 0:
        return x_q.new_zeros(x_q.shape[:2])
    below = x_ctx.amin(1, keepdim=True) - x_q
    above = x_q - x_ctx.amax(1, keepdim=True)
    return torch.maximum(below, above).clamp(min=0).amax(-1)


def _model_columns(model, x):
    """x (..., d) zero-padded to the model's ``max_features`` columns, or as it is where
    it has more and the model takes ``wide_inputs``."""
    if x.shape[-1] > model.max_features and getattr(model, "wide_inputs", False):
        return x
    return pad_features(x, model.max_features)


def _pad_rows(a, multiple):
    """``a`` zero-padded along its first axis to a multiple of ``multiple``."""
    return torch.nn.functional.pad(a, (0, 0) * (a.dim() - 1) + (0, -len(a) % multiple))


@torch.no_grad()
def sample_standardized(model, schedule, x_ctx, y_ctx, x_q, noise, sampler="ddpm",
                        n_steps=None, eta=0.0, prediction_type="v", variance="beta",
                        chunk_size=4096, progress=False):
    """Samples (B, n_queries, n_samples) of standardized y at standardized ``x_q``.

    x_ctx: (B, k, d), y_ctx: (B, k), x_q: (B, m, d) with d <= max_features (any d for a
    model with ``wide_inputs``, see :func:`make_head_denoise_fn`);
    ``noise`` has shape (n_draws, B, m, n_samples), see :func:`n_noise_draws`.
    DDPM uses the reverse variance ``variance``
    (:meth:`~skdiffusion.diffusion.NoiseSchedule.posterior`): "beta" (the default; its
    over-dispersion of narrow predictives at few steps makes up for the shipped model's
    slightly narrow Gaussian) or, for a head denoiser, "analytic", with the variance of
    its Gaussian baseline at each query: the chain then samples exactly that Gaussian at
    any number of steps when the head adds nothing (both measured in docs/sampling.md).
    """
    return sample_context_parts(model, schedule, [(x_ctx, y_ctx)], x_q, noise[:, None],
                                sampler, n_steps, eta, prediction_type, variance, chunk_size,
                                progress)[0]


@torch.no_grad()
def sample_context_parts(model, schedule, contexts, x_q, noise, sampler="ddpm", n_steps=None,
                         eta=0.0, prediction_type="v", variance="beta", chunk_size=4096,
                         progress=False, fit=None):
    """Samples (n_parts, B, m, n_samples) at x_q (B, m, d) given each of several contexts
    [(x_ctx (B, k_j, d), y_ctx (B, k_j)), ...] (e.g. the parts of a context too large for
    the model); ``noise`` has shape (n_draws, n_parts, B, m, n_samples).

    A set denoiser runs one chain per context; a head denoiser encodes every context and
    runs a single chain for all of them (the same numbers, a third of the calls for
    three parts).

    With ``REFLECT`` a head denoiser draws the first ceil(n_samples / 2) samples of each
    context from it and the rest from the context with y negated, negated back, their
    noise negated too: the samples of a model whose predictive is symmetric under
    y -> -y (the Bayes predictive of every prior here) are left as they are (antithetic
    pairs e, -e become pairs of one draw from each context), those of a trained network
    lose the part that breaks the symmetry (such as a bias). The transformer then runs
    twice; the head as often as before; the GP baseline's fit once.

    ``fit``: the whole context's :func:`context_fit`, if already computed; by default
    it is fitted to the parts together.
    """
    wide = x_q.shape[-1] > model.max_features and getattr(model, "wide_inputs", False)
    contexts = [(_model_columns(model, x), y) for x, y in contexts]
    x_q = _model_columns(model, x_q)
    if not getattr(model, "per_query_head", False):
        out = torch.stack([
            sample(make_denoise_fn(model, x_ctx, y_ctx, x_q, chunk_size), schedule, noise[:, j],
                   sampler, n_steps, eta, prediction_type, variance, progress)
            for j, (x_ctx, y_ctx) in enumerate(contexts)])
    else:
        n_draws, n_parts, B, m, n_samples = noise.shape
        drive = noise
        if REFLECT:  # the second half's noise, negated, drives the reflected contexts
            h = n_samples - n_samples // 2
            back = torch.nn.functional.pad(-noise[..., h:], (0, 2 * h - n_samples))
            drive = torch.cat([noise[..., :h], back], 1)
        flat = drive.permute(0, 2, 1, 3, 4).reshape(n_draws, B, -1, drive.shape[-1])
        denoise, y0_var = make_head_denoise_fn(model, contexts, x_q, reflect=REFLECT, fit=fit)
        out = sample(denoise, schedule, flat, sampler, n_steps, eta, prediction_type,
                     variance, progress, y0_var)
        out = out.reshape(B, -1, m, drive.shape[-1]).transpose(0, 1)
        if REFLECT:
            out = torch.cat([out[:n_parts], -out[n_parts:]], -1)[..., :n_samples]
    # wide inputs keep the network's answer: least squares on more features than
    # meta-training saw overfits (diabetes with its 45 pairwise products: R^2 0.40
    # with the fallback, 0.47 without, docs/functions.md)
    if not model.linear_baseline or wide:
        return out
    return torch.stack([linear_fallback(model, x_ctx, y_ctx, x_q, out[j], noise[0, j])
                        for j, (x_ctx, y_ctx) in enumerate(contexts)])


def linear_fallback(model, x_ctx, y_ctx, x_q, samples, z):
    """``samples`` (B, m, n) with the queries far outside a context that determines every
    direction (k >= d + 2 and leverage above the model's leverage cap, where the baseline
    the model corrects shrinks its mean and caps its variance, and meta-training rarely
    went)
    replaced by the in-context linear-Gaussian predictive, whose variance grows with the
    leverage: least-squares mean (ridge at the floor penalty only: far out, a penalty's
    bias outgrows the interval) + sqrt(residual variance x (1 + leverage)) z, with z the chain's
    own initial noise (B, m, n), so antithetic pairs stay pairs. Smaller contexts leave
    every query at a high leverage, and meta-training saw those: they keep the model's
    answer."""
    is_ctx = torch.ones(y_ctx.shape, dtype=torch.bool, device=y_ctx.device)
    fit = fit_ridge(x_ctx, y_ctx, is_ctx, lambdas=(0.0,), centred=model.centred_dof)
    feats = ridge_features_at(fit, x_q)
    mean, lev, noise_var = feats[..., :1], feats[..., -2:-1], feats[..., -1:]
    determined = determines_every_direction(x_ctx)[:, None, None]
    linear = mean + (noise_var * (1 + lev)).sqrt() * z
    return torch.where(determined & (lev > model.leverage_cap), linear, samples)


def baseline_predictive(model, x_ctx, y_ctx, x_q):
    """Mean and variance (B, m) of the baseline the network corrects (its closed-form
    features alone: the ablation of everything meta-training learned), and the baseline
    as a mixture of Gaussians (B, m, 3, C) where it is one (else None; see
    :meth:`~skdiffusion.head.HeadDenoiser.moments`), for standardized, padded x_ctx
    (B, k, F), y_ctx (B, k) and x_q (B, m, F)."""
    is_ctx = torch.ones(y_ctx.shape, dtype=torch.bool, device=y_ctx.device)
    return model.moments(model._baseline_features(model._baseline_fit(x_ctx, y_ctx, is_ctx), x_q))


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
