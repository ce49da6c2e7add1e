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
    t = sub.add_parser("pretrain", help="meta-train a denoiser into a directory (resumable)")
    t.add_argument("--out", required=True, help="output directory (checkpoint, weights, config)")
    t.add_argument("--default", action="store_true",
                   help="train exactly the configuration of DiffusionICLRegressor() (other "
                        "model flags are ignored)")
    t.add_argument("--prior", default="noisy_linear",
                   help="task prior: a name, or JSON for a spec/mixture")
    t.add_argument("--max-features", type=int, default=10, help="largest number of features")
    t.add_argument("--min-features", type=int, default=1, help="smallest d drawn per task")
    t.add_argument("--n-layer", type=int, default=4, help="GPT-2 layers")
    t.add_argument("--n-embd", type=int, default=128, help="GPT-2 width")
    t.add_argument("--n-head", type=int, default=4, help="GPT-2 attention heads")
    t.add_argument("--timesteps", type=int, default=100, help="diffusion steps T")
    t.add_argument("--schedule", default="cosine", choices=["cosine", "linear"], help="noise schedule")
    t.add_argument("--prediction-type", default="v", choices=["epsilon", "v", "sample"],
                   help="what the network predicts")
    t.add_argument("--no-linear-baseline", action="store_true",
                   help="pure transformer: no in-context ridge features or Gaussian baseline")
    t.add_argument("--ridge-penalty", default="fixed", choices=["fixed", "evidence"],
                   help="penalty of the linear baseline's ridge fit")
    t.add_argument("--variance-cap", type=float, default=10.0,
                   help="largest variance of the linear baseline (standardized units of y)")
    t.add_argument("--centred-dof", action="store_true",
                   help="count the degree of freedom that centring the context uses in the "
                        "linear baseline's noise variance (and the intercept's leverage 1/k)")
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=64, help="tasks per step")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    t.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    t.add_argument("--n-points", type=int, default=48, help="points per task (context + targets)")
    t.add_argument("--max-context", type=int, default=None, help="largest context size drawn")
    t.add_argument("--curriculum-steps", type=int, default=0, help="ramp d and n over these steps")
    t.add_argument("--seed", type=int, default=0, help="seed for init and task draws")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between resumable checkpoints (default 1000)")
    t.add_argument("--curve", action="store_true",
                   help="log a learning curve (posterior-mean MSE / Bayes) at each checkpoint")
    e = sub.add_parser("evaluate", help="print the in-context linear benchmark for a model dir")
    e.add_argument("dir", help="model directory written by pretrain")
    e.add_argument("--d", type=int, default=5, help="features of the linear tasks")
    e.add_argument("--tasks", type=int, default=100, help="tasks per context size")
    return p


def _prior_arg(text):
    return json.loads(text) if text.strip().startswith(("[", "{")) else text


def main(argv=None):
    args = _parser().parse_args(argv)
    from .evaluation import icl_linear_table, markdown_table, posterior_mean_ratio
    from .checkpoint import read_config
    from .pretrained import load, make_spec, pretrain

    if args.command == "evaluate":
        model, schedule = load(args.dir)
        ptype = read_config(args.dir)["config"]["prediction_type"]
        rows = icl_linear_table(model, schedule, d=args.d, n_tasks=args.tasks, prediction_type=ptype)
        print(markdown_table(rows))
        return 0
    if args.default:
        from .estimator import DiffusionICLRegressor
        spec = DiffusionICLRegressor().model_spec()
    else:
        spec = make_spec(
            _prior_arg(args.prior), args.max_features, args.n_layer, args.n_embd, args.n_head,
            args.timesteps, args.schedule, args.prediction_type, not args.no_linear_baseline,
            train=dict(n_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                       warmup_steps=args.warmup, n_points=args.n_points,
                       max_context=args.max_context, min_features=args.min_features,
                       curriculum_steps=args.curriculum_steps, seed=args.seed),
            ridge_penalty=args.ridge_penalty, variance_cap=args.variance_cap,
            centred_dof=args.centred_dof)
    callback = None
    if args.curve:
        from .diffusion import NoiseSchedule
        schedule = NoiseSchedule(spec["timesteps"], spec["schedule"])
        log = os.path.join(args.out, "curve.jsonl")

        def callback(step, model):
            ratios = posterior_mean_ratio(model, schedule, spec["prediction_type"],
                                          d=min(5, spec["max_features"]))
            with open(log, "a") as f:
                f.write(json.dumps({"step": step, "ratio": ratios}) + "\n")
            print(f"step {step}: posterior-mean MSE / Bayes {ratios}", file=sys.stderr, flush=True)

    command = "python -m skdiffusion " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    device, rank = _init_distributed()
    pretrain(spec, args.out, verbose=1, callback=callback, command=command, device=device,
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
