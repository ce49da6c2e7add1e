"""Meta-trained denoisers, looked up by configuration: memory, shipped, disk, or train.

Meta-training depends only on the configuration (prior, architecture, diffusion and
training settings, seed), never on a user's data, so a trained denoiser is cached under
a hash of exactly that configuration: in memory for the process, inside the package for
shipped models, and on disk under ``$SKDIFFUSION_CACHE`` (default ``~/.cache/skdiffusion``).
"""

import hashlib
import json
import os
import time

import torch

from .checkpoint import CONFIG, WEIGHTS, load_weights, read_config, save_model, training_state_step
from .denoiser import VARIANCE_CAP, SetDenoiser
from .diffusion import NoiseSchedule
from .head import HeadDenoiser
from .priors import make_prior
from .training import TrainConfig, rank_divergence, train

ARCHITECTURES = ("set", "head")
HEAD_DEFAULTS = {"width": 64, "depth": 2, "pairs": 4}
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "weights")
_MEMORY = {}


def make_spec(prior="noisy_linear", max_features=10, n_layer=4, n_embd=128, n_head=4,
              timesteps=100, schedule="cosine", prediction_type="v", linear_baseline=True,
              train=None, ridge_penalty="fixed", variance_cap=VARIANCE_CAP, centred_dof=False,
              architecture="set", head=None):
    """Canonical, JSON-able configuration of a meta-trained denoiser.

    ``architecture`` is ``"set"`` (:class:`~skdiffusion.denoiser.SetDenoiser`: y_t and t
    in the query token) or ``"head"`` (:class:`~skdiffusion.head.HeadDenoiser`: the
    transformer encodes each query once, a diffusion head runs the chain); ``head`` holds
    the head's ``width``, ``depth`` and the ``pairs`` of (t, noise) drawn per token in
    training. ``variance_cap``, ``centred_dof`` and ``architecture`` are stored only when
    they differ from their defaults, so configurations (and cache keys) from before they
    existed stay valid."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    cfg = TrainConfig(**(train or {}))
    spec = {"prior": prior, "max_features": int(max_features), "n_layer": int(n_layer),
            "n_embd": int(n_embd), "n_head": int(n_head), "timesteps": int(timesteps),
            "schedule": schedule, "prediction_type": prediction_type,
            "linear_baseline": bool(linear_baseline), "residual_scaling": bool(linear_baseline),
            "ridge_penalty": ridge_penalty,
            "train": cfg.to_dict()}
    if variance_cap != VARIANCE_CAP:
        spec["variance_cap"] = float(variance_cap)
    if centred_dof:
        spec["centred_dof"] = True
    if architecture == "head":
        spec["architecture"] = "head"
        spec["head"] = {**HEAD_DEFAULTS, **(head or {})}
    return json.loads(json.dumps(spec))  # tuples -> lists, so equal specs compare equal


def takes_wide_inputs(spec):
    """Whether the denoiser of ``spec`` reads more than ``max_features`` features (the ARD
    baseline: :attr:`~skdiffusion.head.HeadDenoiser.wide_inputs`)."""
    return spec.get("architecture") == "head" and spec["head"].get("baseline") == "ard"


def spec_key(spec):
    """Stable hash of a spec: the cache key."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build(spec):
    """Fresh (untrained) denoiser and its noise schedule; init seeded by the spec."""
    schedule = NoiseSchedule(spec["timesteps"], spec["schedule"])
    with torch.random.fork_rng():
        torch.manual_seed(spec["train"]["seed"])
        sizes = spec["max_features"], spec["n_layer"], spec["n_embd"], spec["n_head"]
        baseline = (spec.get("ridge_penalty", "fixed"), spec.get("variance_cap", VARIANCE_CAP),
                    spec.get("centred_dof", False))
        if spec.get("architecture", "set") == "head":
            head = spec["head"]
            model = HeadDenoiser(*sizes, schedule.abar, spec["prediction_type"], *baseline,
                                 head_width=head["width"], head_depth=head["depth"],
                                 baseline=head.get("baseline", "ridge"))
        else:
            model = SetDenoiser(*sizes, spec["linear_baseline"], schedule.abar,
                                spec["prediction_type"], spec.get("residual_scaling", False),
                                *baseline)
    return model.eval(), schedule


def train_pairs(spec):
    """(t, noise) draws per target token in meta-training: the head's ``pairs``, else 1."""
    return spec.get("head", {}).get("pairs", 1)


def _prior(spec):
    p = spec["prior"]
    return make_prior(p if isinstance(p, str) or isinstance(p, dict) else tuple(p))


def cache_dir():
    return os.environ.get("SKDIFFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "skdiffusion")


def load(directory, spec=None):
    """Load a model directory; if ``spec`` is given it must match the stored one."""
    stored = read_config(directory).get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"{directory}/{CONFIG} has no 'config' entry")
    if spec is not None and stored != spec:
        raise ValueError(f"model in {directory} was trained with a different configuration")
    model, schedule = build(stored)
    return load_weights(directory, model), schedule


