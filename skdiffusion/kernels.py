"""In-context Gaussian-process model averaging: the closed-form baseline ``baseline="gp"``.

For each task, on its standardized context (k points, d used features), a GP with
kernel s^2 (R_j + c + r I) is fitted for every kernel R_j of a small family (isotropic
RBFs with lengthscales ``LENGTHSCALES`` x sqrt(d), and the linear kernel x.x' / d), an
unknown constant mean (prior variance c = ``INTERCEPT``) and every noise-to-signal ratio
r of the grid ``RATIOS``. The signal variance s^2 has a closed-form maximizer given
(j, r) (shrunk towards 1, the variance of standardized y, by PSEUDO pseudo-observations,
so that tiny and exactly-fitted contexts stay well-defined), and p(j, r | context) is
proportional to the profile marginal likelihood times the prior: ``LINEAR_PRIOR`` on the
linear kernel, the rest shared by the RBFs, ratios uniform. The predictive of y at x is
the mixture over (j, r) of the GP predictives N(mu_jr(x), v_jr(x)) (v includes the noise s^2 r): its mean and variance are the
baseline's moments, and the per-kernel means, log variances and posterior weights are
features for the network.

Everything is computed in each kernel matrix's eigenbasis (one ``eigh`` per task and
kernel), so the whole ratio grid costs elementwise work only. Non-context tokens are
masked out: their rows and columns are replaced by -1 on the diagonal, eigenvalues that
no kernel matrix (positive semi-definite) has, and those eigen-directions are dropped.
"""

import torch

LENGTHSCALES = (0.25, 0.5, 1.0, 2.0)  # times sqrt(d), on standardized inputs
RATIOS = tuple(10 ** (-4 + 5 * i / 15) for i in range(16))  # noise / signal variance, 1e-4..10
PSEUDO = 1.0  # pseudo-observations of variance 1 in the signal variance
# Every kernel gets a constant INTERCEPT (an unknown mean, nearly flat prior): standardized
# y is orthogonal to the constant vector, which a GP without one reads as a direction
# observed without noise (it then prefers the smallest noise ratio, most of all at k = 2).
INTERCEPT = 1e3
LINEAR_PRIOR = 0.8  # prior probability of the linear kernel (the RBFs share the rest)
N_KERNELS = len(LENGTHSCALES) + 1
N_FEATURES = 3 * N_KERNELS + 2


def _n_used(x, w):
    """(B, 1, 1) number of features in use (non-zero at some context point), at least 1."""
    return ((x * w[..., None]) != 0).any(1).sum(-1).clamp(min=1).to(x.dtype)[:, None, None]


def _kernel_matrices(xa, xb, d):
    """Unit-variance kernels between xa (B, Na, F) and xb (B, Nb, F): a list of (B, Na, Nb)."""
    sq = (xa * xa).sum(-1)[..., :, None] + (xb * xb).sum(-1)[..., None, :] - 2 * xa @ xb.transpose(1, 2)
    sq = sq.clamp(min=0) / d
    out = [torch.exp(-0.5 * sq / c**2) for c in LENGTHSCALES] + [xa @ xb.transpose(1, 2) / d]
    return [K + INTERCEPT for K in out]


def _diag(x, d):
    """Prior variances k(x, x) of each kernel at x (B, N, F): a list of (B, N)."""
    ones = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    return [v + INTERCEPT for v in [ones] * len(LENGTHSCALES) + [(x * x).sum(-1) / d[..., 0]]]


def _log_prior(loglik):
    """Log prior over (kernel, ratio) (B, L, R): kernels as above, ratios uniform."""
    n_rbf = loglik.shape[1] - 1
    p = torch.tensor([(1 - LINEAR_PRIOR) / n_rbf] * n_rbf + [LINEAR_PRIOR], dtype=loglik.dtype,
                     device=loglik.device)
    return torch.log(p)[None, :, None]


def _eigh(K):
    """Batched symmetric eigendecomposition, by LAPACK on the CPU: CUDA's batched Jacobi
    eigh can fail to converge on the repeated eigenvalues of masked tokens (as in
    ``denoiser.evidence_penalty``)."""
    lam, U = torch.linalg.eigh(K.cpu())
    return lam.to(K.device), U.to(K.device)


