"""In-context Gaussian-process model averaging: the closed-form baselines ``"gp"``, ``"ard"``.

For each task, on its standardized context (k points, d used features), a GP with
kernel s^2 (R_j + c + r I) is fitted for every kernel R_j of a small family (isotropic
RBFs with lengthscales ``LENGTHSCALES`` x sqrt(d), and the linear kernel x.x' / d), an
unknown constant mean (prior variance c = ``INTERCEPT``) and every noise-to-signal ratio
r of the grid ``RATIOS``. The signal variance s^2 has a closed-form maximizer given
(j, r) (shrunk towards 1, the variance of standardized y, by PSEUDO pseudo-observations,
so that tiny and exactly-fitted contexts stay well-defined), and p(j, r | context) is
proportional to the profile marginal likelihood times the prior: ``LINEAR_PRIOR`` on the
linear kernel, the rest shared by the RBFs, ratios uniform. The predictive of y at x is
the mixture over (j, r) of the GP predictives N(mu_jr(x), v_jr(x)) (v includes the noise
s^2 r): its mean and variance are the baseline's moments, and the per-kernel means, log
variances and posterior weights are features for the network.

``baseline="ard"`` adds one member: an RBF with a lengthscale per feature, set to each
context's type-II MAP (a log-normal prior per lengthscale, a few Adam steps started at the
best isotropic RBF, see ARD_SHORT; :func:`fit_lengthscales`), its evidence penalized for
the d - 1 extra hyperparameters (BIC's 1/2 log k each), its prior weight that of one more
RBF. It lets the average drop irrelevant features and stretch smooth ones (Friedman 1:
R^2 0.82 -> 0.95 with the features alone, docs/functions.md). A second form of it, the
same RBF plus a linear part (ARD_LINEAR), is fitted beside it and kept where its
penalized evidence is higher: a trend that goes on beyond the bulk of the data (skewed
columns) is then extrapolated rather than bent back to the mean. The ARD member has a
heteroscedastic variant in the same feature slot (``HETERO``): its noise variance is
s^2 r exp(h(x)) with h linear in x, fitted to the log squared leave-one-out residuals of
the ARD member; in the eigenbasis of D^-1 K D^-1 (D = diag exp(h / 2)) it is the same
ratio-grid fit, with log |D| taken from its log likelihood (heteroscedastic GP draws:
CRPS / ARD GP 0.962 -> 0.928 with the features alone, docs/functions.md).

``baseline="ard"`` also has the prior's member (PRIOR_MEMBER), on contexts of 2 (d + 1)
to PRIOR_MAX_K points: the meta-training prior's own GP draws, their hyperparameters averaged
over draws weighted by evidence rather than fitted, a quarter of them with the prior's
heteroscedastic noise. It joins the mixture's mean and variance only (the per-kernel
features are the other members'), weighted by its evidence against theirs (CRPS / ARD GP
with the features alone: GP draws 0.959 -> 0.921, heteroscedastic 0.928 -> 0.878, the 21
small real sets 0.886 -> 0.878; docs/functions.md, "The prior's member"). Further draws
of it have the prior's bimodal noise (two branches f +- gap), fitted mean-field; where
they have weight the baseline is a mixture of Gaussians, the rest of the average and
their two branches (MIXTURE_COLUMNS, :func:`gp_mixture`), whose exact denoiser the
network corrects (bimodal GP draws: 0.946 -> 0.911 with the features alone). Others have
its Student-t noise, fitted mean-field too; they join the Gaussian draws' moments, so that
outliers do not pull the mean (heavy-tailed GP draws: 0.900 -> 0.890).

Everything is computed in each kernel matrix's eigenbasis (one ``eigh`` per task and
kernel), so the whole ratio grid costs elementwise work only. Non-context tokens are
masked out: their rows and columns are replaced by -1 on the diagonal, eigenvalues that
no kernel matrix (positive semi-definite) has, and those eigen-directions are dropped.
"""

import math

import torch
from scipy.special import ndtri, stdtrit

from .priors import NOISE_RANGE, GPFunction, heteroscedastic_scale