def load_directory(directory):
    """(denoiser, schedule) of a trained-model directory, read once per process."""
    key = ("dir", os.path.abspath(directory))
    if key not in _MEMORY:
        _MEMORY[key] = load(directory)
    return _MEMORY[key]


def trained_directory(key):
    """The directory of the trained model with cache key ``key`` (shipped, then on disk),
    or None."""
    for directory in (os.path.join(SHIPPED_DIR, key), os.path.join(cache_dir(), key)):
        if os.path.exists(os.path.join(directory, WEIGHTS)):
            return directory
    return None


def pretrain(spec, out_dir, verbose=1, callback=None, command=None, device="cpu", rank=0,
             checkpoint_every=None):
    """Meta-train ``spec`` into ``out_dir`` (resuming from its training checkpoint).

    The checkpoint is written every ``checkpoint_every`` steps (default: every 1,000, or
    at the end of shorter runs). Under ``torchrun`` every rank calls this; only ``rank`` 0
    writes the model. The summary stored with it keeps the loss logged every 50 steps
    (``loss_history``, an exponential moving average of the batch loss). With
    ``spec["train"]["init"]`` the run starts from that trained model's weights (a
    fine-tune; its optimizer state starts afresh)."""
    model, schedule = build(spec)
    os.makedirs(out_dir, exist_ok=True)
    state = os.path.join(out_dir, "train_state.pt")
    t0 = time.time()
    cfg = TrainConfig(**spec["train"])
    if cfg.init is not None:
        source = trained_directory(cfg.init)
        if source is None:
            raise ValueError(f"init: no trained model with cache key {cfg.init!r} is shipped "
                             f"or in {cache_dir()}")
        load_weights(source, model)
    history = train(model, schedule, _prior(spec), cfg, spec["prediction_type"],
                    pairs=train_pairs(spec),
                    checkpoint_path=state, verbose=verbose,
                    checkpoint_every=checkpoint_every or max(1, min(1000, cfg.n_steps)),
                    callback=callback, device=device)
    divergence = rank_divergence(model)
    model.cpu()
    summary = {"steps": cfg.n_steps, "final_loss": history[-1][1] if history else None,
               "seconds_this_run": round(time.time() - t0, 1), "command": command,
               "rank_weight_divergence": divergence,
               "loss_history": [[step, loss] for step, loss in history]}
    if rank == 0:
        save_model(out_dir, model, spec, summary)
    return model, schedule


TRAINING_ENV = "SKDIFFUSION_ALLOW_TRAINING"
CHECKPOINT_SECONDS = 120  # an opted-in training run checkpoints about this often


def seconds_per_step(spec, device="cpu", n=3, warmup=1):
    """Mean wall time of one meta-training optimizer step of ``spec`` (after ``warmup``)."""
    def run(steps):
        model, schedule = build(spec)
        cfg = TrainConfig(**{**spec["train"], "n_steps": steps, "warmup_steps": 1})
        t0 = time.perf_counter()
        train(model, schedule, _prior(spec), cfg, spec["prediction_type"], verbose=0,
              device=device, pairs=train_pairs(spec))
        return time.perf_counter() - t0
    run(warmup)
    return run(n) / n


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def get_denoiser(spec, verbose=0, allow_training=False, command=None):
    """The trained denoiser for ``spec``: from memory, the package, disk, or by training.

    Training happens only with ``allow_training`` (or ``$SKDIFFUSION_ALLOW_TRAINING=1``);
    it then shows a progress bar with an ETA and checkpoints every couple of minutes, so
    an interrupted run resumes. Otherwise a cache miss times a few training steps and
    raises a ``ValueError`` with the estimate and ``command``, the command that trains it."""
    key = spec_key(spec)
    if key in _MEMORY:
        return _MEMORY[key]
    directory = trained_directory(key)
    if directory is not None:
        _MEMORY[key] = load(directory, spec)
        return _MEMORY[key]
    out = os.path.join(cache_dir(), key)
    done = training_state_step(os.path.join(out, "train_state.pt"))
    per_step = seconds_per_step(spec)
    left = spec["train"]["n_steps"] - done
    if not (allow_training or os.environ.get(TRAINING_ENV, "") not in ("", "0")):
        resume = f", resuming from step {done}" if done else ""
        raise ValueError(
            f"no trained model for this configuration (cache key {key}); meta-training it "
            f"would take about {_duration(left * per_step)} here ({left} steps at "
            f"{per_step:.2f} s/step on the CPU{resume}). Train it once with\n    "
            f"{command or 'python -m skdiffusion pretrain'}\n(fit then finds it in {out}), or "
            f"pass allow_training=True (or set {TRAINING_ENV}=1) to train inside fit.")
    every = max(1, int(CHECKPOINT_SECONDS / per_step))
    _MEMORY[key] = pretrain(spec, out, max(1, verbose), checkpoint_every=every)
    return _MEMORY[key]
