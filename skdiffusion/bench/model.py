"""The denoiser an estimator configuration uses, sampled on batches of raw tasks."""

import time

import torch

from ..checkpoint import read_config
from ..config import ModelConfig, named_model
from ..estimator import DiffusionICLRegressor
from ..inference import sample_raw_tasks
from ..pretrained import get_denoiser, load, spec_key


def load_trained(directory=None):
    """(spec, denoiser, schedule) of a trained model directory, or of a shipped model by
    name (``"default"``, ``"linear"``; ``None`` or ``"shipped"``: the default)."""
    config = named_model("default" if directory in (None, "shipped") else directory)
    if config is not None:
        spec = config.spec()
        return (spec, *get_denoiser(spec))
    return (read_config(directory)["config"], *load(directory))


def estimator_params(params):
    """``DiffusionICLRegressor`` keywords from JSON-able bench parameters, in which
    ``model`` may be a dict of :class:`~skdiffusion.ModelConfig` keywords."""
    params = dict(params or {})
    if isinstance(params.get("model"), dict):
        params["model"] = ModelConfig(**params["model"])
    return params


class BenchModel:
    """The meta-trained denoiser of ``DiffusionICLRegressor(**estimator_params(params))``
    and its sampler
    settings; :meth:`sample` draws y at each task's query, many tasks per forward pass
    (float32, for any architecture: batch invariance does not matter here)."""

    def __init__(self, params=None):
        self.params = dict(params or {})  # JSON-able, as stored in the report
        self.estimator_params = estimator_params(self.params)
        reg = DiffusionICLRegressor(**self.estimator_params)
        self.spec = reg.model_spec()
        self.key = spec_key(self.spec)
        self.denoiser, self.schedule = reg._load_denoiser(self.spec)
        # independent samples (not the estimator's antithetic pairs): the Monte Carlo
        # correction of the error curves and the fair CRPS estimator assume them
        self.sampler_kw = {**reg.sampler_settings(self.schedule.timesteps), "antithetic": False,
                           "prediction_type": self.spec["prediction_type"]}

    def sample(self, tasks, n_samples, seed, batch=1000, **sampler_kw):
        """(samples (n, n_samples), seconds) for :class:`~.tasks.Tasks`."""
        kw = {**self.sampler_kw, **sampler_kw}
        g = torch.Generator().manual_seed(seed)
        t0, out = time.perf_counter(), []
        for i in range(0, len(tasks), batch):
            part = [torch.tensor(a[i:i + batch], dtype=torch.float32)
                    for a in (tasks.X_ctx, tasks.y_ctx, tasks.X_q)]
            out.append(sample_raw_tasks(self.denoiser, self.schedule, *part, n_samples, g, **kw))
        samples = torch.cat(out).double().numpy()[:, 0]
        return samples, time.perf_counter() - t0