LENGTHSCALES = (0.25, 0.5, 1.0, 2.0)  # times sqrt(d), on standardized inputs
RATIOS = tuple(10 ** (-4 + 5 * i / 15) for i in range(16))  # noise / signal variance, 1e-4..10
PSEUDO = 1.0  # pseudo-observations of variance 1 in the signal variance
# Every kernel gets a constant INTERCEPT (an unknown mean, nearly flat prior): standardized
# y is orthogonal to the constant vector, which a GP without one reads as a direction
# observed without noise (it then prefers the smallest noise ratio, most of all at k = 2).
INTERCEPT = 1e3
LINEAR_PRIOR = 0.8  # prior probability of the linear kernel (the RBFs share the rest)
N_KERNELS = len(LENGTHSCALES) + 1
# The ARD member (``ard=True``): an RBF with per-feature lengthscales sqrt(d) exp(theta),
# theta at its posterior mode (type-II MAP) under theta_i ~ N(0, ARD_PRIOR_SD^2), fitted
# by ARD_STEPS Adam steps on at most ARD_POINTS context points.
ARD_PRIOR_SD = 1.5
ARD_STEPS, ARD_LR, ARD_POINTS = 15, 0.25, 256
ARD_PENALTY = 0.5  # nats per extra lengthscale and log(k) in its weight (BIC-like)
# It starts at the best isotropic RBF (by evidence) among the members' lengthscales, or
# among the shorter ARD_SHORT (x sqrt(d), fitted only to choose the start) where the best
# of those beats them in both evidence and leave-one-out squared error. From 0.25 sqrt(d)
# the ascent stops at a smooth fit that reads a wiggly curve as noise (sunspots against
# the year: type-II ML lengthscale 0.022 of the year's std, over 200 nats above 0.25);
# on skewed inputs a short lengthscale can win the evidence alone by fitting isolated
# points exactly, and then predicts them worse (docs/functions.md).
ARD_SHORT = (1 / 32, 1 / 16, 1 / 8)
# The ARD member has a second form, fitted beside it: its RBF plus g times the linear
# kernel, g (the linear part's variance over the RBF's) at the type-II MAP with the
# lengthscales under log g ~ N(log ARD_LINEAR, ARD_PRIOR_SD^2), started at ARD_LINEAR.
# Each task keeps the form of higher evidence, the sum penalized ARD_PENALTY log k for g.
# A trend plus a bend is common in real data and an RBF alone extrapolates it back to
# the mean (docs/functions.md); fitted as a second candidate rather than always, the
# extra hyperparameter cannot divert the lengthscales' ascent to a worse optimum.
ARD_LINEAR = 0.1
# The heteroscedastic variant of the ARD member (``ard=True``): the same kernel with noise
# variance s^2 r exp(h(x)), h linear in x, fitted by ridge (prior slope variance
# HET_PRIOR_VAR per feature) to the log squared leave-one-out residuals of the ARD member
# at its best ratio (E log chi2_1 is a constant, absorbed by the ratio grid); it shares the
# ARD member's feature slot and HET_SHARE of its prior weight; its evidence is penalized
# HET_PENALTY nats per slope and log(k), and h is clipped to +-HET_CLIP.
HETERO = True
HET_PRIOR_VAR, HET_SHARE, HET_CLIP, HET_PENALTY = 1.0, 0.8, 4.0, 0.25
# The prior's member (``ard=True``, contexts of 2 (d + 1) to PRIOR_MAX_K points, d used
# columns: in contexts nearer to determined, a line and the prior's GP draws have evidence
# alike, and the Gaussian of their mixture cost linear tasks 40-70 % more error with the
# network trained without it, docs/functions.md): the GP draws of
# the meta-training prior itself (priors.GPFunction: RBF or Matern-5/2, Gamma lengthscales
# per feature, irrelevant features, at times a linear part; noise log-uniform over
# NOISE_RANGE), averaged over PRIOR_DRAWS draws of those hyperparameters (the same draws,
# from PRIOR_SEED, for every context) weighted by their evidence, instead of fitted: with
# a few points a type-II fit of d lengthscales overfits them, the average does not. It
# enters the mixture's mean and variance with prior weight PRIOR_SHARE (the other members
# share the rest) against the others' evidence; the per-kernel features keep the other
# members only. Draws are kept while their weight is above PRIOR_KEEP of the largest.
# A share PRIOR_HET of the draws have the prior's heteroscedastic noise (sd growing as
# exp(x.u) along a random unit direction u, priors.add_noise), about its share among the
# prior's Gaussian and heteroscedastic noise (0.15 / 0.65).
PRIOR_MEMBER = True
PRIOR_DRAWS, PRIOR_MAX_K, PRIOR_SHARE, PRIOR_SEED, PRIOR_KEEP = 512, 100, 0.5, 0, 1e-10
PRIOR_HET = 0.25
# Besides them, PRIOR_BIMODAL_DRAWS draws have the prior's bimodal noise (priors.add_noise:
# y = f + gap b + sd e, b = +-1 per point, gap uniform in BIMODAL_GAP): their posterior
# over f and the branches b is mean-field (q(f) q(b), BIMODAL_ITERS coordinate steps) and
# their evidence its lower bound; they have prior weight PRIOR_BIMODAL within the member.
# Their predictive, two Gaussians f +- gap, is a component of the baseline's mixture of its
# own (MIXTURE_COLUMNS, :func:`gp_mixture`), dropped where its weight is below MIXTURE_MIN.
PRIOR_BIMODAL, PRIOR_BIMODAL_DRAWS, BIMODAL_ITERS, BIMODAL_GAP = 0.25, 256, 15, (0.5, 2.0)
MIXTURE_MIN = 1e-4
# And PRIOR_STUDENT_DRAWS draws have the prior's Student-t noise (priors.add_noise: sd t_nu,
# nu uniform in STUDENT_DF): their posterior over f and each point's noise precision is
# mean-field (STUDENT_ITERS steps: 3 score as well as 8, and the member takes 30 % less
# time at 100 points, docs/functions.md), their evidence its lower bound; they have prior
# weight PRIOR_STUDENT against the Gaussian draws (the two of them share 1 - PRIOR_BIMODAL).
# Their predictive joins the Gaussian draws' moments, the t noise as the Gaussian of equal
# interquartile range: f is not pulled towards outliers (heavy-tailed GP draws, CRPS / ARD
# GP with the features alone: 0.900 -> 0.890, docs/functions.md).
PRIOR_STUDENT, PRIOR_STUDENT_DRAWS, STUDENT_ITERS, STUDENT_DF = 0.25, 256, 3, (2, 10)
# the ARD baseline's columns before the mixture's mean and log variance: the bimodal
# part's weight w; the rest's mean and log variance; the bimodal part's mean, log
# variance and offset (its two components m -+ offset)
MIXTURE_COLUMNS = 6


def n_features(ard=False):
    """Feature count of :func:`gp_features_at` that the network reads
    (:func:`network_features`): 3 per kernel, 2 for the mixture."""
    return 3 * (N_KERNELS + int(ard)) + 2


def n_columns(ard=False):
    """Column count of :func:`gp_features_at`: :func:`n_features`, and with ``ard`` the
    MIXTURE_COLUMNS of :func:`gp_mixture` before the mixture's mean and log variance."""
    return n_features(ard) + MIXTURE_COLUMNS * int(ard)


def network_features(features, ard=False):
    """The columns of :func:`gp_features_at` that the network reads (without the ARD
    baseline's MIXTURE_COLUMNS)."""
    if not ard:
        return features
    return torch.cat([features[..., :n_features(ard) - 2], features[..., -2:]], -1)


def _used(x, w):
    """(B, F) bool: the features in use (non-zero at some context point, weights w)."""
    return ((x * w[..., None]) != 0).any(1)


def _n_used(x, w):
    """(B, 1, 1) number of features in use, at least 1."""
    return _used(x, w).sum(-1).clamp(min=1).to(x.dtype)[:, None, None]


def _sq_dist(xa, xb):
    sq = (xa * xa).sum(-1)[..., :, None] + (xb * xb).sum(-1)[..., None, :] - 2 * xa @ xb.transpose(1, 2)
    return sq.clamp(min=0)


def _ard_kernel(xa, xb, ls, g, d):
    """RBF with per-task, per-feature lengthscales ls (B, F), plus g (B, 1) times the
    linear kernel, plus the intercept."""
    rbf = torch.exp(-0.5 * _sq_dist(xa / ls[:, None], xb / ls[:, None]))
    return rbf + g[:, :, None] * (xa @ xb.transpose(1, 2)) / d + INTERCEPT


def _rbf_matrices(xa, xb, d, lengthscales):
    """Isotropic RBFs (lengthscales x sqrt(d)) plus the intercept: a list of (B, Na, Nb)."""
    sq = _sq_dist(xa, xb) / d
    return [torch.exp(-0.5 * sq / c**2) + INTERCEPT for c in lengthscales]


def _kernel_matrices(xa, xb, d, ls=None, g=None):
    """Unit-variance kernels between xa (B, Na, F) and xb (B, Nb, F): a list of (B, Na, Nb),
    the ARD member last when its lengthscales ``ls`` (B, F) and linear part g are given."""
    out = _rbf_matrices(xa, xb, d, LENGTHSCALES) + [xa @ xb.transpose(1, 2) / d + INTERCEPT]
    return out if ls is None else out + [_ard_kernel(xa, xb, ls, g, d)]


def _diag(x, d, g=None):
    """Prior variances k(x, x) of each kernel at x (B, N, F): a list of (B, N), the ARD
    member's last when its linear part g (B, 1) is given."""
    ones = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    lin = (x * x).sum(-1) / d[..., 0]
    out = [ones] * len(LENGTHSCALES) + [lin] + ([] if g is None else [ones + g * lin])
    return [v + INTERCEPT for v in out]


def _log_prior(n_kernels, dtype, device, het=False):
    """Log prior over (kernel, ratio) (1, L, 1): the linear kernel LINEAR_PRIOR, the RBFs
    (the ARD member among them) share the rest; ratios uniform. ``het``: the ARD member's
    share split with its heteroscedastic variant, appended last (HET_SHARE)."""
    rbf = (1 - LINEAR_PRIOR) / (n_kernels - 1)
    p = [rbf] * len(LENGTHSCALES) + [LINEAR_PRIOR]
    p += [rbf] * (n_kernels - len(p))  # the ARD member
    if het:
        p = p[:-1] + [rbf * (1 - HET_SHARE), rbf * HET_SHARE]
    return torch.log(torch.tensor(p, dtype=dtype, device=device))[None, :, None]


