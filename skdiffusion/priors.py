"""Synthetic regression task priors (after Garg et al. 2022) and context standardization.

A prior draws a batch of tasks on a ``torch.Generator``: X of shape (B, N, max_features)
with x ~ N(0, I_d) in the first d columns (d drawn per task) and zeros after, and y of
shape (B, N). :func:`sample_tasks` adds the context/target split and standardizes every
task with the statistics of its own context points, exactly as prediction does.
"""

import math
from dataclasses import dataclass

import torch


NOISE_RANGE = (0.01, 1.0)  # the noise scale of :class:`Functions`, log-uniform


def _randn(shape, g):
    return torch.randn(shape, generator=g)


def _uniform(shape, g, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(shape, generator=g)


class Linear:
    """y = x.w with w ~ N(0, I_d)."""

    def sample_y(self, X, g, truth=None):  # no hidden law recorded
        w = _randn((X.shape[0], X.shape[2]), g)
        return torch.einsum("bnf,bf->bn", X, w)


class NoisyLinear(Linear):
    """y = x.w + sigma * e, sigma log-uniform in ``noise_range`` per task."""

    def __init__(self, noise_range=(0.01, 1.0)):
        self.noise_range = tuple(noise_range)

    def sample_y(self, X, g):
        lo, hi = (math.log(v) for v in self.noise_range)
        sigma = torch.exp(_uniform((X.shape[0], 1), g, lo, hi))
        return super().sample_y(X, g) + sigma * _randn(X.shape[:2], g)


class SparseLinear:
    """y = x.w with only ``n_nonzero`` random coordinates of w non-zero."""

    def __init__(self, n_nonzero=3):
        self.n_nonzero = n_nonzero

    def sample_y(self, X, g):
        B, _, F = X.shape
        d = (X != 0).any(dim=1).sum(dim=1).clamp(min=1)          # features in use
        keys = _uniform((B, F), g) + (torch.arange(F)[None] >= d[:, None])  # unused last
        keep = keys.argsort(dim=1).argsort(dim=1) < self.n_nonzero
        w = _randn((B, F), g) * keep
        return torch.einsum("bnf,bf->bn", X, w)


class ReLUNet:
    """Two-layer ReLU network y = sum_i a_i relu(w_i.x), a ~ N(0, 2/hidden)."""

    def __init__(self, hidden=100):
        self.hidden = hidden

    def sample_y(self, X, g):
        B, _, F = X.shape
        W = _randn((B, F, self.hidden), g)
        a = _randn((B, self.hidden), g) * math.sqrt(2.0 / self.hidden)
        return torch.einsum("bnh,bh->bn", torch.relu(X @ W), a)


class DecisionTree:
    """Random depth-``depth`` tree: node splits x[feature] > 0, leaves ~ N(0, 1)."""

    def __init__(self, depth=4):
        self.depth = depth

    def sample_y(self, X, g):
        B, N, F = X.shape
        d = (X != 0).any(dim=1).sum(dim=1).clamp(min=1)
        n_internal = 2**self.depth - 1
        feature = (_uniform((B, n_internal), g) * d[:, None]).long()
        leaves = _randn((B, 2**self.depth), g)
        node = torch.zeros((B, N), dtype=torch.long)
        for _ in range(self.depth):
            f = torch.gather(feature, 1, node)
            right = torch.gather(X, 2, f[..., None]).squeeze(-1) > 0
            node = 2 * node + 1 + right.long()
        return torch.gather(leaves, 1, node - n_internal)


# --------------------------------------------------------------- functions, noise, inputs
# Families for learning functions rather than lines. Each draws the noiseless f(X) of a
# batch of tasks; :class:`Functions` rescales f per task to unit variance and adds one of
# the noise families. Padding columns of X are zero, and every family is built so that a
# zero column changes nothing (GP distances, MLP and linear weights, tree splits only on
# the task's first d columns).


def _gamma(shape, g):
    """Gamma(shape, rate 1) draws on the generator ``g`` (torch.distributions cannot take
    one): the global RNG, seeded from ``g``, inside a fork so nothing else changes."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        return torch._standard_gamma(shape)


def _active(X):
    """(B, F) float mask of the columns in use (non-zero somewhere in the task)."""
    return (X != 0).any(dim=1).to(X.dtype)


def _relevant(X, g, p_irrelevant=0.3):
    """Mask (B, F): each used column irrelevant with probability ``p_irrelevant`` (at least
    one relevant column per task)."""
    active = _active(X)
    keep = (_uniform(active.shape, g) >= p_irrelevant).to(X.dtype) * active
    first = torch.nn.functional.one_hot(active.argmax(1), X.shape[2]).to(X.dtype)
    return torch.where(keep.sum(1, keepdim=True) > 0, keep, first)


def _jittered(K, jitter):
    """K + jitter x (mean diagonal + 1) I in float64: the covariance a draw is made from."""
    K = K.double()
    scale = K.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] + 1
    return K + jitter * scale * torch.eye(K.shape[1], dtype=K.dtype)


def _matrix_sqrt(K, jitter):
    """A (B, N, N) with A A^T = :func:`_jittered` K, in float64: the Cholesky factor, or for
    the tasks where rounding makes it fail (repeated or huge inputs under a linear kernel),
    the symmetric square root with negative eigenvalues clipped."""
    K = _jittered(K, jitter)
    L, info = torch.linalg.cholesky_ex(K)
    bad = info > 0
    if bad.any():
        w, V = torch.linalg.eigh(K[bad])
        L[bad] = V * w.clamp(min=0).sqrt()[:, None, :]
    return L


class GPFunction:
    """Draws of a GP with a random kernel per task: RBF or Matern-5/2 with per-feature
    lengthscales ~ Gamma(3, 6) (mean 0.5, BoTorch's prior, on standardized inputs, scaled
    by sqrt(d) so that the function's complexity does not explode with d), plus, with
    probability ``p_linear``, a linear kernel; irrelevant features get no weight."""

    def __init__(self, p_linear=0.3, jitter=1e-4):
        self.p_linear, self.jitter = p_linear, jitter

    def hyperparameters(self, X, g):
        """Each task's kernel, drawn on g: a dict of its relevant columns "rel" (B, F),
        their number "d" (B, 1), lengthscales "ls" (B, F), "rbf" (B, 1, 1; 1: RBF, 0:
        Matern-5/2) and "lin" (B, 1, 1; 1: plus the linear kernel). X (B, N, F) is read
        only for its used columns, so the draws do not depend on N."""
        B, N, F = X.shape
        rel = _relevant(X, g)
        d = rel.sum(1, keepdim=True)
        ls = _gamma(torch.full((B, F), 3.0), g) / 6.0 * d.sqrt()
        rbf = (_uniform((B, 1, 1), g) < 0.5).to(X.dtype)
        lin = (_uniform((B, 1, 1), g) < self.p_linear).to(X.dtype)
        return {"rel": rel, "d": d, "ls": ls, "rbf": rbf, "lin": lin}

    @staticmethod
    def kernel(h, Xa, Xb):
        """(B, Na, Nb) the kernels of :meth:`hyperparameters` h between Xa and Xb. The
        tasks go in four groups (RBF or Matern, with or without the linear part), each
        computed in place and copied into K once: a third of the passes over memory of
        masking all of K kind by kind, 1.7-2.4x faster for the prior's member's draws."""
        rel = h["rel"][:, None].to(Xa.dtype)
        Za, Zb = Xa * rel / h["ls"][:, None], Xb * rel / h["ls"][:, None]
        kind = 2 * (h["rbf"][:, 0, 0] > 0) + (h["lin"][:, 0, 0] > 0)
        K = Za.new_empty((len(Za), Xa.shape[1], Xb.shape[1]))
        for group in kind.unique().tolist():
            idx = (kind == group).nonzero()[:, 0]
            r = torch.cdist(Za[idx], Zb[idx])                           # distances
            if group >= 2:                                              # RBF
                part = r.pow_(2).mul_(-0.5).exp_()
            else:                                # Matern-5/2 at r = sqrt(5) x distance
                r.mul_(5 ** 0.5)
                part = r.mul(1 / 3).add_(1).mul_(r).add_(1).mul_(torch.exp(-r))
            if group % 2:                                               # plus linear
                Ra, Rb = Xa[idx] * rel[idx], Xb[idx] * rel[idx]
                part = torch.baddbmm(part, Ra / h["d"][idx][..., None], Rb.transpose(1, 2))
            K.index_copy_(0, idx, part)
        return K

    @staticmethod
    def kernel_diagonal(h, X):
        """(B, N) the kernels h at each point of X with itself."""
        Xr = X * h["rel"][:, None].to(X.dtype)
        return 1 + h["lin"][..., 0] * (Xr * Xr).sum(-1) / h["d"]

    def covariance(self, X, g):
        """(B, N, N) each task's kernel over its points, its hyperparameters drawn on g."""
        return self.kernel(self.hyperparameters(X, g), X, X)

    def sample_y(self, X, g, truth=None):
        K = self.covariance(X, g)
        if truth is not None:
            truth["cov"] = _jittered(K, self.jitter)
        return (_matrix_sqrt(K, self.jitter) @ _randn((*X.shape[:2], 1), g).double())[..., 0].to(X.dtype)


class MLPFunction:
    """Random MLPs: depth 1-3, width 8-64, activation relu / tanh / sin / gelu per task,
    weights N(0, 1 / fan-in) on the relevant features."""

    ACTIVATIONS = (torch.relu, torch.tanh, torch.sin, torch.nn.functional.gelu)

    def sample_y(self, X, g, truth=None):  # no hidden law recorded
        B, N, F = X.shape
        h = X * _relevant(X, g)[:, None]
        depth = int(torch.randint(1, 4, (1,), generator=g))
        width = int(torch.randint(8, 65, (1,), generator=g))
        act = self.ACTIVATIONS[int(torch.randint(len(self.ACTIVATIONS), (1,), generator=g))]
        for _ in range(depth):
            W = _randn((B, h.shape[-1], width), g) / math.sqrt(h.shape[-1])
            h = act(h @ W + 0.5 * _randn((B, 1, width), g))
        return (h @ _randn((B, width, 1), g))[..., 0] / math.sqrt(width)


class StepFunction:
    """Sums of 1-6 axis-aligned steps at random thresholds (tree-like, discontinuous),
    with a product of two steps (an interaction) half the time."""

    def sample_y(self, X, g, truth=None):  # no hidden law recorded
        B, N, F = X.shape
        d = _active(X).sum(1).clamp(min=1)
        y = torch.zeros((B, N), dtype=X.dtype)
        for j in range(6):
            on = (_uniform((B, 1), g) < (1.0 if j == 0 else 0.5)).to(X.dtype)
            feature = (_uniform((B,), g) * d).long()
            col = torch.gather(X, 2, feature[:, None, None].expand(B, N, 1))[..., 0]
            step = (col > _randn((B, 1), g)).to(X.dtype) * _randn((B, 1), g)
            y = y + on * step
        f2 = (_uniform((B,), g) * d).long()
        col2 = torch.gather(X, 2, f2[:, None, None].expand(B, N, 1))[..., 0]
        inter = (_uniform((B, 1), g) < 0.5).to(X.dtype)
        return y * (1 + inter * ((col2 > 0).to(X.dtype) - 0.5))


class AdditiveFunction:
    """Additive structure: a sum over relevant features of 1-D GP-like curves (random
    Fourier features), plus with probability 0.5 one pairwise product (interaction)."""

    def __init__(self, n_frequencies=8):
        self.n_frequencies = n_frequencies

    def sample_y(self, X, g, truth=None):  # no hidden law recorded
        B, N, F = X.shape
        rel = _relevant(X, g)
        Q = self.n_frequencies
        freq = _randn((B, 1, F, Q), g) * torch.exp(_uniform((B, 1, F, 1), g, -1.0, 1.0))
        phase = _uniform((B, 1, F, Q), g, 0.0, 2 * math.pi)
        amp = _randn((B, 1, F, Q), g) * math.sqrt(2.0 / Q)
        curves = (amp * torch.cos(X[..., None] * freq + phase)).sum(-1)      # (B, N, F)
        y = (curves * rel[:, None]).sum(-1)
        i, j = (_uniform((B,), g) * rel.sum(1)).long(), (_uniform((B,), g) * rel.sum(1)).long()
        xi = torch.gather(X, 2, i[:, None, None].expand(B, N, 1))[..., 0]
        xj = torch.gather(X, 2, j[:, None, None].expand(B, N, 1))[..., 0]
        return y + (_uniform((B, 1), g) < 0.5).to(X.dtype) * xi * xj


NOISES = ("gaussian", "heteroscedastic", "student_t", "skewed", "bimodal")


def heteroscedastic_scale(u):
    """The factor exp(u) on the noise sd of heteroscedastic noise at x, u = x . v for the
    noise's unit direction v, clipped to +-3."""
    return torch.exp(u.clamp(-3, 3))


def add_noise(f, X, g, kind, sigma, truth=None):
    """y = f + noise of ``kind`` with scale ``sigma`` (B, 1) (f has unit variance).
    ``truth``: a dict, if given, that receives the noise law's parameters: "sd" (B, N),
    each point's scale (its Gaussian's sd; the t's scale; sigma for skewed noise), and
    "df" (Student t) or "gap" (B, 1) and "branch" (B, N), +-1 (bimodal)."""
    B, N = f.shape
    e = _randn((B, N), g)
    law = {"sd": sigma.expand(B, N)}
    if kind == "heteroscedastic":  # scale grows along a random direction of x
        direction = _randn((B, X.shape[2], 1), g) * _active(X)[..., None]
        u = (X @ direction)[..., 0] / direction.norm(dim=1).clamp(min=1e-6)
        law["sd"] = sigma * heteroscedastic_scale(u)
        y = f + law["sd"] * e
    elif kind == "student_t":  # sigma x Student t with df uniform in 2..10
        df = law["df"] = torch.randint(2, 11, (B, 1), generator=g).to(f.dtype)
        chi2 = _gamma(df.expand(B, N) / 2, g) * 2
        y = f + sigma * e / (chi2 / df).sqrt()
    elif kind == "skewed":  # centred log-normal, right or left
        z = torch.exp(0.75 * e)
        sign = torch.where(_uniform((B, 1), g) < 0.5, -1.0, 1.0).to(f.dtype)
        y = f + sigma * sign * (z - z.mean(1, keepdim=True)) / 0.9
    elif kind == "bimodal":  # two branches f +- gap, chosen per point
        gap = law["gap"] = _uniform((B, 1), g, 0.5, 2.0)
        branch = law["branch"] = torch.where(_uniform((B, N), g) < 0.5, -1.0, 1.0).to(f.dtype)
        y = f + gap * branch + sigma * e
    else:
        y = f + sigma * e
    if truth is not None:
        truth.update(law)
    return y


def _scatter(truth, sub, rows):
    """Write the hidden parameters ``sub`` of the tasks ``rows`` into ``truth`` (NaN for
    the other tasks)."""
    if truth is None:
        return
    for key, value in sub.items():
        if key not in truth:
            truth[key] = torch.full((len(rows), *value.shape[1:]), math.nan, dtype=value.dtype)
        truth[key][rows] = value


class Functions:
    """Nonlinear functions with any of the noise families: f from one of ``families``
    (GP draws, random MLPs, steps, additive, linear), rescaled to unit variance over the
    task's points, plus noise: its kind from ``noise_weights`` over :data:`NOISES` and
    its scale log-uniform in ``noise_range`` (never shown to the model)."""

    FAMILIES = {"gp": GPFunction, "mlp": MLPFunction, "steps": StepFunction,
                "additive": AdditiveFunction, "linear": Linear}

    def __init__(self, families=None, noise_weights=None, noise_range=NOISE_RANGE):
        fam = dict(families or {"gp": 0.35, "mlp": 0.2, "steps": 0.15, "additive": 0.15,
                                "linear": 0.15})
        unknown = set(fam) - set(self.FAMILIES)
        if unknown:
            raise ValueError(f"unknown function families {sorted(unknown)}; choose from "
                             f"{sorted(self.FAMILIES)}")
        self.families = Mixture([self.FAMILIES[k]() for k in fam], list(fam.values()))
        nw = dict(noise_weights or {"gaussian": 0.5, "heteroscedastic": 0.15,
                                    "student_t": 0.15, "skewed": 0.1, "bimodal": 0.1})
        if set(nw) - set(NOISES):
            raise ValueError(f"unknown noise kinds {sorted(set(nw) - set(NOISES))}; "
                             f"choose from {NOISES}")
        self.noise_kinds, self.noise_p = list(nw), torch.tensor(list(nw.values()), dtype=torch.float64)
        self.noise_range = tuple(noise_range)

    def sample_y(self, X, g, truth=None):
        """y (B, N); ``truth``: a dict, if given, that receives each task's hidden law: its
        noise's (:func:`add_noise`), "sigma" (B, 1), "scale" and "shift" (B, 1) (f is the
        draw minus shift over scale) and, for GP draws, "cov" (B, N, N), the draw's
        covariance (rows of other tasks NaN)."""
        f = self.families.sample_y(X, g, truth)
        shift, scale = f.mean(1, keepdim=True), f.std(1, keepdim=True).clamp(min=1e-6)
        f = (f - shift) / scale
        lo, hi = (math.log(v) for v in self.noise_range)
        sigma = torch.exp(_uniform((X.shape[0], 1), g, lo, hi)).to(X.dtype)
        kind = torch.multinomial(self.noise_p, X.shape[0], replacement=True, generator=g)
        out = torch.empty_like(f)
        for i, name in enumerate(self.noise_kinds):
            rows = kind == i
            if rows.any():
                sub = None if truth is None else {}
                out[rows] = add_noise(f[rows], X[rows], g, name, sigma[rows], sub)
                _scatter(truth, sub, rows)
        if truth is not None:
            truth.update(sigma=sigma, scale=scale, shift=shift)
        return out

    def sample_x(self, B, N, F, g):
        return mixed_inputs(B, N, F, g)


def mixed_inputs(B, N, F, g):
    """Inputs as real tables have them: per task, correlated columns (a random mixing of
    Gaussians), each column then Gaussian, uniform, skewed (log-normal), integer-valued or
    binary, and with probability 0.2 rows repeated (x drawn from a pool of N / 4 rows)."""
    Z = _randn((B, N, F), g)
    mix = torch.eye(F) + 0.5 * _randn((B, F, F), g) * (_uniform((B, 1, 1), g) < 0.5)
    Z = Z @ mix
    Z = Z / Z.std(dim=1, keepdim=True).clamp(min=1e-6)
    kind = (_uniform((B, 1, F), g) * 5).long()                # per column
    uniform = torch.special.ndtr(Z) * 2 - 1
    skewed = torch.exp(0.8 * Z)
    integer = torch.round(Z * _uniform((B, 1, F), g, 0.5, 3.0))
    binary = (Z > _randn((B, 1, F), g) * 0.5).to(Z.dtype)
    X = torch.stack([Z, uniform, skewed, integer, binary], -1)
    X = torch.gather(X, -1, kind[..., None].expand(B, N, F, 1))[..., 0]
    repeat = _uniform((B, 1), g) < 0.2
    pool = (_uniform((B, N), g) * max(1, N // 4)).long()
    idx = torch.where(repeat, pool, torch.arange(N).expand(B, N))
    return torch.gather(X, 1, idx[..., None].expand(B, N, F))


class Mixture:
    """Each task drawn from one of ``priors`` with probabilities ``weights``."""

    def __init__(self, priors, weights=None):
        self.priors = list(priors)
        w = torch.tensor(weights if weights is not None else [1.0] * len(self.priors))
        self.weights = w / w.sum()

    def sample_y(self, X, g, truth=None):
        choice = torch.multinomial(self.weights, X.shape[0], replacement=True, generator=g)
        y = torch.empty(X.shape[:2], dtype=X.dtype, device=X.device)
        for i, prior in enumerate(self.priors):  # each part draws only its own tasks
            rows = choice == i
            if rows.any():
                if truth is None:
                    y[rows] = prior.sample_y(X[rows], g).to(X.dtype)
                else:
                    sub = {}
                    y[rows] = prior.sample_y(X[rows], g, sub).to(X.dtype)
                    _scatter(truth, sub, rows)
        return y


PRIORS = {
    "functions": Functions,
    "linear": Linear,
    "noisy_linear": NoisyLinear,
    "sparse_linear": SparseLinear,
    "relu_net": ReLUNet,
    "decision_tree": DecisionTree,
}


PRIOR_FORMS = ("a family name, a (name, kwargs) pair or {'mixture': [(prior, weight), ...]}; "
               f"families: {sorted(PRIORS)}")


def check_prior_spec(spec):
    """Raise a ``ValueError`` that names the problem unless ``spec`` describes a prior."""
    if isinstance(spec, str):
        if spec not in PRIORS:
            raise ValueError(f"unknown prior {spec!r}; choose from {sorted(PRIORS)}, a "
                             f"(name, kwargs) pair or a mixture dict")
    elif isinstance(spec, dict):
        parts = spec.get("mixture")
        if set(spec) != {"mixture"} or not isinstance(parts, (list, tuple)) or not parts:
            raise ValueError(f"a mixture prior is {{'mixture': [(prior, weight), ...]}} with at "
                             f"least one part; got {spec!r}")
        for part in parts:
            if not (isinstance(part, (list, tuple)) and len(part) == 2):
                raise ValueError(f"each mixture part is a (prior, weight) pair; got {part!r}")
            weight = part[1]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"mixture weights must be positive numbers; got {weight!r}")
            check_prior_spec(part[0])
    elif isinstance(spec, (list, tuple)) and len(spec) == 2 and isinstance(spec[1], dict):
        check_prior_spec(spec[0])
        try:
            PRIORS[spec[0]](**spec[1])
        except TypeError as e:
            raise ValueError(f"bad settings for prior {spec[0]!r}: {e}") from e
    else:
        raise ValueError(f"prior must be {PRIOR_FORMS}; got {spec!r}")


def make_prior(spec):
    """Build a prior from a name, ``(name, kwargs)``, or ``{"mixture": [(spec, weight), ...]}``."""
    check_prior_spec(spec)
    if isinstance(spec, str):
        spec = (spec, {})
    if isinstance(spec, dict) and "mixture" in spec:
        parts = spec["mixture"]
        return Mixture([make_prior(s) for s, _ in parts], [w for _, w in parts])
    name, kwargs = spec
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose from {sorted(PRIORS)} or a mixture")
    return PRIORS[name](**dict(kwargs))


def context_stats(values, is_context):
    """Mean and scale over context rows, as ``StandardScaler`` computes them.

    values: (B, N, F); is_context: (B, N). Population variance; a (numerically)
    constant column, a single context point or none at all gives scale 1, and no
    context at all gives mean 0.
    """
    w = is_context.to(values.dtype)[..., None]
    k = w.sum(dim=1, keepdim=True)
    mean = (values * w).sum(dim=1, keepdim=True) / k.clamp(min=1)
    var = (((values - mean) ** 2) * w).sum(dim=1, keepdim=True) / k.clamp(min=1)
    eps = torch.finfo(values.dtype).eps
    constant = var <= k * eps * var + (k * mean * eps) ** 2
    return mean, torch.where(constant, torch.ones_like(var), var.sqrt())


def standardize(values, is_context):
    """Standardize (B, N, F) ``values`` with their own context statistics."""
    mean, scale = context_stats(values, is_context)
    return (values - mean) / scale


@dataclass
class TaskBatch:
    """Standardized tasks: x (B, N, F), y (B, N), is_context (B, N), n_features (B,)."""

    x: torch.Tensor
    y: torch.Tensor
    is_context: torch.Tensor
    n_features: torch.Tensor

    def to(self, device):
        return TaskBatch(*(v.to(device) for v in (self.x, self.y, self.is_context, self.n_features)))


def sample_tasks(prior, batch_size, n_points, max_features, generator,
                 min_features=1, n_features=None, max_context=None, min_context=0):
    """Draw standardized tasks with a per-task number of features and context size.

    d is uniform in [min_features, n_features or max_features]; the context size k is
    uniform in [min_context, max_context or n_points - 1] and the first k points (in
    random order) are the context.
    """
    g = generator
    d_hi = n_features or max_features
    d = torch.randint(min_features, d_hi + 1, (batch_size,), generator=g)
    sample_x = getattr(prior, "sample_x", None)
    X = (sample_x(batch_size, n_points, max_features, g) if sample_x is not None
         else _randn((batch_size, n_points, max_features), g))
    X = X * (torch.arange(max_features)[None, None] < d[:, None, None])
    y = prior.sample_y(X, g)
    k_hi = n_points - 1 if max_context is None else min(max_context, n_points - 1)
    k = torch.randint(min_context, k_hi + 1, (batch_size,), generator=g)
    is_context = torch.arange(n_points)[None] < k[:, None]
    x_std = standardize(X, is_context)  # zero padding columns stay zero (scale 1)
    y_std = standardize(y[..., None], is_context)[..., 0]
    return TaskBatch(x_std, y_std, is_context, d)
