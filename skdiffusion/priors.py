"""Synthetic regression task priors (after Garg et al. 2022) and context standardization.

A prior draws a batch of tasks on a ``torch.Generator``: X of shape (B, N, max_features)
with x ~ N(0, I_d) in the first d columns (d drawn per task) and zeros after, and y of
shape (B, N). :func:`sample_tasks` adds the context/target split and standardizes every
task with the statistics of its own context points, exactly as prediction does.
"""

import math
from dataclasses import dataclass

import torch


def _randn(shape, g):
    return torch.randn(shape, generator=g)


def _uniform(shape, g, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(shape, generator=g)


class Linear:
    """y = x.w with w ~ N(0, I_d)."""

    def sample_y(self, X, g):
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


class Mixture:
    """Each task drawn from one of ``priors`` with probabilities ``weights``."""

    def __init__(self, priors, weights=None):
        self.priors = list(priors)
        w = torch.tensor(weights if weights is not None else [1.0] * len(self.priors))
        self.weights = w / w.sum()

    def sample_y(self, X, g):
        choice = torch.multinomial(self.weights, X.shape[0], replacement=True, generator=g)
        ys = torch.stack([p.sample_y(X, g) for p in self.priors])  # same draws every call
        return ys[choice, torch.arange(X.shape[0])]


PRIORS = {
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
    X = _randn((batch_size, n_points, max_features), g)
    X = X * (torch.arange(max_features)[None, None] < d[:, None, None])
    y = prior.sample_y(X, g)
    k_hi = n_points - 1 if max_context is None else min(max_context, n_points - 1)
    k = torch.randint(min_context, k_hi + 1, (batch_size,), generator=g)
    is_context = torch.arange(n_points)[None] < k[:, None]
    x_std = standardize(X, is_context)  # zero padding columns stay zero (scale 1)
    y_std = standardize(y[..., None], is_context)[..., 0]
    return TaskBatch(x_std, y_std, is_context, d)