def _ard_constants(x, w, sqrt_d):
    """What :func:`_ard_objective` needs of the data alone (the same at every Adam step):
    the context mask, the identity, the masked linear kernel and the masked intercept."""
    mask = w[:, :, None] * w[:, None, :]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    lin = (x @ x.transpose(1, 2)) / sqrt_d[..., None] ** 2 * mask
    return mask, eye, lin, INTERCEPT * mask


def _ard_objective(x, y, w, sqrt_d, used, theta, log_r, log_g, linear, constants=None):
    """Each task's negative log posterior of (theta, log r, log g) under the ARD member
    (profile marginal likelihood of :func:`fit_gp` plus theta's N(0, ARD_PRIOR_SD^2) prior
    on used features and, where ``linear`` (B, 1) is 1, the linear part g with log g's
    N(log ARD_LINEAR, ARD_PRIOR_SD^2) prior; where it is 0 the member has no linear part)
    and its gradient, in closed form: with A the regularized kernel matrix, alpha = A^-1 y
    and W = (A^-1 - k alpha alpha^T / (y.alpha + PSEUDO)) / 2, d nll / dA = W, so
    d nll / d theta_f = sum_ij W_ij E_ij (x_if - x_jf)^2 / ls_f^2 (E the RBF part of A),
    d nll / d log g = g sum_ij W_ij x_i.x_j / d and d nll / d log r = r tr(W) over context
    tokens. 2.5x faster than autograd through the Cholesky, and equal to it (tested).
    Masked tokens get a unit diagonal and nothing else, which changes neither the
    quadratic form nor the log determinant. ``constants``: :func:`_ard_constants` of
    (x, w, sqrt_d), computed here if not given. Returns (nll (B,), d theta (B, F), d log r
    (B, 1), d log g (B, 1))."""
    k = w.sum(1)
    mask, eye, lin, intercept = constants or _ard_constants(x, w, sqrt_d)
    ls = sqrt_d * theta.exp()
    xs = x / ls[:, None]
    E = torch.exp(-0.5 * _sq_dist(xs, xs)) * mask                       # the RBF part
    g = log_g.exp() * linear
    r = log_r.exp()
    A = E + g[:, :, None] * lin + intercept + eye * (w * r + 1 - w)[:, None]
    L, _ = torch.linalg.cholesky_ex(A)
    alpha = torch.cholesky_solve(y[..., None], L)[..., 0]
    quad = (y * alpha).sum(-1)
    logdet = 2 * torch.log(L.diagonal(dim1=1, dim2=2)).sum(-1)
    dev_g = (log_g - math.log(ARD_LINEAR)) * linear
    prior = 0.5 * (((theta / ARD_PRIOR_SD) ** 2 * used).sum(-1) + (dev_g[:, 0] / ARD_PRIOR_SD) ** 2)
    nll = 0.5 * (k * torch.log((quad + PSEUDO) / (k + PSEUDO)) + logdet) + prior
    c = k / (quad + PSEUDO)
    W = torch.cholesky_inverse(L).sub_(c[:, None, None] * alpha[:, :, None] * alpha[:, None, :])
    W.mul_(0.5)
    M = W * E
    grad = 2 * ((M.sum(-1)[..., None] * xs * xs).sum(1) - (xs * (M @ xs)).sum(1))
    d_theta = (grad + theta / ARD_PRIOR_SD**2) * used
    d_log_r = r * (W.diagonal(dim1=1, dim2=2) * w).sum(-1, keepdim=True)
    d_log_g = g * (W * lin).sum((1, 2))[:, None] + dev_g / ARD_PRIOR_SD**2
    return nll, d_theta, d_log_r, d_log_g


def fit_lengthscales(x, y, w, d, theta0, log_r0, linear=None):
    """Per-feature RBF lengthscales (B, F) and linear part g (B, 1) at each task's type-II
    MAP of :func:`_ard_objective` (noise ratio free), theta = log(lengthscale / sqrt(d)):
    ARD_STEPS Adam steps from theta0 (B, 1), log ratio log_r0 (B, 1) and g = ARD_LINEAR,
    on at most ARD_POINTS tokens evenly spaced over the sequence (so that sorted data give
    a spread subset). ``linear`` (B, 1): 1 where the member has a linear part, 0 (or None
    for all) where g is 0. Tasks are independent (Adam is elementwise)."""
    if x.shape[1] > ARD_POINTS:
        idx = torch.linspace(0, x.shape[1] - 1, ARD_POINTS, device=x.device).round().long()
        x, y, w = x[:, idx], y[:, idx], w[:, idx]
    used = _used(x, w).to(x.dtype)                                     # (B, F)
    sqrt_d = d[:, 0].sqrt()                                            # (B, 1)
    theta = (theta0.expand_as(used) * used).clone()
    log_r = log_r0.clone()
    linear = torch.zeros_like(log_r) if linear is None else linear
    log_g = torch.full_like(log_r, math.log(ARD_LINEAR))
    opt = torch.optim.Adam([theta, log_r, log_g], lr=ARD_LR)
    constants = _ard_constants(x, w, sqrt_d)
    for _ in range(ARD_STEPS):
        _, theta.grad, log_r.grad, log_g.grad = _ard_objective(x, y, w, sqrt_d, used, theta,
                                                               log_r, log_g, linear, constants)
        opt.step()
        log_r.clamp_(math.log(RATIOS[0]), math.log(RATIOS[-1]))
        theta.clamp_(-4, 4)
        log_g.clamp_(-10, 5)
    return sqrt_d * theta.exp(), log_g.exp() * linear


def _eigh(K):
    """Batched symmetric eigendecomposition, by LAPACK on the CPU: CUDA's batched Jacobi
    eigh can fail to converge on the repeated eigenvalues of masked tokens (as in
    ``denoiser.evidence_penalty``)."""
    lam, U = torch.linalg.eigh(K.cpu())
    return lam.to(K.device), U.to(K.device)


def _fit_kernel(K, yc, k, r):
    """Eigenbasis fit of one kernel matrix (masked as in :func:`fit_gp`) over the ratio
    grid: (U, inverse eigenvalues (B, R, kc), z = U^T y, profile s2 (B, R), log lik (B, R))."""
    lam, U = _eigh(K)
    valid = lam > -0.5
    lam = torch.where(valid, lam.clamp(min=0), torch.zeros_like(lam))
    inv = torch.where(valid[:, None], 1 / (lam[:, None] + r[None, :, None]),
                      torch.zeros_like(lam[:, None]))                     # (B, R, kc)
    z = (U.transpose(1, 2) @ yc[..., None])[..., 0]                       # (B, kc)
    s2 = ((z[:, None] ** 2 * inv).sum(-1) + PSEUDO) / (k[:, None] + PSEUDO)
    logdet = (torch.log(lam[:, None] + r[None, :, None]) * valid[:, None]).sum(-1)
    return U, inv, z, s2, -0.5 * (k[:, None] * torch.log(s2) + logdet)


def _log_noise(het, x):
    """The heteroscedastic variant's log noise multiplier h at x (B, N, F), clipped."""
    return ((x - het["xm"][:, None]) @ het["c"][..., None])[..., 0].clamp(-HET_CLIP, HET_CLIP)


