"""The GPT-2 set denoiser: one token per data point, context-only attention.

Token i carries [x_i zero-padded to ``max_features``, y_i, is_context_i]. Context tokens
hold clean y; target tokens hold the noisy y_t and get a time embedding added. The
attention mask lets every token see all context tokens and itself, nothing else, and all
position ids are 0, so outputs are invariant to the order of the context and each target
is independent of the other targets.

With ``linear_baseline=True`` (the default) the network starts from an in-context
linear-Gaussian answer and learns corrections to it:

* every token carries closed-form features: the predictions at its x of two ridge
  regressions fitted to the context (light and strong shrinkage) and the leverage of x;
* the output is the exact denoiser for y0 ~ N(m, s^2) (DESIGN.md's oracle), with m the
  light ridge prediction and s^2 = residual variance * (1 + leverage), plus the
  transformer's read-out (which starts at zero) times the standard deviation that the
  residual would have if that Gaussian were exact (:func:`residual_scale`). The loss is
  measured in those units too, so a task with a 0.01-wide predictive counts as much as
  one with a 10-wide predictive, and the network's corrections cannot swamp the precise
  answers of large contexts.

Both are fixed functions of the context (no parameters), so every invariance above
still holds. ``linear_baseline=False`` is the pure transformer of the guide.
"""

import math

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model