def fit_gp(x, y, is_context):
    """Fit every (kernel, ratio) GP to the context tokens of each task.

    x (B, N, F) standardized (zero-padded columns), y (B, N), is_context (B, N). Only
    the first ``max(k)`` tokens are read when the context comes first (as in training
    and prediction); any context layout is correct."""
    w = is_context.to(x.dtype)
    last = int(is_context.nonzero()[:, 1].max()) + 1 if is_context.any() else 0
    xc, yc, w = x[:, :last], (y * w)[:, :last], w[:, :last]
    d = _n_used(xc, w)
    r = torch.tensor(RATIOS, dtype=x.dtype, device=x.device)
    k = w.sum(1)                                                     # (B,)
    pad = torch.diag_embed(1 - w)                                    # -1 on masked diagonal
    mask = w[:, :, None] * w[:, None, :]
    fits = []
    for K in _kernel_matrices(xc, xc, d):
        lam, U = _eigh(K * mask - pad)
        valid = lam > -0.5
        lam = torch.where(valid, lam.clamp(min=0), torch.zeros_like(lam))
        inv = torch.where(valid[:, None], 1 / (lam[:, None] + r[None, :, None]),
                          torch.zeros_like(lam[:, None]))                 # (B, R, kc)
        z = (U.transpose(1, 2) @ yc[..., None])[..., 0]                   # (B, kc)
        s2 = ((z[:, None] ** 2 * inv).sum(-1) + PSEUDO) / (k[:, None] + PSEUDO)
        logdet = (torch.log(lam[:, None] + r[None, :, None]) * valid[:, None]).sum(-1)
        loglik = -0.5 * (k[:, None] * torch.log(s2) + logdet)            # (B, R)
        fits.append((U, inv, z, s2, loglik))
    loglik = torch.stack([f[4] for f in fits], 1)                        # (B, L, R)
    post = torch.softmax((loglik + _log_prior(loglik)).flatten(1), -1).view(loglik.shape)
    return {"x": xc, "w": w, "d": d, "r": r, "kernels": fits, "post": post}


def gp_features_at(fit, x):
    """(B, M, N_FEATURES) at x (B, M, F): per kernel the predictive mean, log variance and
    posterior weight (marginal over the ratio grid), then the mixture's mean and log
    variance (see :func:`gp_moments`)."""
    d, r, post = fit["d"], fit["r"], fit["post"]
    cross = _kernel_matrices(x, fit["x"], d)
    means, logvars, weights = [], [], []
    mix_m = mix_m2 = 0
    for j, ((U, inv, z, s2, _), Kx, kxx) in enumerate(zip(fit["kernels"], cross, _diag(x, d))):
        a = (Kx * fit["w"][:, None]) @ U                                   # (B, M, kc)
        mu = torch.einsum("bmk,brk,bk->bmr", a, inv, z)
        v = s2[:, None] * (kxx[..., None] + r - torch.einsum("bmk,brk->bmr", a * a, inv))
        v = v.clamp(min=1e-6 * s2[:, None])
        p = post[:, j][:, None]                                            # (B, 1, R)
        pj = p.sum(-1).clamp(min=1e-30)
        mj = (p * mu).sum(-1) / pj
        m2j = (p * (v + mu * mu)).sum(-1) / pj
        means.append(mj)
        logvars.append(torch.log((m2j - mj * mj).clamp(min=1e-8)))
        weights.append(pj.expand_as(mj))
        mix_m = mix_m + pj * mj
        mix_m2 = mix_m2 + pj * m2j
    mix_v = (mix_m2 - mix_m * mix_m).clamp(min=1e-8)
    return torch.stack(means + logvars + weights + [mix_m, torch.log(mix_v)], -1)


def gp_features(x, y, is_context, group=16):
    """:func:`gp_features_at` every token, fitted on the context tokens; tasks of similar
    context size are fitted together, ``group`` at a time (eigh's cost grows as the cube
    of the largest context in a call: this makes a training batch about 3x cheaper).
    Computed in float64 whatever the dtype of x: in float32, near-noiseless contexts
    (ratio 1e-4) make the means wrong by up to 0.01 (standardized units)."""
    out = torch.empty((*x.shape[:2], N_FEATURES), dtype=x.dtype, device=x.device)
    x64, y64 = x.double(), y.double()
    for rows in is_context.sum(1).argsort(stable=True).split(group):
        out[rows] = gp_features_at(fit_gp(x64[rows], y64[rows], is_context[rows]),
                                   x64[rows]).to(x.dtype)
    return out


def gp_moments(features, variance_floor, variance_cap):
    """Mean and variance of the model average from :func:`gp_features_at`'s features."""
    return features[..., -2], features[..., -1].exp().clamp(variance_floor, variance_cap)