def _loo_residuals(fit, w, j):
    """Leave-one-out residuals (B, kc) of a kernel's eigenbasis fit at ratio index j (B,),
    zero at masked tokens: (A^-1 y)_i / (A^-1)_ii."""
    U, inv, z = fit[:3]
    inv_j = inv[torch.arange(len(j), device=j.device), j]                # (B, kc)
    diag = (U * U) @ inv_j[..., None]
    return (U @ (inv_j * z)[..., None] / diag.clamp(min=1e-300))[..., 0] * w


def _ard_start(fits, short, w):
    """Start (index into LENGTHSCALES + ARD_SHORT (B,), ratio index (B,)) of the ARD
    member's ascent, from the isotropic RBF fits of the members and of ARD_SHORT."""
    cands = fits + short
    loglik = torch.stack([f[4] for f in cands], 1)                      # (B, C, R)
    best_ll, best_r = loglik.max(-1)                                   # (B, C)
    b = torch.arange(len(w), device=w.device)
    members = best_ll[:, :len(fits)].argmax(-1)
    shorter = len(fits) + best_ll[:, len(fits):].argmax(-1)
    sse = torch.stack([(_loo_residuals(f, w, best_r[:, c]) ** 2).sum(1)
                       for c, f in enumerate(cands)], 1)                # (B, C)
    take = (best_ll[b, shorter] > best_ll[b, members]) & (sse[b, shorter] < sse[b, members])
    start = torch.where(take, shorter, members)
    return start, best_r[b, start]


def _ard_member(xc, yc, w, k, r, d, mask, pad, theta0, log_r0):
    """The ARD member in both its forms, the RBF alone and with a linear part (fitted
    together as 2B tasks), each task's form of higher penalized evidence kept: its fit
    tuple (log likelihood penalized ARD_PENALTY log k per hyperparameter beyond one
    lengthscale), lengthscales (B, F), linear part g (B, 1; 0 for the RBF alone), the
    RBF-alone form's lengthscales (for :func:`relevant_features`) and its kernel matrix
    (masked as in :func:`fit_gp`)."""
    B = len(xc)
    two = lambda t: torch.cat([t, t])  # noqa: E731
    linear = torch.zeros((2 * B, 1), dtype=xc.dtype, device=xc.device)
    linear[B:] = 1
    ls, g = fit_lengthscales(two(xc), two(yc), two(w), two(d), two(theta0), two(log_r0), linear)
    K = _ard_kernel(two(xc), two(xc), ls, g, two(d)) * two(mask) - two(pad)
    U, inv, z, s2, loglik = _fit_kernel(K, two(yc), two(k), r)
    extra = two(d)[:, 0] - 1 + linear                 # lengthscales beyond one, and g
    loglik = loglik - ARD_PENALTY * extra * torch.log(two(k).clamp(min=1))[:, None]
    keep = torch.arange(B, device=xc.device) + B * (loglik[B:].logsumexp(-1)
                                                    > loglik[:B].logsumexp(-1))
    fit = (U[keep], inv[keep], z[keep], s2[keep], loglik[keep])
    # the RBF alone reads a linear effect as a long lengthscale, the sum may leave it to g
    return fit, ls[keep], g[keep], ls[:B], K[keep]


def _het_member(K, yc, w, k, r, d, ard_fit, xc):
    """The heteroscedastic variant of the ARD member (see HETERO): its fit tuple, penalized
    log likelihood and the log-variance model (centre xm (B, F), slope c (B, F))."""
    loo = _loo_residuals(ard_fit, w, ard_fit[4].argmax(-1))
    kk = k[:, None].clamp(min=1)
    tiny = 1e-6 * (loo**2 * w).sum(1, keepdim=True) / kk
    ell = torch.log(loo**2 + tiny + 1e-300) * w
    xm = (xc * w[..., None]).sum(1) / kk
    lm = ell.sum(1, keepdim=True) / kk
    Xc = (xc - xm[:, None]) * w[..., None]
    eye = torch.eye(xc.shape[-1], dtype=xc.dtype, device=xc.device)
    G = Xc.transpose(1, 2) @ Xc + (math.pi**2 / 2 / HET_PRIOR_VAR) * eye
    c = torch.linalg.solve(G, (Xc.transpose(1, 2) @ ((ell - lm) * w)[..., None]))[..., 0]
    het = {"xm": xm, "c": c}
    h = _log_noise(het, xc) * w
    het["Dinv"] = Dinv = torch.exp(-h / 2)
    fit = _fit_kernel(K * Dinv[:, :, None] * Dinv[:, None, :], yc * Dinv, k, r)
    penalty = HET_PENALTY * d[:, 0] * torch.log(k.clamp(min=1))[:, None]
    loglik = fit[4] - 0.5 * h.sum(1, keepdim=True) - penalty
    return (*fit[:4], loglik), het


def _centred_kernel(h, xc):
    """The S kernels h (dict of (S, ...)) over each context xc (B, k, F), f centred over
    the context and scaled to unit mean variance there: (C (B, S, k, k), and the kernel's
    row means (B, S, k), their mean and the scale (B, S) for :func:`_centred_cross`)."""
    B, k, F = xc.shape
    S = len(h["d"])
    X = xc[:, None].expand(B, S, k, F).reshape(B * S, k, F)
    K = GPFunction.kernel({key: v.repeat(B, *[1] * (v.dim() - 1)) for key, v in h.items()},
                          X, X).view(B, S, k, k)
    row = K.mean(-1)                                                      # (B, S, k)
    tot = row.mean(-1)                                                    # (B, S)
    C = K.sub_(row[..., None]).sub_(row[..., None, :]).add_(tot[..., None, None])
    scale = (k - 1) / C.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1e-12)
    return C.mul_(scale[..., None, None]), row, tot, scale


def _centred_cross(fit, xq):
    """:func:`_centred_kernel`'s covariances between queries xq (B, Q, F) and the context
    (B, n, Q, k), and at the queries (B, n, Q), for the n kept draws of ``fit``."""
    B, n, k = fit["row"].shape
    h = {key: v.flatten(0, 1) for key, v in fit["h"].items()}            # (B n, ...)
    xc = fit["x"][:, None].expand(B, n, k, -1).flatten(0, 1)
    Xq = xq[:, None].expand(B, n, xq.shape[1], -1).flatten(0, 1)
    Kx = GPFunction.kernel(h, Xq, xc).view(B, n, -1, k)
    rx = Kx.mean(-1)                                                      # (B, n, Q)
    tot, scale = fit["tot"][..., None], fit["scale"][..., None]
    Cx = Kx.sub_(rx[..., None]).sub_(fit["row"][:, :, None]).add_(tot[..., None])
    Cx.mul_(scale[..., None])
    kxx = GPFunction.kernel_diagonal(h, Xq).view(B, n, -1)
    return Cx, scale * (kxx - 2 * rx + tot)


def _keep(loglik):
    """Posterior weights (B, n) of the n draws whose weight is above PRIOR_KEEP of the
    largest in some context (the others of a context get weight 0), and their indices."""
    post = torch.softmax(loglik, -1)                                      # (B, S)
    n = int((post >= PRIOR_KEEP * post.max(-1, keepdim=True).values).sum(-1).max())
    post, idx = post.topk(n, -1)                                          # (B, n)
    post = torch.where(post >= PRIOR_KEEP * post[:, :1], post, torch.zeros_like(post))
    return post / post.sum(-1, keepdim=True), idx


def _take(t, idx):
    """The rows idx (B, n) of each context's draws t (B, S, ...)."""
    return t[torch.arange(len(idx), device=t.device)[:, None], idx]


