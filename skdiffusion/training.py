"""Meta-training loop (nanoGPT-style): AdamW, warm-up + cosine decay, clipping, resume.

Runs single-process by default; under ``torchrun`` (``torch.distributed`` initialized)
the model is wrapped in DistributedDataParallel, each rank draws its own tasks and only
rank 0 writes checkpoints and shows progress.
"""

import ctypes
import ctypes.util
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import load_training_state, save_training_state
from .priors import sample_tasks


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()
TRIM_EVERY = 10  # steps between heap trims


def release_heap():
    """Hand freed heap memory back to the OS. Batches of varying shapes fragment glibc's
    heap, which keeps what it frees: a CPU run's resident memory grew by 25-45 MB per
    step (10.8 GB over 1,000 steps) and stays flat with a trim every step (measured over
    60 steps of the default model, 0.61 GB)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class TrainConfig:
    """Meta-training settings (all plain values, so they hash and serialize)."""

    n_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    n_points: int = 48           # tokens per task: k context + the rest as targets
    max_context: int | None = None
    min_features: int = 1
    n_features: int | None = None  # largest d drawn; None -> max_features
    huber_delta: float = 3.0     # loss cap for the heavy tails of tiny contexts
    curriculum_steps: int = 0    # ramp d and n up over this many steps (0: off)
    seed: int = 0
    extra: dict = field(default_factory=dict)
    echo: int = 1                # optimizer steps per drawn batch, each with fresh (t, noise)
    init: str | None = None      # cache key of a trained model whose weights start the run
    ema: float = 0.0             # decay of the weights' moving average that is kept (0: off)

    def to_dict(self):
        """The fields as a dict; ``echo``, ``init`` and ``ema`` only where they differ from
        their defaults, so configurations (and cache keys) from before they existed stay
        valid."""
        out = asdict(self)
        for name, default in (("echo", 1), ("init", None), ("ema", 0.0)):
            if out[name] == default:
                del out[name]
        return out


def lr_at(step, cfg):
    """Linear warm-up then cosine decay to ``min_lr_ratio * learning_rate``."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.learning_rate * ratio


def curriculum(step, cfg, max_features):
    """(largest d, n_points) at ``step``: grows linearly from small tasks (Garg et al.)."""
    d_max = cfg.n_features or max_features
    if cfg.curriculum_steps <= 0 or step >= cfg.curriculum_steps:
        return d_max, cfg.n_points
    frac = step / cfg.curriculum_steps
    d = max(cfg.min_features, round(1 + frac * (d_max - 1)))
    n = max(8, round(cfg.n_points * (0.25 + 0.75 * frac)))
    return d, n


def draw_noise_levels(schedule, batch, generator, pairs=1):
    """(t, eps), each (B, N, pairs): a diffusion step and a noise draw per token and pair."""
    shape = (*batch.y.shape, pairs)
    t = torch.randint(1, schedule.timesteps + 1, shape, generator=generator)
    eps = torch.randn(shape, generator=generator)
    return t.to(batch.y.device), eps.to(batch.y.device)


def scaled_errors(model, schedule, batch, prediction_type, generator, pairs=1, noise=None,
                  feats=None):
    """(B, N, pairs) errors of the prediction in units of the model's own residual scale
    (1 for the pure transformer), each target token noised with its own t and eps
    (``noise``: (t, eps) of :func:`draw_noise_levels`, drawn here from ``generator`` if
    None).

    A set denoiser (y_t in the token) takes one (t, eps) per token; a model with a
    per-query head (``per_query_head``) runs its transformer once and its head on
    ``pairs`` draws per token, on the baseline ``feats`` of the batch if given."""
    y0 = batch.y[..., None]
    t, eps = draw_noise_levels(schedule, batch, generator, pairs) if noise is None else noise
    y_t = schedule.q_sample(y0, t, eps)
    if getattr(getattr(model, "module", model), "per_query_head", False):
        pred, scale = model(batch.x, batch.y, batch.is_context, y_t, t, return_scale=True,
                            feats=feats)
    else:
        if pairs != 1:
            raise ValueError("a set denoiser takes one (t, noise) draw per token (pairs=1)")
        y_in = torch.where(batch.is_context, batch.y, y_t[..., 0])
        pred, scale = model(batch.x, y_in, batch.is_context, t[..., 0], return_scale=True)
        pred, scale = pred[..., None], scale[..., None]
    target = schedule.target(y0, eps, t, prediction_type)
    return pred / scale - target / scale


