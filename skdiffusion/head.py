"""Encoder + diffusion head: the transformer runs once per query, a small MLP per sample.

:class:`HeadDenoiser` reads the same tokens as :class:`~skdiffusion.denoiser.SetDenoiser`
(context tokens carry clean y; each query token carries its x and the in-context ridge
features, but no y_t and no t) under the same attention rules (context sees context, a
query sees the context and itself, every position id 0). The transformer returns one
embedding h per query. A per-token diffusion head in the style of MAR (Li et al. 2024,
"Autoregressive Image Generation without Vector Quantization") maps (h, y_t, t) to the
prediction: residual MLP blocks whose LayerNorm shift, scale and gate come from
h + embed(t) (adaptive layer norm, zero-initialized so that every block starts as the
identity; RMS norms in place of MAR's LayerNorms, which cost twice as much here).

As in the set denoiser, the head corrects the exact Gaussian denoiser of the in-context
linear baseline: prediction = baseline + residual scale x head output, the head's last
layer zero-initialized. Where the ARD baseline is a mixture of Gaussians (its bimodal
part), the baseline is the mixture's exact denoiser and the head's correction is scaled
by the weight of its Gaussian part. The head sees y_t and its standardized deviation
from the baseline's marginal, (y_t - sqrt(abar_t) m) / sqrt(abar_t s^2 + 1 - abar_t), so
its inputs are on the unit scale whatever the context.

Cost: sampling runs the transformer once per query and then only the head for each of
samples x steps; training runs the transformer once per task and the head on
``pairs`` (t, noise) draws per token.
"""

import torch
from torch import nn
from torch.nn import functional as F

from . import kernels
from .denoiser import (RIDGE_LAMBDAS, VARIANCE_CAP, VARIANCE_FLOOR, SetDenoiser,
                       gaussian_denoiser, gaussian_residual_scale, mlp,
                       mixture_denoiser, sinusoidal_embedding)

BASELINES = ("ridge", "gp", "ard")

TIME_FEATURES = 64


RMS_EPS = 1e-6


def rms_norm(x):
    return F.rms_norm(x, (x.shape[-1],), eps=RMS_EPS)


class AdaLNBlock(nn.Module):
    """h + gate(c) * MLP(norm(h) * (1 + scale(c)) + shift(c)): MAR's ResBlock, with an
    RMS norm (half the cost of a LayerNorm on the CPU, where the head's time goes)."""

    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.modulation = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h, c):
        """``c`` is SiLU of the condition; it broadcasts against ``h`` (e.g. one
        condition per query for all of its samples)."""
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        z = torch.addcmul(shift, rms_norm(h), 1 + scale)
        return torch.addcmul(h, gate, self.fc2(F.silu(self.fc1(z))))