def _prior_fit(xc, yc):
    """The prior's member (PRIOR_MEMBER) fitted to B contexts of k points that use all
    their F columns, xc (B, k, F), yc (B, k) (standardized; float64): per draw of the
    prior's kernel (the same PRIOR_DRAWS draws for each context: they depend on F only)
    and noise (sd, and for a share PRIOR_HET of the draws a direction), a GP whose f is
    centred over the context and scaled to unit mean variance there (the first-order
    covariance of a standardized draw), weighted by its profile likelihood (as
    :func:`_fit_kernel`'s); the member's log evidence (B,) is their mean. With
    PRIOR_STUDENT, :func:`_student_fit`'s draws join them: "rho" (B,) is their posterior
    weight against the Gaussian draws; with PRIOR_BIMODAL, :func:`_bimodal_fit`'s: "pi"
    (B,) is their posterior weight within the member. The evidence grows by the log of the
    mixture of the kinds' evidence (full log likelihoods) over that of the Gaussian draws.
    Each context keeps the draws whose weight is above PRIOR_KEEP of its largest."""
    B, k, F = xc.shape
    S = PRIOR_DRAWS
    g = torch.Generator().manual_seed(PRIOR_SEED)  # the draws on the CPU, the rest on xc's device
    h, sd = _draw_gps(S, F, xc.dtype, g)
    sd = sd[:, None]
    u = torch.randn((S, F), generator=g, dtype=xc.dtype)
    u *= (torch.rand((S, 1), generator=g, dtype=xc.dtype) < PRIOR_HET) / u.norm(dim=1, keepdim=True)
    h, sd, u = {key: v.to(xc.device) for key, v in h.items()}, sd.to(xc.device), u.to(xc.device)
    C, row, tot, scale = _centred_kernel(h, xc)
    A = C.add_(INTERCEPT)
    A.diagonal(dim1=-2, dim2=-1).add_(_prior_noise(sd, u, xc))
    L, info = torch.linalg.cholesky_ex(A)
    a = torch.linalg.solve_triangular(L, yc[:, None, :, None].expand(B, S, k, 1), upper=False)[..., 0]
    q = (a * a).sum(-1)
    s2 = (q + PSEUDO) / (k + PSEUDO)
    loglik = -0.5 * (k * torch.log(s2) + 2 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1))
    loglik = torch.where(info == 0, loglik, torch.full_like(loglik, -math.inf))
    post, idx = _keep(loglik)
    take = lambda t: _take(t, idx)  # noqa: E731
    evidence = torch.logsumexp(loglik, -1) - math.log(S)
    out = {"x": xc, "h": {key: v[idx] for key, v in h.items()}, "sd": sd[idx], "u": u[idx],
           "row": take(row), "tot": take(tot), "scale": take(scale), "L": take(L),
           "a": take(a), "s2": take(s2), "post": post, "evidence": evidence}
    full = loglik - 0.5 * (k * math.log(2 * math.pi) + q / s2)           # with its constants
    full = both = torch.logsumexp(full, -1) - math.log(S)
    if PRIOR_BIMODAL > 0:  # drawn before the Student-t draws
        out["bimodal"] = bimodal = _bimodal_fit(xc, yc, g)
    if PRIOR_STUDENT > 0:
        out["student"] = student = _student_fit(xc, yc, g)
        both = torch.logaddexp(math.log(1 - PRIOR_STUDENT) + full,
                               math.log(PRIOR_STUDENT) + student["evidence"])
        out["rho"] = torch.exp(math.log(PRIOR_STUDENT) + student["evidence"] - both)
    if PRIOR_BIMODAL > 0:
        unimodal = both
        both = torch.logaddexp(math.log(1 - PRIOR_BIMODAL) + unimodal,
                               math.log(PRIOR_BIMODAL) + bimodal["evidence"])
        out["pi"] = torch.exp(math.log(PRIOR_BIMODAL) + bimodal["evidence"] - both)
    out["evidence"] = evidence + both - full
    return out


def _draw_gps(S, F, dtype, g):
    """S draws (on g) of the prior's GP kernel for F columns and its noise sd (S,),
    log-uniform over NOISE_RANGE, as each kind of the member's draws starts."""
    h = GPFunction().hyperparameters(torch.ones((S, 1, F), dtype=dtype), g)
    lo, hi = (math.log(v) for v in NOISE_RANGE)
    return h, torch.exp(lo + (hi - lo) * torch.rand((S,), generator=g, dtype=dtype))


def _kl_of_f(n, dA, alpha, m, L):
    """KL(q(f) || p(f)) (..., ) of a mean-field fit's q(f), the GP posterior with noise
    variances n (..., k) under the prior K = A - diag n (A = L L^T, dA the diagonal of
    A^-1, alpha = A^-1 y, m = E f): V = K - K A^-1 K = diag n - diag n A^-1 diag n."""
    logdet = 2 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)
    k = n.shape[-1]
    return 0.5 * ((n * dA).sum(-1) + (alpha * m).sum(-1) - k + logdet - torch.log(n).sum(-1))


def _mean_field_draws(xc, h, a2, centring, L, info, alpha, elbo, **per_draw):
    """What a mean-field fit of draws whose f has the prior a2 C + INTERCEPT keeps
    (:func:`_bimodal_fit`, :func:`_student_fit`): the draws above PRIOR_KEEP (by their
    evidence lower bounds ``elbo``, -inf where ``info`` says the factorization failed),
    with what :func:`_f_at` needs and the ``per_draw`` values (S,); their posterior
    weights "post" and the evidence, the mean of the bounds' exponentials."""
    elbo = torch.where(info == 0, elbo, torch.full_like(elbo, -math.inf))
    post, idx = _keep(elbo)
    take = lambda t: _take(t, idx)  # noqa: E731
    row, tot, scale = centring
    return {"x": xc, "h": {key: v[idx] for key, v in h.items()}, "a2": a2[idx],
            **{key: v[idx] for key, v in per_draw.items()}, "row": take(row),
            "tot": take(tot), "scale": take(scale), "L": take(L), "alpha": take(alpha),
            "post": post, "evidence": torch.logsumexp(elbo, -1) - math.log(elbo.shape[-1])}


