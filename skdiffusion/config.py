"""ModelConfig: one object that describes a meta-trained model, as a kernel describes a GP.

``DiffusionICLRegressor(model=...)`` takes a shipped model by name (``"default"`` or
``"linear"``, see :func:`named_model`), a trained-model directory, or a
:class:`ModelConfig`. A configuration names everything
meta-training depends on (task prior, architecture, diffusion and training settings);
its :meth:`~ModelConfig.spec` is hashed into the cache key under which the trained
denoiser is stored, so equal configurations share one trained model.
"""

import copy
import json
import shlex
from dataclasses import asdict, dataclass, field, fields

from .denoiser import VARIANCE_CAP
from .diffusion import PREDICTION_TYPES, SCHEDULES
from .head import BASELINES
from .pretrained import ARCHITECTURES, HEAD_DEFAULTS, make_spec
from .priors import check_prior_spec

# The default task prior: the ``functions`` prior with twice its default share of linear
# functions (0.3 instead of 0.15). Meta-training on 15 % made linear contexts of d + 2 to
# 2d rows worse than the untrained model (up to 2.4x its error, docs/functions.md).
DEFAULT_PRIOR = ("functions", {"families": {"gp": 0.3, "mlp": 0.15, "steps": 0.1,
                                            "additive": 0.15, "linear": 0.3}})


