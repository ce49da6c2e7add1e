"""Command line: ``python -m skdiffusion pretrain ...`` and ``python -m skdiffusion evaluate DIR``."""

import argparse
import json
import os
import shlex
import sys

import torch


def _parser():
    p = argparse.ArgumentParser(prog="skdiffusion", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("pretrain", help="meta-train a model configuration (resumable)")
    t.add_argument("--config", default="{}",
                   help="JSON of ModelConfig keywords (default {}: the shipped default model), "
                        "e.g. '{\"architecture\": \"head\", \"n_train_steps\": 20000}'")
    t.add_argument("--out", help="output directory (checkpoint, weights, config); default: "
                                 "the cache directory where fit looks for this configuration")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between resumable checkpoints (default 1000)")
    t.add_argument("--curve", action="store_true",
                   help="log a learning curve (posterior-mean MSE / Bayes) at each checkpoint")
    e = sub.add_parser("evaluate", help="print the in-context linear benchmark for a model dir")
    e.add_argument("dir", help="model directory written by pretrain")
    e.add_argument("--d", type=int, default=5, help="features of the linear tasks")
    e.add_argument("--tasks", type=int, default=100, help="tasks per context size")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    from .evaluation import icl_linear_table, markdown_table, posterior_mean_ratio
    from .checkpoint import read_config
    from .pretrained import cache_dir, load, pretrain, spec_key

    if args.command == "evaluate":
        model, schedule = load(args.dir)
        ptype = read_config(args.dir)["config"]["prediction_type"]
        rows = icl_linear_table(model, schedule, d=args.d, n_tasks=args.tasks, prediction_type=ptype)
        print(markdown_table(rows))
        return 0
    from .config import ModelConfig
    try:
        config = ModelConfig(**json.loads(args.config))
        spec = config.spec()
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        print(f"skdiffusion pretrain: bad --config: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(cache_dir(), spec_key(spec))
    callback = None
    if args.curve:
        from .diffusion import NoiseSchedule
        schedule = NoiseSchedule(spec["timesteps"], spec["schedule"])
        log = os.path.join(out, "curve.jsonl")

        def log_curve(step, model):
            ratios = posterior_mean_ratio(model, schedule, spec["prediction_type"],
                                          d=min(5, spec["max_features"]))
            with open(log, "a") as f:
                f.write(json.dumps({"step": step, "ratio": ratios}) + "\n")
            print(f"step {step}: posterior-mean MSE / Bayes {ratios}", file=sys.stderr, flush=True)
        callback = log_curve

    command = "python -m skdiffusion " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    device, rank = _init_distributed()
    print(f"meta-training into {out}", file=sys.stderr, flush=True)
    pretrain(spec, out, verbose=1, callback=callback, command=command, device=device,
             rank=rank, checkpoint_every=args.checkpoint_every)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _init_distributed():
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, nccl on CUDA.
    Returns (device, rank)."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ("cuda" if cuda else "cpu"), 0
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return (f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"), rank


if __name__ == "__main__":
    sys.exit(main())