def _bimodal_fit(xc, yc, g):
    """PRIOR_BIMODAL_DRAWS draws of the prior's GP with bimodal noise (their kernels, sd
    and gap drawn on g), fitted to each context xc (B, k, F), yc (B, k) standardized:
    y = a (f + gap b + sd e) + c, f centred and scaled as in :func:`_centred_kernel`,
    a = (1 + gap^2 + sd^2)^-1/2 (y's sd over f's; a flat constant c of variance
    INTERCEPT), b = +-1 per point with probability 1/2. The posterior q(f) q(b) is
    mean-field: E b = tanh(a gap (y - E f) / (a sd)^2), q(f) the GP posterior given
    y - a gap E b; its evidence lower bound weights each draw (the answer of
    benchmarks/family_ceiling.py's bimodal ceiling, with which it is tested to agree)."""
    B, k, F = xc.shape
    S = PRIOR_BIMODAL_DRAWS
    h, sd = _draw_gps(S, F, xc.dtype, g)
    gap = BIMODAL_GAP[0] + (BIMODAL_GAP[1] - BIMODAL_GAP[0]) * torch.rand((S,), generator=g,
                                                                          dtype=xc.dtype)
    h, sd, gap = {key: v.to(xc.device) for key, v in h.items()}, sd.to(xc.device), gap.to(xc.device)
    a2 = 1 / (1 + gap**2 + sd**2)
    noise, offset = a2 * sd**2, a2.sqrt() * gap                           # (S,)
    C, row, tot, scale = _centred_kernel(h, xc)
    A = C.mul_(a2[:, None, None]).add_(INTERCEPT)                         # the prior of f
    A.diagonal(dim1=-2, dim2=-1).add_(noise[:, None])
    L, info = torch.linalg.cholesky_ex(A)
    Ainv = torch.cholesky_inverse(L)
    y = yc[:, None].expand(B, S, k)
    n, o = noise[:, None], offset[:, None]
    mu = torch.zeros_like(y)                                              # E b
    for step in range(BIMODAL_ITERS + 1):
        r = y - o * mu
        alpha = (Ainv @ r[..., None])[..., 0]
        m = r - n * alpha                                     # E f = (A - noise I) alpha
        if step < BIMODAL_ITERS:
            mu = torch.tanh(o * (y - m) / n)
    dA = Ainv.diagonal(dim1=-2, dim2=-1)
    v = n - n**2 * dA                                                     # Var f
    resid = ((y - o * mu - m) ** 2 + v + o**2 * (1 - mu**2)).sum(-1)
    expected = -0.5 * k * torch.log(2 * math.pi * noise) - 0.5 * resid / noise
    p, q = ((1 + mu) / 2).clamp(min=1e-300), ((1 - mu) / 2).clamp(min=1e-300)
    entropy = -(p * p.log() + q * q.log()).sum(-1)
    elbo = expected - _kl_of_f(n.expand_as(dA), dA, alpha, m, L) - k * math.log(2) + entropy
    return _mean_field_draws(xc, h, a2, (row, tot, scale), L, info, alpha, elbo,
                             noise=noise, offset=offset)


def _student_fit(xc, yc, g):
    """PRIOR_STUDENT_DRAWS draws of the prior's GP with Student-t noise (their kernels, sd
    and degrees of freedom nu drawn on g), fitted to each context xc (B, k, F), yc (B, k)
    standardized: y = a (f + sd e / sqrt(lam)) + c, lam ~ Gamma(nu / 2, nu / 2) per point,
    f centred and scaled as in :func:`_centred_kernel`, a = (1 + sd^2)^-1/2 and a flat
    constant c of variance INTERCEPT. The posterior q(f) q(lam) is mean-field: q(f) the
    GP posterior with noise variances (a sd)^2 / E lam, q(lam_i) Gamma((nu + 1) / 2,
    (nu + E (y_i - f_i)^2 / (a sd)^2) / 2), STUDENT_ITERS steps from E lam = 1; its
    evidence lower bound weights each draw."""
    B, k, F = xc.shape
    S = PRIOR_STUDENT_DRAWS
    h, sd = _draw_gps(S, F, xc.dtype, g)
    nu = torch.randint(STUDENT_DF[0], STUDENT_DF[1] + 1, (S,), generator=g).to(xc.dtype)
    iqr = _t_iqr_ratio(nu)
    h, sd, nu, iqr = ({key: v.to(xc.device) for key, v in h.items()}, sd.to(xc.device),
                      nu.to(xc.device)[:, None], iqr.to(xc.device))
    a2 = 1 / (1 + sd**2)
    scale2 = (a2 * sd**2)[:, None]                                       # (a sd)^2, (S, 1)
    C, row, tot, scale = _centred_kernel(h, xc)
    Kf = C.mul_(a2[:, None, None]).add_(INTERCEPT)                        # the prior of f
    y = yc[:, None].expand(B, S, k)
    lam = torch.ones_like(y)                                              # E lam
    for _ in range(STUDENT_ITERS):
        n = scale2 / lam
        A = Kf.clone()
        A.diagonal(dim1=-2, dim2=-1).add_(n)
        L, info = torch.linalg.cholesky_ex(A)
        Ainv = torch.cholesky_inverse(L)
        alpha = (Ainv @ y[..., None])[..., 0]
        m = y - n * alpha                                    # E f = (A - diag n) alpha
        dA = Ainv.diagonal(dim1=-2, dim2=-1)
        r = ((y - m) ** 2 + n - n**2 * dA) / scale2            # E (y - f)^2 / (a sd)^2
        shape, rate = (nu + 1) / 2, (nu + r) / 2
        lam = shape / rate
    # the bound for q(f) of the last step's noise n and q(lam) of the last update
    log_lam = torch.digamma(shape) - torch.log(rate)                      # E log lam
    expected = (-0.5 * torch.log(2 * math.pi * scale2) + 0.5 * log_lam - 0.5 * lam * r).sum(-1)
    half = nu / 2
    log_prior = (half * torch.log(half) - torch.lgamma(half) + (half - 1) * log_lam
                 - half * lam).sum(-1)
    entropy = (shape - torch.log(rate) + torch.lgamma(shape)
               + (1 - shape) * torch.digamma(shape)).sum(-1)
    elbo = expected + log_prior + entropy - _kl_of_f(n, dA, alpha, m, L)
    return _mean_field_draws(xc, h, a2, (row, tot, scale), L, info, alpha, elbo,
                             noise=scale2[:, 0] * iqr**2)


def _t_iqr_ratio(nu):
    """The interquartile range of Student's t with nu degrees of freedom over the standard
    normal's."""
    return torch.from_numpy(stdtrit(nu.numpy(), 0.75) / ndtri(0.75)).to(nu.dtype)


def _student_moments(sf, xq):
    """:func:`_student_fit`'s draws at xq (B, Q, F): the mean and second moment (2, B, Q)
    of f plus the t noise as the Gaussian of equal interquartile range."""
    mf, vf = _f_at(sf, xq)
    v = vf + sf["noise"][..., None]
    p = sf["post"][..., None]
    return torch.stack([(p * mf).sum(1), (p * (v + mf * mf)).sum(1)])


def _prior_noise(sd, u, x):
    """Noise variances (B, S, N) of S draws with noise sd (S, 1) and unit direction u
    (S, F) (or per task: (B, S, 1), (B, S, F)) at x (B, N, F): the prior's heteroscedastic
    noise (priors.add_noise; u = 0: homoscedastic)."""
    return (sd * heteroscedastic_scale((x @ u.transpose(-1, -2)).transpose(-1, -2))) ** 2


