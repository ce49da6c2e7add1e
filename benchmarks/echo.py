"""Data echoing: held-out loss at equal fresh tasks, each batch reused for ``echo`` steps.

Trains a small head model (``ModelConfig(n_layer=2, n_embd=64, max_context=32,
batch_size=64)`` on the default prior; ``--baseline`` picks its closed-form baseline) from
scratch for ``--batches`` drawn batches at each echo factor E of ``--echo``, that is E x
batches optimizer steps on the same tasks, and for E x batches fresh batches at echo 1,
the run echoing stands in for. Each run's learning-rate schedule spans its own steps.
Scores the diffusion loss (the training objective) on 512 held-out tasks of the prior,
with fixed noise. Where echo E at B batches scores as echo 1 at E x B batches, reusing a
batch is as good as drawing a new one, and a run whose steps are bound by drawing tasks
and their features (the GP baselines on a CPU) can take E times more steps for little
time.

    python benchmarks/echo.py --batches 150 --echo 4 16 --out benchmarks/results/echo.md
"""

import argparse
import json
import os
import sys
import time

import torch

from skdiffusion.config import ModelConfig
from skdiffusion.pretrained import _prior, build, train_pairs
from skdiffusion.priors import sample_tasks
from skdiffusion.training import TrainConfig, diffusion_loss, train

SIZES = dict(n_layer=2, n_embd=64, max_context=32, batch_size=64, learning_rate=1e-3, ema=0.0)


def held_out_loss(model, schedule, tasks, pairs):
    """Mean diffusion loss over the held-out batches, noise seeded per batch."""
    model.eval()
    with torch.no_grad():
        losses = [diffusion_loss(model, schedule, b, "v", torch.Generator().manual_seed(i), 3.0,
                                 pairs=pairs).item() for i, b in enumerate(tasks)]
    return sum(losses) / len(losses)


def run(batches, echoes, baseline="ridge", held_out=2):
    """Rows (echo, batches, fresh tasks, steps, held-out loss, seconds); the first row is
    the untrained model."""
    base = ModelConfig(baseline=baseline, **SIZES).spec()
    prior, pairs, cfg, d = _prior(base), train_pairs(base), base["train"], base["max_features"]
    g = torch.Generator().manual_seed(12345)  # held-out tasks drawn as training draws them
    tasks = [sample_tasks(prior, 256, cfg["n_points"], d, g, 1, d, cfg["max_context"])
             for _ in range(held_out)]
    model, schedule = build(base)
    rows = [(0, 0, 0, 0, held_out_loss(model, schedule, tasks, pairs), 0.0)]
    arms = [(1, batches)] + [arm for e in echoes for arm in ((e, batches), (1, e * batches))]
    for echo, n_batches in dict.fromkeys(arms):
        steps = echo * n_batches
        spec = json.loads(json.dumps(base))
        spec["train"].update(n_steps=steps, warmup_steps=max(1, steps // 10), echo=echo)
        model, schedule = build(spec)
        t0 = time.perf_counter()
        train(model, schedule, prior, TrainConfig(**spec["train"]), "v", verbose=0,
              pairs=pairs)
        seconds = time.perf_counter() - t0
        rows.append((echo, n_batches, n_batches * cfg["batch_size"], steps,
                     held_out_loss(model, schedule, tasks, pairs), seconds))
        print(f"echo {echo:2d}: {n_batches} batches, {steps} steps, held-out loss "
              f"{rows[-1][4]:.4f} ({seconds:.0f} s)", flush=True)
    return rows


def markdown(rows, command):
    lines = [f"`{command}` (torch threads: {torch.get_num_threads()})", "",
             "| echo | batches | fresh tasks | optimizer steps | held-out loss | seconds |",
             "|---|---|---|---|---|---|"]
    for echo, batches, fresh, steps, loss, seconds in rows:
        name = "untrained" if steps == 0 else str(echo)
        lines.append(f"| {name} | {batches:,} | {fresh:,} | {steps:,} | {loss:.4f} "
                     f"| {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=150, help="drawn batches per echoed run")
    p.add_argument("--echo", type=int, nargs="+", default=[4, 16], help="echo factors")
    p.add_argument("--baseline", default="ridge", help="the model's closed-form baseline")
    p.add_argument("--held-out", type=int, default=2, help="held-out batches of 256 tasks")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", help="write the table here (Markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.batches, args.echo, args.baseline, args.held_out)
    text = markdown(rows, " ".join(["python benchmarks/echo.py", *(sys.argv[1:] if argv is None
                                                                  else argv)]))
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