def sinusoidal_embedding(t, dim, max_period=10000.0):
    """Transformer-style sinusoidal features of (possibly fractional) timesteps ``t``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def attention_mask(is_context):
    """Boolean mask (B, 1, N, N): query i may attend key j iff j is context or j == i."""
    n = is_context.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=is_context.device)
    return (is_context[:, None, :] | eye[None]).unsqueeze(1)


RIDGE_LAMBDAS = (1e-3, 0.1, 1.0)  # times the context size, on standardized data
RIDGE_FLOOR = 1e-2  # plus this, so the solve is well-posed for any context
# Baseline means are shrunk beyond this leverage. The evidence penalty already shrinks
# ill-determined directions, so its untrained baseline is best with a loose cap (near
# k = d); after meta-training that cap lets a few far extrapolations from 2-4 point
# contexts run away, which is why the default penalty is "fixed" (issue 4's notes).
LEVERAGE_CAPS = {"fixed": 10.0, "evidence": 100.0}
PENALTIES = tuple(LEVERAGE_CAPS)
NOISE_PRIOR = 0.01  # pseudo-observations of variance 1 in the residual variance
# The baseline variance is clamped to [VARIANCE_FLOOR, variance_cap] (standardized units
# of y). A cap of 10 (std 3.2) is below the predictive variance of 1-3 point contexts with
# many features, whose standardized queries lie far out: the shipped model, trained with
# it, covers 0.76-0.83 of such queries with its 90 % intervals (README, "Accuracy").
VARIANCE_FLOOR, VARIANCE_CAP = 1e-4, 10.0


def _noise_variance(rss, dof):
    """Residual variance shrunk towards 1 (the variance of standardized y)."""
    return (rss + NOISE_PRIOR) / (dof + NOISE_PRIOR)


def evidence_penalty(gram, rhs, yy, k, n_iter=30):
    """Ridge penalty (B, 1, 1) maximizing each task's marginal likelihood (MacKay's
    fixed point, as scikit-learn's ``BayesianRidge``), in the eigenbasis of the Gram
    matrix so that every iteration is elementwise. The weight variance is shrunk towards
    1 and the noise variance as in :func:`_noise_variance` (NOISE_PRIOR pseudo-counts),
    so empty or exactly-fitted contexts stay well-defined; clamped to [RIDGE_FLOOR, 1e4]."""
    # LAPACK in float64 on the CPU: CUDA's batched Jacobi eigh can fail to converge on the
    # repeated zero eigenvalues of zero-padded features
    s, Q = (a.to(gram) for a in torch.linalg.eigh(gram.detach().cpu().double()))
    s = s.clamp(min=0)
    z2 = (Q.transpose(1, 2) @ rhs)[..., 0] ** 2                      # (B, F)
    yy, k = yy.reshape(-1, 1), k.reshape(-1, 1)
    lam = torch.ones_like(yy)
    for _ in range(n_iter):
        inv = 1 / (s + lam)
        gamma = (s * inv).sum(-1, keepdim=True)                       # effective parameters
        w2 = (z2 * inv**2).sum(-1, keepdim=True)
        rss = (yy - (z2 * inv * (2 - s * inv)).sum(-1, keepdim=True)).clamp(min=0)
        weight_var = (w2 + NOISE_PRIOR) / (gamma + NOISE_PRIOR)
        lam = (_noise_variance(rss, k - gamma) / weight_var).clamp(RIDGE_FLOOR, 1e4)
    return lam[..., None]


def fit_ridge(x, y, is_context, lambdas=RIDGE_LAMBDAS, penalty="fixed", centred=False):
    """Ridge fits to the context rows of each task: (coefficients (B, F, L), inverse of
    the first regularized Gram matrix (B, F, F), residual variance (B, 1), leverage every
    point gains from the intercept (B, 1)).

    The first penalty is ``lambdas[0] * k + RIDGE_FLOOR`` (``penalty="fixed"``) or the
    evidence-maximizing one (``"evidence"``); the others are always fixed. ``centred``
    counts the intercept that centring the context fitted: one residual degree of freedom
    fewer and leverage 1 / k more; without it (the shipped model's baseline) both are 0."""
    w = is_context.to(x.dtype)[..., None]
    k = w.sum(dim=1, keepdim=True).clamp(min=1)                      # (B, 1, 1)
    gram = (x * w).transpose(1, 2) @ x                                # (B, F, F)
    rhs = (x * w).transpose(1, 2) @ y[..., None]                      # (B, F, 1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    pens = [lam * k + RIDGE_FLOOR for lam in lambdas]
    if penalty == "evidence":
        pens[0] = evidence_penalty(gram, rhs, (y**2 * w[..., 0]).sum(1), w.sum(1))
    coefs = torch.cat([torch.linalg.solve_ex(gram + pen * eye, rhs)[0] for pen in pens], dim=-1)
    inv = torch.linalg.inv_ex(gram + pens[0] * eye)[0]
    lev = ((x @ inv) * x).sum(-1).clamp(min=0)
    resid = ((y - (x @ coefs[..., :1])[..., 0]) ** 2 * w[..., 0]).sum(1, keepdim=True)
    dof = (k[..., 0] - int(centred) - (lev * w[..., 0]).sum(1, keepdim=True)).clamp(min=0)
    return coefs, inv, _noise_variance(resid, dof), float(centred) / k[..., 0]


def ridge_features_at(fit, x):
    """(B, N, L + 2): each ridge prediction at x, the leverage of x under the first
    lambda (plus the intercept's, see :func:`fit_ridge`), and the context's residual
    variance (shrunk towards 1, the variance of standardized y, by 0.01 pseudo-observations
    so that a context that fits exactly is not taken as noise-free). Zero predictions with
    no context."""
    coefs, inv, noise_var, intercept_lev = fit
    lev = ((x @ inv) * x).sum(-1).clamp(min=0) + intercept_lev
    return torch.cat([x @ coefs, lev[..., None], noise_var.expand_as(lev)[..., None]], -1)


def ridge_features(x, y, is_context, lambdas=RIDGE_LAMBDAS, penalty="fixed", centred=False):
    """:func:`ridge_features_at` every token, fitted on the context tokens."""
    return ridge_features_at(fit_ridge(x, y, is_context, lambdas, penalty, centred), x)


def baseline_moments(features, cap, var_cap):
    """Mean and variance of the Gaussian baseline at each token, from its ridge features:
    the first ridge's prediction shrunk beyond leverage ``cap``, and the residual variance
    times (1 + leverage) clamped to [VARIANCE_FLOOR, ``var_cap``]."""
    m, lev, noise_var = features[..., 0], features[..., -2], features[..., -1]
    m = m / (lev / cap).clamp(min=1)  # shrink far extrapolations to the mean
    return m, (noise_var * (1 + lev)).clamp(VARIANCE_FLOOR, var_cap)


def gaussian_residual_scale(s2, abar_t, prediction_type):
    """Standard deviation of (true target - Gaussian denoiser) for y0 ~ N(m, s2) if that
    Gaussian were exact: s_post / b for v, s_post for y0 and s_post * a / b for eps, where
    s_post^2 = s^2 b^2 / (a^2 s^2 + b^2) is the posterior variance of y0 given y_t."""
    a2, b2 = abar_t, 1 - abar_t
    base = (s2 / (a2 * s2 + b2)).sqrt()
    scale = {"v": base, "sample": base * b2.sqrt(), "epsilon": base * a2.sqrt()}[prediction_type]
    return scale.clamp(min=1e-3)


def gaussian_denoiser(m, s2, abar_t, y_t, prediction_type):
    """The exact denoiser for y0 ~ N(m, s2), in ``prediction_type`` (see DESIGN.md)."""
    a, b2 = abar_t.sqrt(), 1 - abar_t
    gain = (y_t - a * m) / (abar_t * s2 + b2)
    eps, y0 = b2.sqrt() * gain, m + a * s2 * gain
    return {"epsilon": eps, "sample": y0, "v": a * eps - b2.sqrt() * y0}[prediction_type]


def mixture_denoiser(mixture, abar_t, y_t, prediction_type):
    """The exact denoiser for y0 ~ sum_c w_c N(m_c, v_c), ``mixture`` (..., 3, C) with
    rows w, m, v (components on the last axis): the components' :func:`gaussian_denoiser`
    weighted by their posterior probabilities given y_t, w_c N(y_t; sqrt(abar_t) m_c,
    abar_t v_c + 1 - abar_t) normalized."""
    w, m, v = mixture.unbind(-2)                                          # (..., 1, C)
    y, abar_c = y_t[..., None], abar_t[..., None]
    marginal = abar_c * v + 1 - abar_c
    logp = torch.log(w) - 0.5 * (torch.log(marginal) + (y - abar_c.sqrt() * m) ** 2 / marginal)
    post = torch.softmax(logp, -1)
    return (post * gaussian_denoiser(m, v, abar_c, y, prediction_type)).sum(-1)


def residual_scale(features, abar_t, prediction_type, cap, var_cap):
    """:func:`gaussian_residual_scale` of the baseline at each token."""
    return gaussian_residual_scale(baseline_moments(features, cap, var_cap)[1], abar_t,
                                   prediction_type)


def gaussian_baseline(features, abar_t, y_t, prediction_type, cap, var_cap):
    """:func:`gaussian_denoiser` with m and s^2 from :func:`baseline_moments`. Shrinking m
    where leverage exceeds ``cap`` tames far extrapolation, typical of 1-3 point contexts
    after per-feature standardization."""
    return gaussian_denoiser(*baseline_moments(features, cap, var_cap), abar_t, y_t,
                             prediction_type)


def gelu_tanh_(x):
    """GPT-2's tanh-approximated GELU (``gelu_pytorch_tanh``), in place, written as
    x * sigmoid(2u) for its tanh argument u: the same function to rounding, and 2.4x
    faster than PyTorch's float64 kernel on the CPU, where that kernel was 18 % of the
    estimator's sampling time. Used by the inference path only."""
    c = 2.0 * math.sqrt(2.0 / math.pi)
    u = x * x
    u.mul_(0.044715 * c).add_(c).mul_(x)
    return torch.sigmoid_(u).mul_(x)


def mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class SetDenoiser(nn.Module):
    """Predicts eps, v or y0 for every target token of a batch of tasks.

    Parameters mirror ``GPT2Config``; ``max_features`` fixes the width of x;
    ``ridge_penalty``, ``variance_cap`` and ``centred_dof`` shape the linear baseline.
    """

    def __init__(self, max_features=10, n_layer=4, n_embd=128, n_head=4, linear_baseline=True,
                 abar=None, prediction_type="v", residual_scaling=True, ridge_penalty="fixed",
                 variance_cap=VARIANCE_CAP, centred_dof=False):
        super().__init__()
        if ridge_penalty not in PENALTIES:
            raise ValueError(f"ridge_penalty must be one of {PENALTIES}, got {ridge_penalty!r}")
        self.ridge_penalty, self.leverage_cap = ridge_penalty, LEVERAGE_CAPS[ridge_penalty]
        self.variance_cap, self.centred_dof = float(variance_cap), bool(centred_dof)
        self.residual_scaling = residual_scaling
        self.max_features, self.n_embd = max_features, n_embd
        self.linear_baseline, self.prediction_type = linear_baseline, prediction_type
        if linear_baseline and abar is None:
            raise ValueError("linear_baseline needs the schedule's abar (indexed by t)")
        self.register_buffer("abar", torch.as_tensor(abar if abar is not None else [1.0],
                                                     dtype=torch.float32), persistent=False)
        n_extra = len(RIDGE_LAMBDAS) + 2 if linear_baseline else 0
        config = GPT2Config(
            vocab_size=1, n_positions=1, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
            activation_function="gelu_pytorch_tanh",  # GPT-2's gelu_new, as one fused kernel
        )
        self.read_in = mlp(max_features + 2 + n_extra, 2 * n_embd, n_embd)
        self.time_mlp = mlp(n_embd, 2 * n_embd, n_embd)
        self.backbone = GPT2Model(config)
        self.backbone.wte.weight.requires_grad_(False)  # unused: we feed inputs_embeds
        self.read_out = nn.Linear(n_embd, 1)
        if linear_baseline:  # start exactly at the linear-Gaussian denoiser
            nn.init.zeros_(self.read_out.weight)
            nn.init.zeros_(self.read_out.bias)

    # the closed-form baseline: fitted to the context, evaluated at any x, as token inputs
    def _baseline_fit(self, x, y, is_context):
        return fit_ridge(x, y, is_context, penalty=self.ridge_penalty, centred=self.centred_dof)

    def _baseline_features(self, fit, x):
        return ridge_features_at(fit, x)

    def moments(self, feats):
        """Mean and variance of the Gaussian baseline from its features, and None: it is
        no mixture (as :meth:`~skdiffusion.head.HeadDenoiser.moments` returns)."""
        return (*baseline_moments(feats, self.leverage_cap, self.variance_cap), None)

    @staticmethod
    def _feature_tokens(feats):
        return torch.cat([feats[..., :-2], torch.log1p(feats[..., -2:])], -1)

    def _embed(self, x, y, is_context, t, feats):
        """Token embeddings (before the backbone's position embedding)."""
        flag = is_context.to(x.dtype)
        tokens = [x, y[..., None], flag[..., None]]
        if self.linear_baseline:
            tokens.append(self._feature_tokens(feats))
        h = self.read_in(torch.cat(tokens, dim=-1))
        time = self.time_mlp(sinusoidal_embedding(t, self.n_embd).to(x.dtype))
        return h + (1.0 - flag)[..., None] * time

    def _head(self, hidden, feats, y, t, return_scale=False):
        pred = self.read_out(hidden).squeeze(-1)
        scale = torch.ones_like(pred)
        if self.linear_baseline:
            abar_t = self.abar.to(y.dtype)[t]
            caps = self.leverage_cap, self.variance_cap
            if self.residual_scaling:
                scale = residual_scale(feats, abar_t, self.prediction_type, *caps)
            pred = scale * pred + gaussian_baseline(feats, abar_t, y, self.prediction_type, *caps)
        return (pred, scale) if return_scale else pred

    def forward(self, x, y, is_context, t, return_scale=False):
        """x: (B, N, max_features); y, t: (B, N); is_context: (B, N) bool -> (B, N).

        With ``return_scale`` also returns the per-token scale the loss divides by."""
        if x.shape[-1] != self.max_features:
            raise ValueError(f"x has {x.shape[-1]} features, denoiser expects {self.max_features}")
        feats = (self._baseline_features(self._baseline_fit(x, y, is_context), x)
                 if self.linear_baseline else None)
        out = self._encode(self._embed(x, y, is_context, t, feats), is_context)
        return self._head(out, feats, y, t, return_scale)

    def _encode(self, h, is_context):
        """The backbone over token embeddings ``h`` under the set mask, all positions 0."""
        position_ids = torch.zeros(is_context.shape, dtype=torch.long, device=h.device)
        return self.backbone(inputs_embeds=h, attention_mask=attention_mask(is_context),
                             position_ids=position_ids).last_hidden_state

    # -- inference with the context encoded once -------------------------------------
    # Context tokens attend only to context tokens and carry no time embedding, so their
    # keys and values at every layer are the same for every target and every sampling
    # step. ``encode_context`` computes them once; ``forward_targets`` then runs only the
    # target tokens, each attending to the cached context and to itself. Same maths as
    # ``forward``; cost per step O(m k) instead of O((k + m)^2).

    def _blocks(self):
        gpt = self.backbone
        return gpt.h, gpt.wpe.weight[0], gpt.ln_f

    @torch.no_grad()
    def encode_context(self, x_ctx, y_ctx, fit=None, feats=None, real=None):
        """Cache for :meth:`forward_targets`: per-layer context keys/values and the
        baseline's fit (to this context, unless another ``fit`` is given, and its
        features at x_ctx unless ``feats`` are: see
        :func:`~skdiffusion.inference.make_head_denoise_fn`). ``real`` (B, k) bool marks
        the tokens of contexts zero-padded to one length (to encode contexts of
        different lengths in one batch): the baseline is fitted to them alone and no
        token attends to the others, so each context's keys and values are those of the
        context alone."""
        B, k = y_ctx.shape
        is_ctx = torch.ones((B, k), dtype=torch.bool, device=x_ctx.device) if real is None else real
        # the padding's scores -inf: softmax gives it weight 0 exactly
        bias = None if real is None else torch.zeros(real.shape, dtype=x_ctx.dtype,
                                                     device=x_ctx.device).masked_fill(
            ~real, -torch.inf)[:, None, None]                                  # (B, 1, 1, k)
        if fit is None and self.linear_baseline:
            fit = self._baseline_fit(x_ctx, y_ctx, is_ctx)
        if feats is None and self.linear_baseline:
            feats = self._baseline_features(fit, x_ctx)
        t = torch.zeros((B, k), dtype=torch.long, device=x_ctx.device)
        blocks, pos, _ = self._blocks()
        h = self._embed(x_ctx, y_ctx, is_ctx, t, feats) + pos
        kv = []
        for block in blocks:
            q, key, v = self._qkv(block, block.ln_1(h))
            kv.append((key, v))
            scores = q @ key.transpose(-1, -2) * block.attn.scaling
            att = torch.softmax(scores if bias is None else scores + bias, dim=-1) @ v
            h = self._block_rest(block, h, att)
        return {"kv": kv, "fit": fit, "bias": bias}

    def target_features(self, cache, x_q):
        """The ridge features of targets at x_q (None without the linear baseline); they
        depend on the context only, so samplers compute them once."""
        return self._baseline_features(cache["fit"], x_q) if self.linear_baseline else None

    @torch.no_grad()
    def forward_targets(self, cache, x_q, y_t, t, feats=None):
        """Predictions for targets (B, M) given :meth:`encode_context`'s cache and,
        optionally, precomputed :meth:`target_features`."""
        B, M = y_t.shape
        is_ctx = torch.zeros((B, M), dtype=torch.bool, device=x_q.device)
        if feats is None:
            feats = self.target_features(cache, x_q)
        # one t for all targets: a (1, 1) t broadcasts, so the time MLP runs once per step
        ts = torch.full((1, 1), t, dtype=torch.long, device=x_q.device)
        h = self._attend_cached(cache, self._embed(x_q, y_t, is_ctx, ts, feats))
        return self._head(h, feats, y_t, ts)

    def _attend_cached(self, cache, h):
        """Final hidden states of target token embeddings ``h`` (B, M, n_embd), each
        attending to the cached context and to itself."""
        blocks, pos, ln_f = self._blocks()
        h = h + pos
        for block, (ck, cv) in zip(blocks, cache["kv"]):
            q, key, v = self._qkv(block, block.ln_1(h))
            q = q * block.attn.scaling  # before the products: M x head_dim, not M x k
            s_ctx = q @ ck.transpose(-1, -2)                                  # (B, H, M, k)
            if cache.get("bias") is not None:
                s_ctx = s_ctx + cache["bias"]
            s_self = (q * key).sum(-1, keepdim=True)
            p = torch.softmax(torch.cat([s_ctx, s_self], -1), dim=-1)
            att = p[..., :-1] @ cv + p[..., -1:] * v
            h = self._block_rest(block, h, att)
        return ln_f(h)

    @staticmethod
    def _qkv(block, a):
        attn = block.attn
        q, k, v = attn.c_attn(a).split(attn.split_size, dim=2)
        shape = (*a.shape[:-1], attn.num_heads, attn.head_dim)
        return tuple(z.view(shape).transpose(1, 2) for z in (q, k, v))

    @staticmethod
    def _block_rest(block, h, att):
        att = att.transpose(1, 2).reshape(h.shape)
        h = h + block.attn.c_proj(att)
        mlp = block.mlp  # GPT2MLP without its (inactive) dropout, with the faster GELU
        return h + mlp.c_proj(gelu_tanh_(mlp.c_fc(block.ln_2(h))))


def pad_features(x, max_features):
    """Zero-pad the last axis of ``x`` to ``max_features`` columns."""
    d = x.shape[-1]
    if d > max_features:
        raise ValueError(f"{d} features exceed max_features={max_features}")
    return torch.nn.functional.pad(x, (0, max_features - d))