def _prior_moments(pf, x, chunk=2**23):
    """At x (B, M, F), the prior's member :func:`_prior_fit`: the mean and second moment
    (2, B, M) of its Gaussian draws (with its Student-t draws, of the two kinds, weighted
    by "rho") and, with its bimodal draws, their two branches' mean,
    variance and offset from it (3, B, M) (None without them), ``chunk`` kernel entries
    at a time."""
    B, n, k = pf["a"].shape
    bf, sf = pf.get("bimodal"), pf.get("student")
    n_all = n + sum(f["post"].shape[1] for f in (bf, sf) if f is not None)
    out, branches = [], []
    for xq in x.split(max(1, chunk // (B * n_all * k)), dim=1):
        Cx, cxx = _centred_cross(pf, xq)
        Bm = torch.linalg.solve_triangular(pf["L"], Cx.add_(INTERCEPT).transpose(-1, -2),
                                           upper=False)
        mu = (pf["a"][..., None] * Bm).sum(-2)                             # (B, n, Q)
        s2 = pf["s2"][..., None]
        noise = _prior_noise(pf["sd"], pf["u"], xq)
        v = (s2 * (cxx + noise + INTERCEPT - (Bm * Bm).sum(-2))).clamp(min=1e-6 * s2)
        p = pf["post"][..., None]
        moments = torch.stack([(p * mu).sum(1), (p * (v + mu * mu)).sum(1)])
        if sf is not None:
            rho = pf["rho"][:, None]
            moments = (1 - rho) * moments + rho * _student_moments(sf, xq)
        out.append(moments)
        if bf is not None:
            branches.append(_bimodal_moments(bf, xq))
    return torch.cat(out, -1), (None if bf is None else torch.cat(branches, -1))


def _f_at(fit, xq):
    """f's posterior mean and variance (B, n, Q) at xq (B, Q, F) under each kept draw of a
    mean-field fit whose f has the prior a^2 C + INTERCEPT and whose last step's
    Cholesky factor and weights are "L" and "alpha" (:func:`_bimodal_fit`,
    :func:`_student_fit`)."""
    Cx, cxx = _centred_cross(fit, xq)
    a2 = fit["a2"][..., None]                                             # (B, n, 1)
    Kx = Cx.mul_(a2[..., None]).add_(INTERCEPT)
    mf = (Kx * fit["alpha"][:, :, None]).sum(-1)                          # (B, n, Q)
    Bm = torch.linalg.solve_triangular(fit["L"], Kx.transpose(-1, -2), upper=False)
    return mf, (a2 * cxx + INTERCEPT - (Bm * Bm).sum(-2)).clamp(min=0)


def _bimodal_moments(bf, xq):
    """The two branches of :func:`_bimodal_fit`'s draws at xq (B, Q, F), f's mean -+ the
    offset a gap: their mean, variance (each branch's, over the draws) and offset (3, B, Q)."""
    mf, vf = _f_at(bf, xq)
    p = bf["post"][..., None]
    o = bf["offset"][..., None].expand_as(mf)
    mean, offset = (p * mf).sum(1), (p * o).sum(1)
    var = (p * (vf + bf["noise"][..., None] + mf * mf + o * o)).sum(1) - mean**2 - offset**2
    return torch.stack([mean, var.clamp(min=1e-8), offset])


def fit_gp(x, y, is_context, ard=False):
    """Fit every (kernel, ratio) GP to the context tokens of each task.

    x (B, N, F) standardized (zero-padded columns), y (B, N), is_context (B, N). Only
    the first ``max(k)`` tokens are read when the context comes first (as in training
    and prediction); any context layout is correct. ``ard``: add the ARD member, its
    lengthscales from :func:`fit_lengthscales` started at an isotropic RBF (ARD_SHORT), in
    the form (without or with a linear part, ARD_LINEAR) of higher log likelihood
    penalized by ARD_PENALTY log k for each hyperparameter beyond one lengthscale."""
    w = is_context.to(x.dtype)
    last = int(is_context.nonzero()[:, 1].max()) + 1 if is_context.any() else 0
    xc, yc, w = x[:, :last], (y * w)[:, :last], w[:, :last]
    d = _n_used(xc, w)
    r = torch.tensor(RATIOS, dtype=x.dtype, device=x.device)
    k = w.sum(1)                                                     # (B,)
    pad = torch.diag_embed(1 - w)                                    # -1 on masked diagonal
    mask = w[:, :, None] * w[:, None, :]
    fits = [_fit_kernel(K * mask - pad, yc, k, r) for K in _kernel_matrices(xc, xc, d)]
    ls = g = relevance = None
    if ard:
        short = [_fit_kernel(K * mask - pad, yc, k, r)
                 for K in _rbf_matrices(xc, xc, d, ARD_SHORT)]
        start, ratio = _ard_start(fits[:len(LENGTHSCALES)], short, w)
        theta0 = torch.log(torch.tensor(LENGTHSCALES + ARD_SHORT, dtype=x.dtype, device=x.device))
        ard_fit, ls, g, relevance, K_ard = _ard_member(
            xc, yc, w, k, r, d, mask, pad, theta0[start][:, None], torch.log(r)[ratio][:, None])
        fits.append(ard_fit)
    het = None
    if ard and HETERO:
        het_fit, het = _het_member(K_ard, yc, w, k, r, d, fits[-1], xc)
        fits.append(het_fit)
    loglik = torch.stack([f[4] for f in fits], 1)                        # (B, L, R)
    post = loglik + _log_prior(loglik.shape[1] - int(het is not None), loglik.dtype,
                               loglik.device, het is not None)
    prior = None
    if ard and PRIOR_MEMBER:
        evidence = torch.logsumexp(post.flatten(1), -1) - math.log(len(r))
        prior = _prior_member(xc, yc, w, k, evidence)
    post = torch.softmax(post.flatten(1), -1).view(loglik.shape)
    return {"x": xc, "w": w, "d": d, "r": r, "kernels": fits, "post": post, "ls": ls,
            "g": g, "relevance": relevance, "het": het, "prior": prior}


def _prior_member(xc, yc, w, k, evidence, chunk=2**23):
    """The prior's member fitted to each context of 2 (d + 1) to PRIOR_MAX_K points (d
    used columns, d >= 1), on its used columns, contexts of equal size and number of used
    columns together (their draws are the same; at most ``chunk`` kernel entries at a time): a
    list of (task indices (G,), their used columns (G, F'), :func:`_prior_fit`), and each
    task's posterior weight of the member (B,) against the other members' log evidence
    (B,) (0 for the other tasks). Its draws do not depend on padding."""
    used = _used(xc, w)
    n_used = used.sum(1)
    fits, weight = [], torch.zeros_like(evidence)
    tasks = ((k >= 2 * (n_used + 1)) & (k <= PRIOR_MAX_K) & (n_used > 0)).nonzero()[:, 0]
    if len(tasks) == 0:
        return {"fits": fits, "weight": weight}
    keys = torch.stack([k[tasks].long(), n_used[tasks]], 1)
    for key in keys.unique(dim=0):
        group = tasks[(keys == key).all(1)]
        kk, f = (int(v) for v in key)
        draws = (PRIOR_DRAWS + PRIOR_BIMODAL_DRAWS * (PRIOR_BIMODAL > 0)
                 + PRIOR_STUDENT_DRAWS * (PRIOR_STUDENT > 0))
        for rows in group.split(max(1, chunk // (draws * kk * kk))):
            order = torch.argsort((~(w[rows] > 0)).to(torch.int8), dim=1, stable=True)[:, :kk]
            cols = torch.argsort((~used[rows]).to(torch.int8), dim=1, stable=True)[:, :f]
            x = xc[rows[:, None], order].gather(2, cols[:, None].expand(-1, kk, -1))
            pf = _prior_fit(x, yc[rows[:, None], order])
            fits.append((rows, cols, pf))
            logit = pf["evidence"] - evidence[rows] + math.log(PRIOR_SHARE / (1 - PRIOR_SHARE))
            weight[rows] = torch.sigmoid(logit)
    return {"fits": fits, "weight": weight}


def reflect_features(features):
    """:func:`gp_features_at` of :func:`fit_gp`'s fit to the same context with y
    negated, from those of the fit to y: the members' means and the mixture's mean
    change sign; the hyperparameters, weights and variances depend on y through even
    functions only (y^T A^-1 y, squared residuals), so they stay as they are. Of the ARD
    baseline's MIXTURE_COLUMNS the two means change sign (the branches swap)."""
    ard = features.shape[-1] == n_columns(True)
    n = N_KERNELS + int(ard)
    sign = torch.ones(features.shape[-1], dtype=features.dtype, device=features.device)
    sign[:n] = sign[-2] = -1
    if ard:
        sign[3 * n + 1] = sign[3 * n + 3] = -1                           # m_g, m_b
    return features * sign


def relevant_features(fit, n):
    """Indices (B, n), ascending, of each task's n most relevant features by the
    lengthscales of the ARD member's RBF-alone form (shortest first; features unused in
    the context last): where the member keeps its linear part, that part rather than its
    lengthscales may carry a feature's effect."""
    used = _used(fit["x"], fit["w"])
    score = torch.where(used, fit["relevance"], torch.full_like(fit["relevance"], math.inf))
    return score.argsort(dim=-1, stable=True)[:, :n].sort(-1).values


def gp_features_at(fit, x):
    """(B, M, :func:`n_columns`) at x (B, M, F): per kernel the predictive mean, log
    variance and posterior weight (marginal over the ratio grid), for the ARD baseline its
    MIXTURE_COLUMNS (:func:`gp_mixture`), then the mixture's mean and log variance (see
    :func:`gp_moments`)."""
    d, r, post, het = fit["d"], fit["r"], fit["post"], fit["het"]
    cross = _kernel_matrices(x, fit["x"], d, fit["ls"], fit["g"])
    diag = _diag(x, d, fit["g"])
    noise = [torch.ones_like(diag[0])] * len(cross)
    if het is not None:  # the ARD kernel scaled by the context's noise multipliers
        cross.append(cross[-1] * het["Dinv"][:, None])
        diag.append(diag[-1])
        noise.append(torch.exp(_log_noise(het, x)))
    members = []
    for j, ((U, inv, z, s2, _), Kx, kxx, nx) in enumerate(zip(fit["kernels"], cross, diag, noise)):
        a = (Kx * fit["w"][:, None]) @ U                                   # (B, M, kc)
        mu = a @ (inv * z[:, None]).transpose(1, 2)                       # (B, M, R)
        v = s2[:, None] * (kxx[..., None] + r * nx[..., None] - (a * a) @ inv.transpose(1, 2))
        members.append((mu, v.clamp(min=1e-6 * s2[:, None]), post[:, j][:, None]))
    if het is not None:  # one feature slot for the ARD member and its variant
        members[-2:] = [tuple(torch.cat(t, -1) for t in zip(*members[-2:]))]
    means, logvars, weights = [], [], []
    mix_m = mix_m2 = 0
    for mu, v, p in members:                                              # p (B, 1, R)
        pj = p.sum(-1).clamp(min=1e-30)
        mj = (p * mu).sum(-1) / pj
        m2j = (p * (v + mu * mu)).sum(-1) / pj
        means.append(mj)
        logvars.append(torch.log((m2j - mj * mj).clamp(min=1e-8)))
        weights.append(pj.expand_as(mj))
        mix_m = mix_m + pj * mj
        mix_m2 = mix_m2 + pj * m2j
    # the ARD baseline's mixture: the bimodal part of the prior's member (weight w, its
    # branches' mean, variance and offset) and the rest (the other members and the
    # member's Gaussian draws), whose moments are the total's less the bimodal part's
    w = torch.zeros_like(mix_m)
    branches = torch.zeros((3, *w.shape), dtype=w.dtype, device=w.device)
    if fit["prior"] is not None:  # the prior's member joins the mixture's moments
        for rows, cols, pf in fit["prior"]["fits"]:
            p = fit["prior"]["weight"][rows][:, None]
            xr = x[rows].gather(2, cols[:, None].expand(-1, x.shape[1], -1))
            (m, m2), bim = _prior_moments(pf, xr)
            pi = pf["pi"][:, None] if bim is not None else torch.zeros_like(p)
            wr = torch.where(p * pi >= MIXTURE_MIN, p * pi, torch.zeros_like(p)).expand_as(m)
            if bim is not None:
                bm, bv, bo = bim
                m2_b = bv + bm * bm + bo * bo
                m, m2 = (1 - pi) * m + pi * bm, (1 - pi) * m2 + pi * m2_b
                branches[:, rows] = torch.where(wr > 0, bim, branches[:, rows])
            mix_m[rows] = (1 - p) * mix_m[rows] + p * m
            mix_m2[rows] = (1 - p) * mix_m2[rows] + p * m2
            w[rows] = wr
    mix_v = (mix_m2 - mix_m * mix_m).clamp(min=1e-8)
    features = means + logvars + weights
    if fit["ls"] is None:
        return torch.stack(features + [mix_m, torch.log(mix_v)], -1)
    bm, bv, bo = (torch.where(w > 0, b, t) for b, t in zip(branches, (mix_m, mix_v, w)))
    rest = (1 - w).clamp(min=1e-12)
    m_g = torch.where(w > 0, (mix_m - w * bm) / rest, mix_m)
    v_g = torch.where(w > 0, (mix_m2 - w * (bv + bm * bm + bo * bo)) / rest - m_g * m_g, mix_v)
    mixture = [w, m_g, torch.log(v_g.clamp(min=1e-8)), bm, torch.log(bv), bo]
    return torch.stack(features + mixture + [mix_m, torch.log(mix_v)], -1)


def gp_features(x, y, is_context, group=16, ard=False):
    """:func:`gp_features_at` every token, fitted on the context tokens; tasks of similar
    context size are fitted together, ``group`` at a time (eigh's cost grows as the cube
    of the largest context in a call: this makes a training batch about 3x cheaper).
    Computed in float64 whatever the dtype of x: in float32, near-noiseless contexts
    (ratio 1e-4) make the means wrong by up to 0.01 (standardized units)."""
    out = torch.empty((*x.shape[:2], n_columns(ard)), dtype=x.dtype, device=x.device)
    x64, y64 = x.double(), y.double()
    for rows in is_context.sum(1).argsort(stable=True).split(group):
        out[rows] = gp_features_at(fit_gp(x64[rows], y64[rows], is_context[rows], ard),
                                   x64[rows]).to(x.dtype)
    return out


def gp_moments(features, variance_floor, variance_cap):
    """Mean and variance of the model average from :func:`gp_features_at`'s features."""
    return features[..., -2], features[..., -1].exp().clamp(variance_floor, variance_cap)


def gp_mixture(features, variance_floor, variance_cap):
    """The ARD baseline's predictive as a mixture of Gaussians, from the MIXTURE_COLUMNS
    of :func:`gp_features_at`: (..., 3, 3), rows weight, mean and variance, columns the
    rest of the model average and the bimodal part's two branches (each of weight w / 2);
    None when no bimodal part has weight."""
    w, m_g, lv_g, m_b, lv_b, offset = features[..., -2 - MIXTURE_COLUMNS:-2].unbind(-1)
    if not (w > 0).any():
        return None
    var = torch.stack([lv_g, lv_b, lv_b], -1).exp().clamp(variance_floor, variance_cap)
    return torch.stack([torch.stack([1 - w, w / 2, w / 2], -1),
                        torch.stack([m_g, m_b - offset, m_b + offset], -1), var], -2)

