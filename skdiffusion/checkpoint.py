"""Checkpoint I/O: resumable training state, and shipped models as safetensors + JSON.

A model directory holds ``model.safetensors`` (weights only: loading runs no code) and
``config.json`` (the configuration that rebuilds the network, plus a training summary).
"""

import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _atomic(path, write):
    """Write through a temporary file in the same directory, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; model files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_training_state(path, model, optimizer, generator, step, history, ema=None):
    """Everything needed to resume: weights, optimizer, step, RNG state, loss history and
    the weights' moving average (``ema``, an ``AveragedModel``) where one is kept."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "step": step,
             "history": [list(h) for h in history]}
    if ema is not None:
        state["ema"] = ema.state_dict()
    _atomic(path, lambda p: torch.save(state, open(p, "wb")))


def _read_training_state(path):
    """The dict of a :func:`save_training_state` file (tensors and plain values only:
    never unpickles code), with a clear error if it is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError on a bad zip...
        raise ValueError(f"cannot read the training checkpoint {path} (truncated, corrupted "
                         f"or not written by skdiffusion: {type(e).__name__}); delete it to "
                         f"train from the start") from None


def training_state_step(path):
    """The step a training checkpoint reached (0 when there is none)."""
    return int(_read_training_state(path)["step"]) if os.path.exists(path) else 0


def load_training_state(path, model, optimizer, generator, rank=0, ema=None):
    """Restore a :func:`save_training_state` file; returns (step, history).

    Rank 0 restores its task generator exactly; other ranks reseed from the step. An
    ``ema`` given restores the file's average, or (a file without one) starts from the
    restored weights at its next update.
    """
    state = _read_training_state(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    if rank == 0:
        generator.set_state(state["generator"])
    else:
        generator.manual_seed(generator.initial_seed() * 7919 + state["step"])
    return state["step"], [tuple(h) for h in state["history"]]


def save_model(directory, model, config, summary=None):
    """Write weights (safetensors) and ``{"config": ..., "summary": ...}`` (JSON)."""
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(os.path.join(directory, WEIGHTS), lambda p: save_file(tensors, p))
    text = json.dumps({"config": config, "summary": summary or {}}, indent=2, sort_keys=True)
    _atomic(os.path.join(directory, CONFIG), lambda p: open(p, "w").write(text + "\n"))


def read_config(directory):
    """The ``config.json`` of a model directory, with a clear error if it is unreadable."""
    path = os.path.join(directory, CONFIG)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model configuration {path}: {e}") from e


def load_weights(directory, model):
    """Load ``model.safetensors`` into ``model``, checking names and shapes."""
    path = os.path.join(directory, WEIGHTS)
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read weights {path} (missing, truncated or corrupted): {e}") from e
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"weights {path} do not match the model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"weights {path}: {name} has shape {tuple(tensor.shape)}, "
                             f"model expects {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"weights {path}: {name} holds NaN or infinite values; the file "
                             f"is damaged (delete it, or retrain)")
    model.load_state_dict(tensors)
    return model