def diffusion_loss(model, schedule, batch, prediction_type, generator, huber_delta, pairs=1,
                   noise=None, feats=None):
    """Huber loss of :func:`scaled_errors` on target tokens only."""
    is_target = (~batch.is_context)[..., None]
    err = scaled_errors(model, schedule, batch, prediction_type, generator, pairs, noise, feats)
    err = torch.nn.functional.huber_loss(err, torch.zeros_like(err), reduction="none",
                                         delta=huber_delta)
    return (err * is_target).sum() / (is_target.sum() * pairs).clamp(min=1)


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_divergence(model):
    """Largest difference of any weight between this rank and rank 0 (0 when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


def _draw_step(model, schedule, prior, cfg, step, g, device, pairs):
    """Everything random in the ``cfg.echo`` training steps from ``step`` on, from ``g`` in
    a fixed order (the tasks, then a (t, eps) per step), and the tasks' baseline features
    for a model with a per-query head: (batch, [(t, eps)] * echo, features or None, the
    state of ``g`` after)."""
    d, n = curriculum(step, cfg, model.max_features)
    batch = sample_tasks(prior, cfg.batch_size, n, model.max_features, g,
                         min(cfg.min_features, d), d, cfg.max_context).to(device)
    noise = [draw_noise_levels(schedule, batch, g, pairs) for _ in range(cfg.echo)]
    state = g.get_state()
    feats = (model.features(batch.x, batch.y, batch.is_context)
             if getattr(model, "per_query_head", False) else None)
    return batch, noise, feats, state


def train(model, schedule, prior, cfg, prediction_type="v", checkpoint_path=None,
          checkpoint_every=500, verbose=1, callback=None, device="cpu", pairs=1,
          prefetch=None):
    """Meta-train ``model`` in place; resumes from ``checkpoint_path`` if it exists.

    ``pairs``: (t, noise) draws per target token (see :func:`scaled_errors`).

    ``cfg.echo`` > 1 reuses each drawn batch and its features for that many optimizer
    steps, each with its own (t, noise) draws ("data echoing", Choi et al. 2019): where
    drawing tasks and their baseline features is most of a step (a 128-task batch of the
    default model: 16.5 s of features against 0.85 s for the network's forward and
    backward pass, two threads), echoing buys optimizer steps for little time.
    Checkpoints and ``callback`` fall on the end of a batch's steps (``checkpoint_every``
    is rounded up to a multiple of ``echo``), so runs resume as before.

    ``cfg.ema`` > 0 keeps an exponential moving average of the weights, updated after
    every optimizer step with that decay (``torch.optim.swa_utils.AveragedModel``; the
    first update copies the weights). ``callback`` is given the average, and ``model``
    ends holding it; the training checkpoint keeps both, so runs resume exactly, and one
    written without an average starts it from its weights.

    Tasks are drawn on the CPU (deterministic under ``cfg.seed`` and the rank) and moved
    to ``device``. With ``prefetch`` a second thread draws each step's tasks and noise
    and computes their baseline features (half of a CPU step for the GP baseline) while
    the previous step trains: the same numbers in the same order, so the run and its
    checkpoints are those of ``prefetch=False`` at the same thread count. The two
    threads share torch's intra-op threads, so for the run these are halved (restored
    after; float sums, and so the weights' last bits, depend on it); ``None`` prefetches
    where torch has two threads or more (with one, the caller asked for one core).
    Measured on 2 cores, the default model: 2.10-2.23 s per step on two threads
    without, 1.88-2.05 s with (docs/functions.md, "Computing the next step's features
    ahead").
    ``callback(step, model)`` runs on rank 0 every ``checkpoint_every`` steps (e.g. a
    benchmark for a learning curve). Returns the list of (step, loss) logged.
    """
    if cfg.echo < 1:
        raise ValueError(f"echo must be a positive number of steps per batch, got {cfg.echo}")
    if not 0 <= cfg.ema < 1:
        raise ValueError(f"ema must be a decay in [0, 1) (0: no average), got {cfg.ema}")
    checkpoint_every = -(-checkpoint_every // cfg.echo) * cfg.echo
    rank = _rank()
    model.to(device)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    step, history = 0, []
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None
    if checkpoint_path and os.path.exists(checkpoint_path):
        step, history = load_training_state(checkpoint_path, model, opt, g, rank, ema)
    averaged = ema.module if ema else model
    net = DistributedDataParallel(model) if dist.is_available() and dist.is_initialized() else model
    model.train()
    bar = tqdm(total=cfg.n_steps, initial=step, disable=verbose == 0 or rank != 0,
               desc="meta-training", dynamic_ncols=True)
    running = None
    draw = lambda s: _draw_step(model, schedule, prior, cfg, s, g, device, pairs)  # noqa: E731
    threads = torch.get_num_threads()
    prefetch = threads > 1 if prefetch is None else prefetch
    pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
    if pool:
        torch.set_num_threads(max(1, threads // 2))
    ahead = pool.submit(draw, step) if pool and step < cfg.n_steps else None
    try:
        while step < cfg.n_steps:
            batch, noises, feats, g_state = ahead.result() if pool else draw(step)
            if pool and step + cfg.echo < cfg.n_steps:
                ahead = pool.submit(draw, step + cfg.echo)  # the next batch's, beside this one
            for noise in noises[:cfg.n_steps - step]:
                loss = diffusion_loss(net, schedule, batch, prediction_type, None,
                                      cfg.huber_delta, pairs, noise, feats)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; "
                                             "lower learning_rate or check the prior")
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                if ema:
                    ema.update_parameters(model)
                step += 1
                if step % TRIM_EVERY == 0:
                    release_heap()
                running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
                if step % 50 == 0 or step == cfg.n_steps:
                    history.append((step, running))
                    bar.set_postfix(loss=f"{running:.4f}")
                bar.update(1)
            if rank == 0 and (step % checkpoint_every == 0 or step == cfg.n_steps):
                if checkpoint_path:
                    drawn = torch.Generator()  # g as it was after this batch's draws
                    drawn.set_state(g_state)
                    save_training_state(checkpoint_path, model, opt, drawn, step, history, ema)
                if callback is not None:
                    averaged.eval()
                    callback(step, averaged)
                    model.train()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
    bar.close()
    if ema:
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    return history
