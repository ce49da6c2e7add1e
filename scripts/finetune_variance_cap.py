"""Fine-tune the shipped default denoiser under a larger baseline variance cap (resumable).

An experiment, not a shipped recipe: the default model was trained with the Gaussian
baseline's variance clamped at 10 (``denoiser.VARIANCE_CAP``), which under-covers 1-3
point contexts. This continues its training with ``variance_cap`` raised, on the same
prior (fresh AdamW state, new task seed), so that the effect of the cap can be measured
without a GPU run from scratch. The saved configuration records the parent's cache key
and the fine-tuning settings under ``train.extra``, so it never collides with the key of
a from-scratch configuration. Snapshots of the weights go to OUT/snapshots/STEP for
``benchmarks/learning_curve.py``.

    python scripts/finetune_variance_cap.py --out runs/ft100 --cap 100 --steps 480
    python scripts/finetune_variance_cap.py --out runs/ft100c --cap 100 --centred-dof --steps 480
    python benchmarks/acceptance.py --model runs/ft100 --out /tmp/acceptance_ft100.md
"""

import argparse
import copy
import os
import shlex
import sys
import time

from skdiffusion.checkpoint import save_model
from skdiffusion.estimator import DiffusionICLRegressor
from skdiffusion.pretrained import _prior, get_denoiser, spec_key
from skdiffusion.training import TrainConfig, train


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (resumes from it)")
    p.add_argument("--cap", type=float, default=100.0, help="new baseline variance cap")
    p.add_argument("--centred-dof", action="store_true",
                   help="also count the centring's degree of freedom in the baseline")
    p.add_argument("--steps", type=int, default=480, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=25, help="warm-up steps")
    p.add_argument("--seed", type=int, default=1, help="task seed (the parent used 0)")
    p.add_argument("--snapshot-every", type=int, default=120,
                   help="save the weights every this many steps to OUT/snapshots/STEP "
                        "(for benchmarks/learning_curve.py; a multiple of 20)")
    args = p.parse_args()
    parent = DiffusionICLRegressor().model_spec()
    model, schedule = get_denoiser(parent)
    model = copy.deepcopy(model)
    model.variance_cap, model.centred_dof = args.cap, args.centred_dof
    tune = dict(n_steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup,
                seed=args.seed)
    centred = {"centred_dof": True} if args.centred_dof else {}
    spec = {**parent, "variance_cap": args.cap, **centred,
            "train": {**parent["train"], "extra": {"finetune_of": spec_key(parent), **tune}}}
    def snapshot(step, model):
        if step % args.snapshot_every == 0 and step < args.steps:
            save_model(os.path.join(args.out, "snapshots", str(step)), model, spec, {"steps": step})

    t0 = time.time()
    history = train(model, schedule, _prior(parent), TrainConfig(**{**parent["train"], **tune}),
                    parent["prediction_type"], checkpoint_path=os.path.join(args.out, "train_state.pt"),
                    checkpoint_every=20, callback=snapshot)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    save_model(args.out, model, spec, {"steps": args.steps, "final_loss": history[-1][1],
                                       "seconds_this_run": round(time.time() - t0, 1),
                                       "command": command, "history": history})


if __name__ == "__main__":
    main()