class DiffusionHead(nn.Module):
    """MLP denoiser (condition, y_t inputs, t) -> one scalar per row, zero at init.

    The condition is SiLU(cond(h) + time(t)); cond(h) is computed once per query
    (:meth:`project`) and time(t) once per step (:meth:`time_embedding`)."""

    def __init__(self, cond_dim, width=64, depth=2, n_inputs=2):
        super().__init__()
        self.cond = nn.Linear(cond_dim, width)
        self.time = mlp(TIME_FEATURES, width, width)
        self.read_in = nn.Linear(n_inputs, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_modulation = nn.Linear(width, 2 * width)
        self.read_out = nn.Linear(width, 1)
        for layer in (self.final_modulation, self.read_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def project(self, h):
        return self.cond(h)

    def time_embedding(self, t, dtype):
        return self.time(sinusoidal_embedding(t, TIME_FEATURES).to(dtype))

    def forward(self, inputs, hc, time, buffers=None):
        """inputs (..., n_inputs), projected condition ``hc`` and ``time`` embedding
        broadcastable to it -> (...).

        ``buffers``: a dict, kept by the caller across calls (a sampling chain), in which
        the head, without autograd, keeps its three (..., width) intermediates and
        computes in place: the same numbers, without allocating a dozen new tensors of
        rows x width each call (fresh memory's page faults were 40 % of a chain's time:
        docs/sampling.md, "Scratch memory for the chain, one batch for the encoder")."""
        c = F.silu(hc + time)
        if buffers is not None:
            return self._forward_in_place(inputs, c, buffers)
        z = self.read_in(inputs)
        for block in self.blocks:
            z = block(z, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.read_out(torch.addcmul(shift, rms_norm(z), 1 + scale)).squeeze(-1)

    @torch.no_grad()
    def _forward_in_place(self, inputs, c, buffers):
        """:meth:`forward` in ``buffers`` (see there); the blocks' operations in the same
        order, each writing its result over an input it no longer needs."""
        shape = (*inputs.shape[:-1], self.read_out.in_features)
        if shape not in buffers:
            buffers[shape] = [torch.empty(shape, dtype=inputs.dtype, device=inputs.device)
                              for _ in range(3)]
        z, a, b = buffers[shape]
        rows = lambda t: t.view(-1, t.shape[-1])  # noqa: E731 (the GEMMs' 2-d views)

        def linear(layer, x, out):
            return torch.addmm(layer.bias, rows(x), layer.weight.t(), out=rows(out))

        def modulated_norm(x, shift, scale, out):  # addcmul(shift, rms_norm(x), 1 + scale)
            torch.mul(x, x, out=out)
            inv = out.mean(-1, keepdim=True).add_(RMS_EPS).rsqrt_()
            return torch.addcmul(shift, torch.mul(x, inv, out=out), 1 + scale, out=out)

        linear(self.read_in, inputs, z)
        for block in self.blocks:
            shift, scale, gate = block.modulation(c).chunk(3, dim=-1)
            linear(block.fc1, modulated_norm(z, shift, scale, a), b)
            linear(block.fc2, F.silu(b, inplace=True), a)
            z.addcmul_(gate, a)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.read_out(modulated_norm(z, shift, scale, a)).squeeze(-1)


class HeadDenoiser(SetDenoiser):
    """GPT-2 encoder of (context, query x) tokens plus a :class:`DiffusionHead`.

    Parameters are those of :class:`~skdiffusion.denoiser.SetDenoiser` plus the head's
    ``head_width`` and ``head_depth``, and ``baseline``: the closed-form Gaussian the head
    corrects (it is required), ``"ridge"`` (the in-context ridge fits of the set
    denoiser), ``"gp"`` (in-context GP model averaging over kernels and noise levels,
    :mod:`skdiffusion.kernels`; its per-kernel moments and weights are token features) or
    ``"ard"`` (the same average with an RBF member whose per-feature lengthscales are
    fitted to each context)."""

    per_query_head = True

    def __init__(self, max_features=10, n_layer=4, n_embd=128, n_head=4, abar=None,
                 prediction_type="v", ridge_penalty="fixed", variance_cap=VARIANCE_CAP,
                 centred_dof=False, head_width=64, head_depth=2, baseline="ridge"):
        super().__init__(max_features, n_layer, n_embd, n_head, True, abar, prediction_type,
                         True, ridge_penalty, variance_cap, centred_dof)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.baseline = baseline
        # a context split into parts (larger than meta-training's) gets the baseline of
        # the whole context: a GP on all points is much sharper than a pool of GPs on parts
        self.whole_context_baseline = self._gp = baseline in ("gp", "ard")
        self._ard = baseline == "ard"
        # the ARD baseline is fitted to any number of features; the transformer then reads
        # the max_features most relevant of them (see inference.make_head_denoise_fn)
        self.wide_inputs = self._ard
        if self._gp:
            n_in = (self.read_in[0].in_features - (len(RIDGE_LAMBDAS) + 2)
                    + kernels.n_features(self._ard))
            self.read_in = mlp(n_in, 2 * n_embd, n_embd)
        del self.time_mlp, self.read_out  # the head owns time and the read-out
        self.head = DiffusionHead(n_embd, head_width, head_depth)

    def _baseline_fit(self, x, y, is_context):
        if self._gp:  # float64 always (see kernels.gp_features)
            return kernels.fit_gp(x.double(), y.double(), is_context, self._ard)
        return super()._baseline_fit(x, y, is_context)

    def _baseline_features(self, fit, x):
        if self._gp:
            return kernels.gp_features_at(fit, x.double()).to(x.dtype)
        return super()._baseline_features(fit, x)

    def _feature_tokens(self, feats):
        if self._gp:  # the mixture's own columns are the sampler's, not the network's
            return kernels.network_features(feats, self._ard)
        return super()._feature_tokens(feats)

    def _embed(self, x, y, is_context, t, feats):
        """Token embeddings: clean y on context tokens, no y and no time on queries."""
        flag = is_context.to(x.dtype)
        extra = self._feature_tokens(feats)
        return self.read_in(torch.cat([x, (y * flag)[..., None], flag[..., None], extra], -1))

    def moments(self, feats):
        """Mean and variance (..., 1) of the baseline from its features (..., 1, n), and
        the baseline as a mixture of Gaussians (..., 1, 3, C) where it is one (the ARD
        baseline's bimodal part, :func:`~skdiffusion.kernels.gp_mixture`; else None);
        they depend on the context only, so samplers compute them once."""
        if self._gp:
            mixture = (kernels.gp_mixture(feats, VARIANCE_FLOOR, self.variance_cap)
                       if self._ard else None)
            return (*kernels.gp_moments(feats, VARIANCE_FLOOR, self.variance_cap), mixture)
        return super().moments(feats)

    def denoise(self, hc, moments, y_t, t, time=None, gate=None, return_scale=False,
                buffers=None):
        """Prediction at y_t (..., S) from projected query embeddings ``hc`` (..., 1,
        head width, see :meth:`DiffusionHead.project`) and the baseline's
        :meth:`moments`, broadcast over the draws axis; ``t`` is (..., S) or one int step
        for all, whose ``time`` embedding may be passed precomputed. ``gate`` (..., 1), 0
        or 1 per query, multiplies the head's correction (0: the baseline's exact
        denoiser); ``buffers``: see :meth:`DiffusionHead.forward`. The head sees y_t
        against the baseline's mean and variance and corrects its exact denoiser, that of
        its mixture where it has one."""
        m, s2, mixture = moments
        abar_t = self.abar.to(y_t.dtype)[torch.as_tensor(t, device=y_t.device)]
        if time is None:
            time = self.time_embedding(t, y_t)
        z = (y_t - abar_t.sqrt() * m) / (abar_t * s2 + 1 - abar_t).sqrt()
        out = self.head(torch.stack([y_t, z], dim=-1), hc, time, buffers)
        if gate is not None:
            out = out * gate
        if mixture is not None:  # trained on Gaussian baselines: it corrects their part
            out = out * mixture[..., 0, 0]
        scale = gaussian_residual_scale(s2, abar_t, self.prediction_type)
        base = (gaussian_denoiser(m, s2, abar_t, y_t, self.prediction_type) if mixture is None
                else mixture_denoiser(mixture, abar_t, y_t, self.prediction_type))
        pred = scale * out + base
        return (pred, scale) if return_scale else pred

    def time_embedding(self, t, like):
        """The head's time embedding of ``t`` (a tensor, or one int step for all)."""
        t = t if torch.is_tensor(t) else torch.full((1,), t, device=like.device)
        return self.head.time_embedding(t, like.dtype)

    @torch.no_grad()
    def features(self, x, y, is_context):
        """The baseline's features (B, N, .) of every token, fitted to the context tokens
        of y (the others are not read); they involve no weights, so the training loop
        computes them ahead, beside the previous step (:func:`~skdiffusion.training.train`)."""
        y = y * is_context
        if self._gp:
            return kernels.gp_features(x, y, is_context, ard=self._ard)
        return self._baseline_features(self._baseline_fit(x, y, is_context), x)

    def encode(self, x, y, is_context, feats=None):
        """Query embeddings (B, N, n_embd) and baseline features of every token (given,
        or computed by :meth:`features`), in one masked pass (training); only target
        tokens' are meaningful."""
        feats = self.features(x, y, is_context) if feats is None else feats
        return self._encode(self._embed(x, y, is_context, None, feats), is_context), feats

    def forward(self, x, y, is_context, y_t, t, return_scale=False, feats=None):
        """x (B, N, F); y (B, N) clean (only context entries are read); y_t and t
        (B, N, S): S noised draws per token -> predictions (B, N, S) at target tokens
        (the head runs on those only; context entries are 0, their scale 1). ``feats``:
        the :meth:`features` of (x, y, is_context), if already computed."""
        if x.shape[-1] != self.max_features:
            raise ValueError(f"x has {x.shape[-1]} features, denoiser expects {self.max_features}")
        h, feats = self.encode(x, y * is_context, is_context, feats)
        target = ~is_context
        hc = self.head.project(h[target])[:, None]
        pred, scale = self.denoise(hc, self.moments(feats[target][:, None]), y_t[target],
                                   t[target], return_scale=True)
        full_pred = torch.zeros_like(y_t).index_put((target,), pred)
        full_scale = torch.ones_like(y_t).index_put((target,), scale)
        return (full_pred, full_scale) if return_scale else full_pred

    @torch.no_grad()
    def encode_queries(self, cache, x_q, feats=None):
        """(h, feats) of queries x_q (B, M, F) against :meth:`encode_context`'s cache;
        ``feats``: their :meth:`target_features`, if already computed."""
        feats = self.target_features(cache, x_q) if feats is None else feats
        is_ctx = torch.zeros(x_q.shape[:2], dtype=torch.bool, device=x_q.device)
        h = self._embed(x_q, torch.zeros(x_q.shape[:2], dtype=x_q.dtype, device=x_q.device),
                        is_ctx, None, feats)
        return self._attend_cached(cache, h), feats
