"""DiffusionICLRegressor: the scikit-learn face of skdiffusion.

The estimator only validates, scales and orchestrates; the maths lives in
``diffusion``, the network in ``denoiser``, meta-training in ``training`` and the
trained-model cache in ``pretrained``.
"""

import copy
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

from .denoiser import VARIANCE_CAP
from .diffusion import PREDICTION_TYPES, SCHEDULES, NoiseSchedule, draw_noise, n_noise_draws
from .inference import sample_standardized
from .pretrained import build, get_denoiser, make_spec
from .priors import PRIORS

_RUNTIME = weakref.WeakKeyDictionary()  # denoiser -> {device: float64 copy}


class DiffusionICLRegressor(RegressorMixin, BaseEstimator):
    """In-context regression with a meta-trained conditional diffusion model.

    A GPT-2 denoiser, meta-trained once on synthetic regression tasks drawn from
    ``prior``, reads the training data as its context and draws samples of y at each
    query point by running a Gaussian diffusion (DDPM or DDIM) chain backwards.
    ``predict`` returns the mean of those samples; ``sample`` and
    ``predict_quantiles`` expose the predictive distribution itself.

    Meta-training depends only on the configuration (prior, architecture, diffusion
    and training settings), never on the data passed to ``fit``. The trained denoiser
    is cached under a hash of that configuration, in memory and on disk in
    ``$SKDIFFUSION_CACHE`` (default ``~/.cache/skdiffusion``), so ``fit`` trains only
    the first time a configuration is used; afterwards it only stores the context.

    Parameters
    ----------
    prior : str, tuple or dict, default=("noisy_linear", {"noise_range": (0.01, 5.0)})
        Task prior used for meta-training: a family name (``"linear"``,
        ``"noisy_linear"``, ``"sparse_linear"``, ``"relu_net"``, ``"decision_tree"``),
        ``(name, kwargs)``, or ``{"mixture": [(spec, weight), ...]}``. The default
        (noise std log-uniform from 0.01 to 5, for d <= 10 signals of variance d)
        spans nearly noiseless to mostly-noise tasks.
    max_features : int, default=10
        Largest number of features the denoiser accepts. Data with more features
        raises a ``ValueError``; reduce it first, e.g. with
        ``make_pipeline(PCA(n_components=10), DiffusionICLRegressor())``.
    max_context : int, default=128
        Largest context the denoiser was trained on. A larger context is split into
        random disjoint subsets of at most ``max_context`` rows; each subset draws
        its share of the samples and the samples are pooled.
    n_layer, n_embd, n_head : int, default=4, 96, 4
        Size of the GPT-2 backbone.
    timesteps : int, default=50
        Diffusion steps T (10 to 1000).
    schedule : {"cosine", "linear"}, default="cosine"
        Noise schedule; both end with abar_T < 1e-3 for every T.
    prediction_type : {"v", "epsilon", "sample"}, default="v"
        What the network predicts.
    n_train_steps : int, default=5500
        Meta-training optimizer steps (only run on a cache miss; the default
        configuration ships trained, by 4 minutes on one GPU).
    batch_size : int, default=512
        Tasks per meta-training step.
    learning_rate : float, default=1e-3
        Peak AdamW learning rate of meta-training.
    variance_cap : float, default=10.0
        Largest variance (standardized units of y) of the in-context linear baseline
        that the denoiser corrects. Queries far from a small context can have a larger
        predictive variance than the cap allows (``benchmarks/results/acceptance.md``).
    centred_dof : bool, default=False
        Give the linear baseline the degree of freedom and the leverage (1 / k) of the
        intercept that standardizing the context has already fitted. Off in the shipped
        model; on, it selects a separately trained denoiser.
    sampler : {"ddpm", "ddim"}, default="ddpm"
        Reverse chain: ancestral DDPM (calibrated) or DDIM (deterministic for
        ``eta=0``; under-disperses with few steps, see the benchmarks).
    n_sampling_steps : int, default=20
        Steps of the reverse chain, capped at ``timesteps``. DDPM with fewer steps than
        ``timesteps`` strides over the schedule, more finely near the end
        (:func:`~skdiffusion.diffusion.ddpm_timesteps`). Cost is proportional to steps x
        ``n_samples`` x queries; 20 steps predict and cover as well as all 50 of the
        default schedule (``benchmarks/results/sampling_budget.md``).
    eta : float, default=0.0
        DDIM stochasticity in [0, 1].
    n_samples : int, default=24
        Samples per query used by ``predict`` and ``predict_quantiles``.
    antithetic : bool, default=True
        Draw the sampling noise in pairs (e, -e). Every sample is still an exact draw,
        but the mean of a pair cancels the part of the samples that is linear in the
        noise, so ``predict`` has far less Monte Carlo error than with independent
        samples (24 antithetic samples predict about as well as 64 independent ones).
        Set to False for independent samples.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where sampling runs; ``"auto"`` uses CUDA when available.
    random_state : int, RandomState instance or None, default=None
        Seeds the sampling noise (and the choice of context subsets). Each query's
        noise is derived from ``random_state`` and that query's values alone, so a
        prediction does not depend on the other queries in the same call.
    verbose : int, default=0
        Progress bars for meta-training and sampling when > 0.

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
        The full meta-training configuration; its hash is the cache key.
    denoiser_ : torch.nn.Module
        The meta-trained denoiser (CPU, float32).

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
        "prior": [str, tuple, list, dict],
        "max_features": [Interval(Integral, 1, None, closed="left")],
        "max_context": [Interval(Integral, 1, None, closed="left")],
        "n_layer": [Interval(Integral, 1, None, closed="left")],
        "n_embd": [Interval(Integral, 2, None, closed="left")],
        "n_head": [Interval(Integral, 1, None, closed="left")],
        "timesteps": [Interval(Integral, 10, 1000, closed="both")],
        "schedule": [StrOptions(set(SCHEDULES))],
        "prediction_type": [StrOptions(set(PREDICTION_TYPES))],
        "n_train_steps": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "variance_cap": [Interval(Real, 0, None, closed="neither")],
        "centred_dof": ["boolean"],
        "sampler": [StrOptions({"ddpm", "ddim"})],
        "n_sampling_steps": [Interval(Integral, 1, None, closed="left")],
        "eta": [Interval(Real, 0, 1, closed="both")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "antithetic": ["boolean"],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, *, prior=("noisy_linear", {"noise_range": (0.01, 5.0)}), max_features=10,
                 max_context=128, n_layer=4, n_embd=96, n_head=4, timesteps=50,
                 schedule="cosine", prediction_type="v", n_train_steps=5500, batch_size=512,
                 learning_rate=1e-3, variance_cap=VARIANCE_CAP, centred_dof=False,
                 sampler="ddpm", n_sampling_steps=20, eta=0.0, n_samples=24, antithetic=True,
                 device="auto", random_state=None, verbose=0):
        self.prior = prior
        self.max_features = max_features
        self.max_context = max_context
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.n_head = n_head
        self.timesteps = timesteps
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.n_train_steps = n_train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.variance_cap = variance_cap
        self.centred_dof = centred_dof
        self.sampler = sampler
        self.n_sampling_steps = n_sampling_steps
        self.eta = eta
        self.n_samples = n_samples
        self.antithetic = antithetic
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fitting
    def model_spec(self):
        """The denoiser configuration these parameters select.

        ``fit`` loads the denoiser stored under ``pretrained.spec_key(model_spec())``: the
        shipped weights for the default configuration, else the cache, else it meta-trains
        one. Only the model and training parameters enter; sampling parameters do not.

        Returns
        -------
        spec : dict
            JSON-serializable task prior, architecture, diffusion and training settings.
        """
        self._validate_params()
        name = self.prior if isinstance(self.prior, str) else None
        if name is not None and name not in PRIORS:
            raise ValueError(f"prior must be one of {sorted(PRIORS)}, a (name, kwargs) pair "
                             f"or a mixture dict; got {self.prior!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        train = dict(n_steps=self.n_train_steps, batch_size=self.batch_size,
                     learning_rate=self.learning_rate,
                     warmup_steps=max(1, min(500, self.n_train_steps // 10)),
                     n_points=self.max_context + 16, max_context=self.max_context)
        return make_spec(self.prior, self.max_features, self.n_layer, self.n_embd, self.n_head,
                         self.timesteps, self.schedule, self.prediction_type, train=train,
                         variance_cap=self.variance_cap, centred_dof=self.centred_dof)

    def _check_n_features(self, n_features):
        if n_features > self.max_features:
            raise ValueError(
                f"X has {n_features} features but this model accepts at most "
                f"max_features={self.max_features}. Reduce the features first, e.g. "
                f"make_pipeline(PCA(n_components={self.max_features}), DiffusionICLRegressor()), "
                f"or use a model with a larger max_features.")

    def fit(self, X, y):
        """Store (X, y) as the context and obtain the meta-trained denoiser.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs, at most ``max_features`` columns.
        y : array-like of shape (n_samples,)
            Training targets.

        Returns
        -------
        self : DiffusionICLRegressor
            The fitted estimator.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self._check_n_features(X.shape[1])
        self.model_spec_ = self.model_spec()
        self.denoiser_, _ = get_denoiser(self.model_spec_, verbose=self.verbose)
        self.x_scaler_ = StandardScaler().fit(X)
        self.y_scaler_ = StandardScaler().fit(y.reshape(-1, 1))
        self.X_train_ = self.x_scaler_.transform(X)
        self.y_train_ = self.y_scaler_.transform(y.reshape(-1, 1)).ravel()
        return self

    # ---------------------------------------------------------------- sampling
    def _scaled_context(self, X, context):
        """Standardized (X_query, X_ctx, y_ctx) and the y scaler for this call."""
        if context is None:
            X = validate_data(self, X, reset=False, dtype=np.float64)
            return self.x_scaler_.transform(X), self.X_train_, self.y_train_, self.y_scaler_
        if not (isinstance(context, (tuple, list)) and len(context) == 2):
            raise ValueError("context must be a pair (X_context, y_context)")
        X_ctx, y_ctx = check_X_y(*context, y_numeric=True, dtype=np.float64)
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != X_ctx.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the context has {X_ctx.shape[1]}")
        self._check_n_features(X.shape[1])
        xs, ys = StandardScaler().fit(X_ctx), StandardScaler().fit(y_ctx.reshape(-1, 1))
        return xs.transform(X), xs.transform(X_ctx), ys.transform(y_ctx.reshape(-1, 1)).ravel(), ys

    def _model(self):
        """(device, float64 copy of the denoiser on it); float64 makes a query's result
        independent of how many other queries share its forward pass."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        device = "cuda" if self.device == "auto" and torch.cuda.is_available() else self.device
        device = "cpu" if device == "auto" else device
        copies = _RUNTIME.setdefault(self.denoiser_, {})
        if device not in copies:
            copies[device] = copy.deepcopy(self.denoiser_).double().to(device).eval()
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
        schedule = NoiseSchedule(self.model_spec_["timesteps"], self.model_spec_["schedule"])
        kw = self.sampler_settings(schedule.timesteps)
        draws = n_noise_draws(schedule, kw["n_steps"])
        as_t = lambda a: torch.as_tensor(a, device=device)[None]  # noqa: E731 (batch of 1)
        pooled = []
        for j, rows in enumerate(subsets):
            noise = self._query_noise(x_q, per, draws, seed + j, device)
            s = sample_standardized(
                model, schedule, as_t(x_ctx[rows]), as_t(y_ctx[rows]), as_t(x_q), noise[:, None],
                kw["sampler"], kw["n_steps"], kw["eta"],
                self.model_spec_["prediction_type"], progress=self.verbose > 0)
            pooled.append(s[0].cpu().numpy())
        samples = np.stack(pooled, axis=2).reshape(len(x_q), -1)[:, :n_samples]
        return samples, y_scaler

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
        most ``max_context`` rows when the context is larger."""
        if k <= self.max_context:
            return [np.arange(k)]
        n_parts = -(-k // self.max_context)
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
        return samples * y_scaler.scale_[0] + y_scaler.mean_[0]

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
        weights = state.get("denoiser_")
        if isinstance(weights, dict):
            model, _ = build(state["model_spec_"])
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            state["denoiser_"] = model
        super().__setstate__(state)
