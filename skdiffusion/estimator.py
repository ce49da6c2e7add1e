"""DiffusionICLRegressor: the scikit-learn face of skdiffusion.

The estimator only validates, scales and orchestrates; the maths lives in
``diffusion``, the network in ``denoiser``, meta-training in ``training`` and the
trained-model cache in ``pretrained``.
"""

import copy
import os
import weakref
import zlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y, validate_data

from .checkpoint import CONFIG, read_config
from .config import ModelConfig, named_model, pretrain_command
from .diffusion import NoiseSchedule, draw_noise, n_noise_draws
from .inference import context_fit, sample_context_parts
from .pretrained import build, get_denoiser, load_directory, takes_wide_inputs

_RUNTIME = weakref.WeakKeyDictionary()  # denoiser -> {device: its runtime copy}
_CONTEXT_FITS = weakref.WeakKeyDictionary()  # estimator -> ((its context, runtime copy), fit)


class DiffusionICLRegressor(RegressorMixin, BaseEstimator):
    """In-context regression with a meta-trained conditional diffusion model.

    A GPT-2 denoiser, meta-trained once on synthetic regression tasks, reads the training
    data as its context and draws samples of y at each query point by running a Gaussian
    diffusion (DDPM or DDIM) chain backwards. ``predict`` returns the mean of those
    samples; ``sample`` and ``predict_quantiles`` expose the predictive distribution
    itself. ``fit`` trains nothing: it stores the (standardized) context. The closed-form
    baseline the network corrects is fitted to that context at the first ``predict`` or
    ``sample`` call and reused by the later ones.

    Parameters
    ----------
    model : "default", "linear", str or ModelConfig, default="default"
        The meta-trained model: ``"default"`` (shipped: meta-trained on nonlinear
        functions, correcting an in-context GP model average), ``"linear"`` (shipped: an
        earlier default, meta-trained on noisy linear tasks), the path of a model
        directory written by ``python -m skdiffusion pretrain`` (``config.json`` and
        ``model.safetensors``), or a :class:`~skdiffusion.ModelConfig`, whose trained
        denoiser is looked up in the cache ``$SKDIFFUSION_CACHE`` (default
        ``~/.cache/skdiffusion``) under a hash of the configuration.
    n_samples : int, default=24
        Samples per query used by ``predict`` and ``predict_quantiles``.
    n_sampling_steps : int, default=20
        Steps of the reverse chain, capped at the model's timesteps. Cost is
        proportional to steps x ``n_samples`` x queries.
    sampler : {"ddpm", "ddim"}, default="ddpm"
        Reverse chain: ancestral DDPM (calibrated) or DDIM (deterministic for
        ``eta=0``; under-disperses with few steps).
    eta : float, default=0.0
        DDIM stochasticity in [0, 1].
    antithetic : bool, default=True
        Draw the sampling noise in pairs (e, -e): every sample is still an exact draw,
        and the mean of a pair cancels the part of the samples linear in the noise, so
        ``predict`` has far less Monte Carlo error than with independent samples.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where sampling runs; ``"auto"`` uses CUDA when available.
    allow_training : bool, default=False
        What ``fit`` does when a ``ModelConfig`` has no trained model in the cache:
        ``False`` times a few training steps and raises a ``ValueError`` with the
        estimate and the command that trains it; ``True`` meta-trains it inside ``fit``
        (progress bar with ETA, a resumable checkpoint every couple of minutes). The
        environment variable ``SKDIFFUSION_ALLOW_TRAINING=1`` also allows it.
    random_state : int, RandomState instance or None, default=None
        Seeds the sampling noise (and the choice of context subsets). Each query's noise
        is derived from ``random_state`` and that query's values alone, so a prediction
        does not depend on the other queries in the same call.
    verbose : int, default=0
        Progress bars for sampling when > 0.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit`` (only when X has string column names).
    X_train_, y_train_ : ndarray
        The (standardized) context stored by ``fit``.
    x_scaler_, y_scaler_ : StandardScaler
        Scalers fitted on the training data.
    model_spec_ : dict
        The full meta-training configuration of the model; its hash is the cache key.
    denoiser_ : torch.nn.Module
        This estimator's own copy of the meta-trained denoiser (CPU, float32).

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from skdiffusion import DiffusionICLRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> reg = DiffusionICLRegressor(random_state=0).fit(X[:300], y[:300])  # doctest: +SKIP
    >>> mean, std = reg.predict(X[300:], return_std=True)                   # doctest: +SKIP
    >>> reg.sample(X[300:305], n_samples=200).shape                         # doctest: +SKIP
    (5, 200)
    """

    _parameter_constraints = {
        "model": [str, ModelConfig],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_sampling_steps": [Interval(Integral, 1, None, closed="left")],
        "sampler": [StrOptions({"ddpm", "ddim"})],
        "eta": [Interval(Real, 0, 1, closed="both")],
        "antithetic": ["boolean"],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "allow_training": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, model="default", *, n_samples=24, n_sampling_steps=20, sampler="ddpm",
                 eta=0.0, antithetic=True, device="auto", allow_training=False,
                 random_state=None, verbose=0):
        self.model = model
        self.n_samples = n_samples
        self.n_sampling_steps = n_sampling_steps
        self.sampler = sampler
        self.eta = eta
        self.antithetic = antithetic
        self.device = device
        self.allow_training = allow_training
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fitting
    def model_spec(self):
        """The denoiser configuration ``model`` selects.

        Returns
        -------
        spec : dict
            JSON-serializable task prior, architecture, diffusion and training settings;
            ``pretrained.spec_key(spec)`` is the cache key. Sampling parameters do not
            enter it.
        """
        self._validate_params()
        config = self._config()
        if config is not None:
            return config.spec()
        if os.path.isfile(os.path.join(self.model, CONFIG)):
            return read_config(self.model)["config"]
        raise ValueError(f"model must be 'default', 'linear', a trained-model directory (with "
                         f"{CONFIG}) or a ModelConfig; got {self.model!r}")

    def _config(self):
        """The :class:`ModelConfig` that ``model`` names (None for a model directory)."""
        return self.model if isinstance(self.model, ModelConfig) else named_model(self.model)

    def _load_denoiser(self, spec):
        """(shared denoiser, schedule) for ``spec``: a directory's, or the cache's."""
        config = self._config()
        if config is None:
            return load_directory(self.model)
        return get_denoiser(spec, self.verbose, self.allow_training, pretrain_command(config))

    def _check_n_features(self, n_features):
        limit = self.model_spec_["max_features"]
        if n_features > limit and not takes_wide_inputs(self.model_spec_):
            raise ValueError(
                f"X has {n_features} features but this model accepts at most "
                f"max_features={limit}. Use model='default', which takes any number of "
                f"features, or reduce them first, e.g. make_pipeline(SelectKBest("
                f"f_regression, k={limit}), DiffusionICLRegressor(model=...)).")

    def fit(self, X, y):
        """Store (X, y) as the context and obtain the meta-trained denoiser.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs. The default model takes any number of columns (its
            transformer reads the ``max_features`` most relevant, its GP baseline all);
            other models at most ``max_features``.
        y : array-like of shape (n_samples,)
            Training targets.

        Returns
        -------
        self : DiffusionICLRegressor
            The fitted estimator.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)  # any real dtype (validate_data keeps y's)
        self.model_spec_ = self.model_spec()
        self._check_n_features(X.shape[1])
        shared, _ = self._load_denoiser(self.model_spec_)
        self.denoiser_ = copy.deepcopy(shared)  # its own: changing it changes no other
        self.x_scaler_, self.X_train_ = _standardize(X)
        self.y_scaler_, y_train = _standardize(y.reshape(-1, 1))
        self.y_train_ = y_train.ravel()
        return self

    # ---------------------------------------------------------------- sampling
    def _scaled_context(self, X, context):
        """Standardized (X_query, X_ctx, y_ctx) and the y scaler for this call."""
        if context is None:
            X = validate_data(self, X, reset=False, dtype=np.float64)
            return _queries(self.x_scaler_, X), self.X_train_, self.y_train_, self.y_scaler_
        if not (isinstance(context, (tuple, list)) and len(context) == 2):
            raise ValueError("context must be a pair (X_context, y_context)")
        X_ctx, y_ctx = check_X_y(*context, y_numeric=True, dtype=np.float64)
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != X_ctx.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the context has {X_ctx.shape[1]}")
        self._check_n_features(X.shape[1])
        xs, x_ctx = _standardize(X_ctx)
        ys, y_std = _standardize(np.asarray(y_ctx, dtype=np.float64).reshape(-1, 1))
        return _queries(xs, X), x_ctx, y_std.ravel(), ys

    def _model(self):
        """(device, runtime copy of the denoiser on it). A set denoiser runs in float64,
        which makes a query's result independent of how many other queries share its
        forward pass; a head denoiser gets that in float32 from fixed-size query chunks
        (:func:`~skdiffusion.inference.make_head_denoise_fn`)."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        device = "cuda" if self.device == "auto" and torch.cuda.is_available() else self.device
        device = "cpu" if device == "auto" else device
        dtype = torch.float32 if getattr(self.denoiser_, "per_query_head", False) else torch.float64
        copies = _RUNTIME.setdefault(self.denoiser_, {})
        if device not in copies:
            copies[device] = copy.deepcopy(self.denoiser_).to(device, dtype).eval()
        return device, copies[device]

    def _query_noise(self, X_q, n_samples, n_draws, seed, device):
        """Noise (n_draws, n_queries, n_samples) where each query's part depends only on
        ``seed`` and the query's own values."""
        out = torch.empty((n_draws, len(X_q), n_samples), dtype=torch.float64)
        g = torch.Generator()
        for i, row in enumerate(np.ascontiguousarray(X_q)):
            g.manual_seed(seed * 1_000_003 + zlib.crc32(row.tobytes()))
            out[:, i] = draw_noise(n_draws, (n_samples,), g, torch.float64,
                                   antithetic=self.antithetic)
        return out.to(device)

    def _sample_scaled(self, X, n_samples, context, random_state):
        check_is_fitted(self)
        x_q, x_ctx, y_ctx, y_scaler = self._scaled_context(X, context)
        rng = check_random_state(self.random_state if random_state is None else random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        subsets = self._context_subsets(len(y_ctx), rng)
        per = -(-n_samples // len(subsets))
        device, model = self._model()
        dtype = next(model.parameters()).dtype
        schedule = NoiseSchedule(self.model_spec_["timesteps"], self.model_spec_["schedule"])
        kw = self.sampler_settings(schedule.timesteps)
        draws = n_noise_draws(schedule, kw["n_steps"])
        as_t = lambda a: torch.as_tensor(a, device=device, dtype=dtype)[None]  # noqa: E731 (batch of 1)
        noise = torch.stack([self._query_noise(x_q, per, draws, seed + j, device)
                             for j in range(len(subsets))], dim=1).to(dtype)
        fit = (self._stored_context_fit(model, as_t) if context is None
               else context_fit(model, as_t(x_ctx), as_t(y_ctx)))
        s = sample_context_parts(
            model, schedule, [(as_t(x_ctx[rows]), as_t(y_ctx[rows])) for rows in subsets],
            as_t(x_q), noise[:, :, None], kw["sampler"], kw["n_steps"], kw["eta"],
            self.model_spec_["prediction_type"], progress=self.verbose > 0, fit=fit)
        pooled = s[:, 0].cpu().numpy()  # (n_parts, n_queries, per)
        samples = pooled.transpose(1, 2, 0).reshape(len(x_q), -1)[:, :n_samples]
        return samples, y_scaler

    def _stored_context_fit(self, model, as_t):
        """The baseline's :func:`~skdiffusion.inference.context_fit` to the context that
        ``fit`` stored, for the runtime denoiser ``model``: computed at the first call
        after ``fit`` and kept for the later ones, outside the estimator's state (like the
        runtime copy itself: neither pickled nor copied; it depends on the context and
        the denoiser alone, not on ``random_state``)."""
        key = (self.X_train_, self.y_train_, model)
        hit = _CONTEXT_FITS.get(self)
        if hit is None or any(a is not b for a, b in zip(hit[0], key)):
            fit = context_fit(model, as_t(self.X_train_), as_t(self.y_train_))
            hit = _CONTEXT_FITS[self] = (key, fit)
        return hit[1]

    def sampler_settings(self, timesteps=None):
        """The reverse-chain settings ``predict`` and ``sample`` use, as keywords of
        :func:`~skdiffusion.inference.sample_raw_tasks` (to sample many tasks in batches
        exactly as the estimator does, e.g. in the benchmarks).

        Parameters
        ----------
        timesteps : int, default=None
            Diffusion steps of the model to be sampled; ``n_sampling_steps`` is capped at
            it. ``None`` uses the fitted model's, or the ``timesteps`` parameter before
            ``fit``.

        Returns
        -------
        settings : dict
            ``sampler``, ``n_steps``, ``eta`` and ``antithetic``.
        """
        if timesteps is None:
            spec = getattr(self, "model_spec_", None) or self.model_spec()
            timesteps = spec["timesteps"]
        return dict(sampler=self.sampler, n_steps=min(self.n_sampling_steps, timesteps),
                    eta=self.eta, antithetic=self.antithetic)

    def _context_subsets(self, k, rng):
        """Row indices of the context parts: all rows, or random disjoint subsets of at
        most the model's ``max_context`` rows when the context is larger."""
        train = self.model_spec_["train"]
        limit = train.get("max_context") or train["n_points"] - 1
        if k <= limit:
            return [np.arange(k)]
        n_parts = -(-k // limit)
        return np.array_split(rng.permutation(k), n_parts)

    def sample(self, X, n_samples=None, context=None, random_state=None):
        """Draw samples from the predictive distribution of y at each row of X.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        n_samples : int, default=None
            Samples per query; ``None`` uses the ``n_samples`` parameter.
        context : tuple (X_context, y_context), default=None
            Use this data as the context instead of the data given to ``fit``
            (standardized with its own statistics, exactly as ``fit`` would).
        random_state : int, RandomState instance or None, default=None
            Overrides the estimator's ``random_state`` for this call.

        Returns
        -------
        samples : ndarray of shape (n_queries, n_samples)
            Samples in the original units of y.
        """
        n = self.n_samples if n_samples is None else n_samples
        if not (isinstance(n, Integral) and n >= 1):
            raise ValueError(f"n_samples must be a positive integer, got {n!r}")
        samples, y_scaler = self._sample_scaled(X, int(n), context, random_state)
        with np.errstate(over="ignore"):
            out = samples * y_scaler.scale_[0] + y_scaler.mean_[0]
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise ValueError(f"the samples of {bad.sum()} queries (rows {np.flatnonzero(bad)[:5]}) "
                             f"overflow float64 in the units of y (scale {y_scaler.scale_[0]:.3g})")
        return out

    def predict(self, X, context=None, return_std=False):
        """Predict with the mean of ``n_samples`` reverse-chain samples per query.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        context : tuple (X_context, y_context), default=None
            Predict for this task instead of the one given to ``fit``.
        return_std : bool, default=False
            Also return the standard deviation of the samples.

        Returns
        -------
        y_mean : ndarray of shape (n_queries,)
            Mean of the predictive samples.
        y_std : ndarray of shape (n_queries,)
            Their standard deviation; only when ``return_std`` is True.
        """
        samples = self.sample(X, context=context)
        mean = samples.mean(axis=1)
        return (mean, samples.std(axis=1)) if return_std else mean

    def predict_quantiles(self, X, quantiles=(0.05, 0.5, 0.95), context=None, n_samples=None):
        """Empirical quantiles of the predictive samples.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        quantiles : sequence of float in [0, 1], default=(0.05, 0.5, 0.95)
            Quantile levels.
        context : tuple (X_context, y_context), default=None
            As in :meth:`predict`.
        n_samples : int, default=None
            Samples per query; ``None`` uses the ``n_samples`` parameter. Tail quantiles
            need more samples than a mean: the empirical 5 % and 95 % quantiles of n
            independent samples enclose on average 0.9 (n - 1) / (n + 1) of the
            distribution, 0.83 for n = 24 and 0.89 for n = 200.

        Returns
        -------
        q : ndarray of shape (n_queries, n_quantiles)
        """
        q = np.asarray(quantiles, dtype=float)
        if q.ndim != 1 or np.any((q < 0) | (q > 1)):
            raise ValueError(f"quantiles must be a 1-D sequence in [0, 1], got {quantiles!r}")
        return np.quantile(self.sample(X, n_samples, context=context), q, axis=1).T

    # ------------------------------------------------------------- persistence
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never touch the live object
        if "denoiser_" in state:  # weights as CPU arrays, never a live device
            state["denoiser_"] = {k: v.detach().cpu().numpy()
                                  for k, v in self.denoiser_.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = _upgrade_state(state)
        weights = state.get("denoiser_")
        if isinstance(weights, dict):
            model, _ = build(state["model_spec_"])
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            state["denoiser_"] = model
        super().__setstate__(state)


FAR_QUERY = 1e6  # context standard deviations; no model extrapolates that far


def _standardize(A):
    """(StandardScaler fitted to the columns of A, A standardized), exact at any magnitude:
    the scaler is fitted on A divided by a power of two per column (which is exact), so
    its variance neither overflows (|A| ~ 1e155 and above) nor underflows (~1e-154 and
    below), and its statistics are then scaled back. A constant column keeps scale 1 in
    those units: a power of two on the scale of the column's values."""
    _, exponent = np.frexp(np.abs(A).max(axis=0))
    unit = np.ldexp(1.0, exponent)
    scaler = StandardScaler().fit(A / unit)
    scaler.mean_, scaler.scale_ = scaler.mean_ * unit, scaler.scale_ * unit
    with np.errstate(over="ignore", under="ignore"):  # var_ is informative only
        scaler.var_ = scaler.var_ * unit**2
    return scaler, (A - scaler.mean_) / scaler.scale_


def _queries(scaler, X):
    """Standardized queries, with a clear error for any beyond ``FAR_QUERY``."""
    with np.errstate(over="ignore"):
        Z = (X - scaler.mean_) / scaler.scale_
    far = ~(np.abs(Z) <= FAR_QUERY).all(axis=1)
    if far.any():
        raise ValueError(f"{far.sum()} queries (rows {np.flatnonzero(far)[:5]}) lie more than "
                         f"{FAR_QUERY:.0e} context standard deviations from the context's mean "
                         f"in some feature; no in-context model extrapolates that far")
    return Z


def _upgrade_state(state):
    """A pickled estimator of the earlier signature (model settings as parameters) with
    those settings turned into ``model=ModelConfig(...)``, or unchanged."""
    old = {name: state[name] for name in _OLD_MODEL_PARAMS if name in state}
    if not old:
        return state
    state = {k: v for k, v in state.items() if k not in old}
    config = ModelConfig(**{"architecture": "set", "baseline": "ridge", "echo": 1, "ema": 0.0,
                           **old})  # it had no head, echoing or average
    state["model"] = "linear" if config == named_model("linear") else config  # its default
    state.setdefault("allow_training", False)
    return state


_OLD_MODEL_PARAMS = ("prior", "max_features", "max_context", "n_layer", "n_embd", "n_head",
                     "timesteps", "schedule", "prediction_type", "n_train_steps", "batch_size",
                     "learning_rate", "variance_cap", "centred_dof")
