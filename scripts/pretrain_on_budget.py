"""Meta-train one model configuration within a wall-clock deadline (e.g. on a lent GPU).

Times a few optimizer steps of the configuration on this machine, picks the largest step
count (a multiple of 500) that ends training before ``--deadline`` seconds after start,
and meta-trains exactly ``ModelConfig(**CONFIG, n_train_steps=N).spec()`` (plus
``--spec`` overrides) with :func:`skdiffusion.pretrained.pretrain`. Weights are
snapshotted at a few steps (with the seconds since start) for a learning curve.
``--steps N`` skips the timing and trains N steps (e.g. on a CPU, across sessions: a
rerun resumes from the checkpoint that ``--checkpoint-every`` sets how often to write).
``--train`` overrides training settings: ``{"echo": 8}`` reuses each drawn batch for 8
optimizer steps (where its baseline features dominate a step), ``{"init": KEY}`` starts
from the trained model with cache key KEY (a fine-tune).
The result is a model directory: ``DiffusionICLRegressor(model=OUT)`` uses it.

    python scripts/pretrain_on_budget.py --out runs/gpu/head --deadline 470 \
        --config '{"architecture": "head", "batch_size": 512}'
"""

import argparse
import json
import os
import shlex
import sys
import time

import torch

from skdiffusion.checkpoint import save_model, training_state_step
from skdiffusion.config import ModelConfig
from skdiffusion.pretrained import pretrain, seconds_per_step
from skdiffusion.training import TrainConfig

SNAPSHOTS = (500, 1000, 1500, 2000, 4000, 8000, 16000, 32000)


def make(config_kw, overrides, n_steps, train=None):
    spec = ModelConfig(**{**config_kw, "n_train_steps": n_steps}).spec()
    spec.update(overrides)
    spec["train"] = TrainConfig(**{**spec["train"], **(train or {})}).to_dict()
    return json.loads(json.dumps(spec))


def main():
    start = time.time()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--deadline", type=float, help="seconds after start")
    p.add_argument("--steps", type=int, help="train this many steps instead (no timing)")
    p.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    p.add_argument("--config", default="{}", help="JSON of ModelConfig kwargs")
    p.add_argument("--spec", default="{}", help="JSON of spec fields to override")
    p.add_argument("--train", default="{}",
                   help='JSON of training settings to override, e.g. \'{"echo": 4}\'')
    args = p.parse_args()
    if (args.deadline is None) == (args.steps is None):
        p.error("give exactly one of --deadline and --steps")
    config_kw, overrides = json.loads(args.config), json.loads(args.spec)
    train = json.loads(args.train)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_steps, note = args.steps, ""
    if n_steps is None:
        per_step = seconds_per_step(make(config_kw, overrides, 10_000, train), device, n=30,
                                    warmup=10)
        budget = args.deadline - (time.time() - start) - 15  # 15 s to save
        n_steps = max(500, int(budget / per_step) // 500 * 500)
        note = f"  # chose n_train_steps={n_steps} at {per_step * 1000:.1f} ms/step on {device}"
        print(f"{device}: {per_step * 1000:.1f} ms/step, {budget:.0f} s left -> {n_steps} steps",
              flush=True)
    spec = make(config_kw, overrides, n_steps, train)

    done = [training_state_step(os.path.join(args.out, "train_state.pt"))]

    def snapshot(step, model):
        """Weights at the first checkpoint at or after each of SNAPSHOTS (named by step)."""
        if any(done[0] < s <= step for s in SNAPSHOTS):
            save_model(os.path.join(args.out, "snapshots", str(step)), model, spec,
                       {"steps": step, "seconds": round(time.time() - start, 1)})
        done[0] = step

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv) + note
    pretrain(spec, args.out, verbose=1, callback=snapshot, command=command, device=device,
             checkpoint_every=args.checkpoint_every)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
