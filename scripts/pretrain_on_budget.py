"""Meta-train one estimator configuration within a wall-clock deadline (e.g. on a lent GPU).

Times a few optimizer steps of the configuration on this machine, picks the largest step
count (a multiple of 500) that ends training before ``--deadline`` seconds after start,
and meta-trains exactly ``DiffusionICLRegressor(**ESTIMATOR, n_train_steps=N).model_spec()``
(plus ``--spec`` overrides) with :func:`skdiffusion.pretrained.pretrain`. Weights are
snapshotted at a few steps for a learning curve. Once the chosen settings are the
estimator's defaults, ``python -m skdiffusion pretrain --default`` reproduces the spec on
any machine (the weights only up to floating-point non-determinism). ``--steps N`` skips
the timing and trains N steps (e.g. on a CPU, across sessions: a rerun resumes from the
checkpoint that ``--checkpoint-every`` sets how often to write).

    python scripts/pretrain_on_budget.py --out runs/gpu/evidence --deadline 390 \\
        --estimator '{"batch_size": 512, "learning_rate": 1e-3}' --spec '{"ridge_penalty": "evidence"}'
"""

import argparse
import json
import os
import shlex
import sys
import time

import torch

from skdiffusion.checkpoint import save_model
from skdiffusion.estimator import DiffusionICLRegressor
from skdiffusion.pretrained import _prior, build, pretrain
from skdiffusion.training import TrainConfig, train

SNAPSHOTS = (1000, 2000, 4000, 8000, 16000, 32000)


def make(estimator_kw, overrides, n_steps):
    spec = DiffusionICLRegressor(**estimator_kw, n_train_steps=n_steps).model_spec()
    spec.update(overrides)
    return json.loads(json.dumps(spec))


def seconds_per_step(spec, device, n=30, warmup=10):
    """Mean wall time of one optimizer step (after ``warmup`` steps)."""
    def run(steps):
        model, schedule = build(spec)
        cfg = TrainConfig(**{**spec["train"], "n_steps": steps, "warmup_steps": 1})
        t0 = time.perf_counter()
        train(model, schedule, _prior(spec), cfg, spec["prediction_type"], verbose=0, device=device)
        return time.perf_counter() - t0
    run(warmup)
    return run(n) / n


def main():
    start = time.time()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--deadline", type=float, help="seconds after start")
    p.add_argument("--steps", type=int, help="train this many steps instead (no timing)")
    p.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    p.add_argument("--estimator", default="{}", help="JSON of DiffusionICLRegressor kwargs")
    p.add_argument("--spec", default="{}", help="JSON of spec fields to override")
    args = p.parse_args()
    if (args.deadline is None) == (args.steps is None):
        p.error("give exactly one of --deadline and --steps")
    est_kw, overrides = json.loads(args.estimator), json.loads(args.spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_steps, note = args.steps, ""
    if n_steps is None:
        per_step = seconds_per_step(make(est_kw, overrides, 10_000), device)
        budget = args.deadline - (time.time() - start) - 15  # 15 s to save
        n_steps = max(500, int(budget / per_step) // 500 * 500)
        note = f"  # chose n_train_steps={n_steps} at {per_step * 1000:.1f} ms/step on {device}"
        print(f"{device}: {per_step * 1000:.1f} ms/step, {budget:.0f} s left -> {n_steps} steps",
              flush=True)
    spec = make(est_kw, overrides, n_steps)

    def snapshot(step, model):
        if step in SNAPSHOTS:
            save_model(os.path.join(args.out, "snapshots", str(step)), model, spec, {"steps": step})

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv) + note
    pretrain(spec, args.out, verbose=1, callback=snapshot, command=command, device=device,
             checkpoint_every=args.checkpoint_every)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