@dataclass
class ModelConfig:
    """Configuration of a meta-trained denoiser; the defaults are the shipped model's.

    Parameters
    ----------
    prior : str, tuple or dict, default=DEFAULT_PRIOR
        Task prior of meta-training: a family name (see
        :data:`skdiffusion.priors.PRIORS`), ``(name, kwargs)``, or
        ``{"mixture": [(spec, weight), ...]}``. The default,
        ``("functions", {"families": {"gp": 0.3, "mlp": 0.15, "steps": 0.1, "additive":
        0.15, "linear": 0.3}})``, draws GP samples with random kernels, random MLPs, step
        functions, additive curves and linear functions, with Gaussian, heteroscedastic,
        heavy-tailed, skewed or bimodal noise, on mixed-type inputs
        (:class:`skdiffusion.priors.Functions`; ``"functions"`` alone has 15 % linear
        functions). The earlier linear model (``model="linear"``, shipped too) used
        ``("noisy_linear", {"noise_range": (0.01, 5.0)})``, ``architecture="set"``,
        ``baseline="ridge"``, ``n_train_steps=5500``, ``batch_size=512``, ``echo=1`` and
        ``ema=0``.
    max_features : int, default=10
        Largest number of features the denoiser accepts.
    max_context : int, default=128
        Largest context meta-training draws; a larger context is split into random
        disjoint subsets at prediction time and their samples pooled.
    n_layer, n_embd, n_head : int, default=4, 96, 4
        Size of the GPT-2 backbone.
    architecture : {"set", "head"}, default="head"
        ``"set"``: y_t and t enter the query token, so the transformer runs at every
        sampling step. ``"head"``: the transformer encodes each query once and a small
        diffusion head (``head_width`` x ``head_depth`` residual blocks, MAR-style) runs
        the chain, many times cheaper; ``head_pairs`` (t, noise) draws per target token
        train it on each transformer pass.
    head_width, head_depth, head_pairs : int, default=64, 2, 4
        The diffusion head (``architecture="head"`` only).
    baseline : {"ridge", "gp", "ard"}, default="ard"
        The closed-form Gaussian the network corrects: in-context ridge fits, or (with
        ``architecture="head"`` only) in-context GP model averaging over RBF and linear
        kernels and noise levels (``"gp"``, :mod:`skdiffusion.kernels`), plus an RBF with
        per-feature lengthscales fitted to each context (``"ard"``).
    timesteps : int, default=50
        Diffusion steps T (10 to 1000).
    schedule : {"cosine", "linear"}, default="cosine"
        Noise schedule; both end with abar_T < 1e-3 for every T.
    prediction_type : {"v", "epsilon", "sample"}, default="v"
        What the network predicts.
    n_train_steps, batch_size, learning_rate : default=8000, 128, 1e-3
        Meta-training optimizer steps, tasks per step and peak AdamW learning rate.
    echo : int, default=16
        Optimizer steps per drawn batch of tasks, each with fresh diffusion noise ("data
        echoing"): where drawing tasks and their baseline features costs more than the
        network's step, as for the GP baselines on a CPU, a run of ``n_train_steps`` then
        draws ``echo`` times fewer tasks (docs/functions.md, "Data echoing"); 1: none.
    ema : float, default=0.999
        Decay of an exponential moving average of the weights kept in meta-training (0:
        none); where set, the model is the average (docs/functions.md, "Averaging the
        weights").
    variance_cap : float, default=10.0
        Largest variance (standardized units of y) of the in-context linear baseline the
        denoiser corrects.
    centred_dof : bool, default=False
        Give the linear baseline the degree of freedom and leverage (1 / k) of the
        intercept that standardizing the context has fitted.
    seed : int, default=0
        Seeds the initialization and the task draws of meta-training.
    """

    prior: object = field(default_factory=lambda: copy.deepcopy(DEFAULT_PRIOR))
    max_features: int = 10
    max_context: int = 128
    n_layer: int = 4
    n_embd: int = 96
    n_head: int = 4
    architecture: str = "head"
    head_width: int = HEAD_DEFAULTS["width"]
    head_depth: int = HEAD_DEFAULTS["depth"]
    head_pairs: int = HEAD_DEFAULTS["pairs"]
    baseline: str = "ard"
    timesteps: int = 50
    schedule: str = "cosine"
    prediction_type: str = "v"
    n_train_steps: int = 8000
    batch_size: int = 128
    learning_rate: float = 1e-3
    echo: int = 16
    ema: float = 0.999
    variance_cap: float = VARIANCE_CAP
    centred_dof: bool = False
    seed: int = 0

    def get_params(self, deep=True):
        """The fields as a dict (scikit-learn's convention for parameter objects, so that
        ``clone`` and ``GridSearchCV(..., {"model__n_layer": [...]})`` work)."""
        return {name: getattr(self, name) for name in FIELDS}

    def set_params(self, **params):
        for name, value in params.items():
            if name not in FIELDS:
                raise ValueError(f"ModelConfig has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def spec(self):
        """The JSON-able configuration this object describes (its hash is the cache key),
        after checking every field; raises ``ValueError`` naming the first bad one."""
        self._validate()
        train = dict(n_steps=self.n_train_steps, batch_size=self.batch_size,
                     learning_rate=float(self.learning_rate),
                     warmup_steps=max(1, min(500, self.n_train_steps // 10)),
                     n_points=self.max_context + 16, max_context=self.max_context,
                     seed=self.seed, echo=self.echo, ema=float(self.ema))
        head = dict(width=self.head_width, depth=self.head_depth, pairs=self.head_pairs)
        if self.baseline != "ridge":  # absent for ridge: earlier head keys stay valid
            head["baseline"] = self.baseline
        return make_spec(self.prior, self.max_features, self.n_layer, self.n_embd, self.n_head,
                         self.timesteps, self.schedule, self.prediction_type, train=train,
                         variance_cap=self.variance_cap, centred_dof=self.centred_dof,
                         architecture=self.architecture, head=head)

    def _validate(self):
        positive = ("max_features", "max_context", "n_layer", "n_embd", "n_head", "head_width",
                    "head_depth", "head_pairs", "n_train_steps", "batch_size", "echo")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) \
                or not 0 <= self.ema < 1:
            raise ValueError(f"ModelConfig.ema must be a decay in [0, 1), got {self.ema!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ModelConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, int) \
                or not 10 <= self.timesteps <= 1000:
            raise ValueError(f"timesteps must be an integer in [10, 1000], got {self.timesteps!r}")
        choices = {"architecture": ARCHITECTURES, "schedule": SCHEDULES,
                   "prediction_type": PREDICTION_TYPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("learning_rate", "variance_cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        if not isinstance(self.centred_dof, bool):
            raise ValueError(f"centred_dof must be a bool, got {self.centred_dof!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline != "ridge" and self.architecture != "head":
            raise ValueError(f"baseline={self.baseline!r} needs architecture='head'")
        check_prior_spec(self.prior)


FIELDS = tuple(f.name for f in fields(ModelConfig))


def named_model(name):
    """The configuration of a model shipped with the package, by name, or None:
    ``"default"`` (``ModelConfig()``), or ``"linear"``, an earlier default (a set
    denoiser correcting in-context ridge fits, meta-trained on noisy linear tasks)."""
    if name == "default":
        return ModelConfig()
    if name == "linear":
        return ModelConfig(prior=("noisy_linear", {"noise_range": (0.01, 5.0)}),
                           architecture="set", baseline="ridge", n_train_steps=5500,
                           batch_size=512, echo=1, ema=0.0)
    return None


def config_kwargs(config):
    """The fields of ``config`` that differ from the defaults, as JSON-able values."""
    default = asdict(ModelConfig())
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items()
            if v != json.loads(json.dumps(default[k]))}


def pretrain_command(config):
    """The shell command that meta-trains ``config`` into the cache, where ``fit`` finds it."""
    return ("python -m skdiffusion pretrain --config "
            + shlex.quote(json.dumps(config_kwargs(config), sort_keys=True)))
