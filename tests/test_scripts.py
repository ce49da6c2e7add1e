"""The maintained entry points in benchmarks/ and scripts/ run end to end (tiny sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MICRO = dict(max_features=10, max_context=16, n_layer=1, n_embd=16, n_head=2, timesteps=20,
             n_train_steps=4, batch_size=4, architecture="head", head_width=8, ema=0.0)


def run(*args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """A head model directory written by the GPU recipe's script, trained 4 steps (two
    batches, each echoed for two steps)."""
    out = tmp_path_factory.mktemp("runs") / "micro"
    run(ROOT / "scripts" / "pretrain_on_budget.py", "--out", out, "--steps", 4,
        "--config", json.dumps(MICRO), "--train", json.dumps({"echo": 2}))
    stored = json.loads((out / "config.json").read_text())
    assert stored["config"]["architecture"] == "head" and stored["summary"]["steps"] == 4
    assert stored["config"]["train"]["echo"] == 2
    return out


def test_acceptance_grid(micro_model, tmp_path):
    out = tmp_path / "acceptance.md"
    run(ROOT / "benchmarks" / "acceptance.py", "--model", micro_model, "--tasks", 2,
        "--queries", 1, "--samples", 2, "--out", out)
    assert "accuracy bar met at" in out.read_text()
    other = tmp_path / "other.md"
    run(ROOT / "benchmarks" / "acceptance.py", "--model", micro_model, "--tasks", 2,
        "--queries", 1, "--samples", 2, "--seed", 5, "--out", other)
    table = lambda path: path.read_text().split("\n\n", 2)[2]  # noqa: E731 (after the command)
    assert table(other) != table(out)  # other tasks


def test_learning_curve(micro_model):
    assert "micro" in run(ROOT / "benchmarks" / "learning_curve.py", micro_model, "--tasks", 4)


def test_bar_ceiling():
    assert "|" in run(ROOT / "benchmarks" / "bar_ceiling.py", "--tasks", 50)


def test_family_ceiling(tmp_path):
    out = tmp_path / "ceiling.md"
    text = run(ROOT / "benchmarks" / "family_ceiling.py", "--ds", 1, "--ks", "5,8", "--tasks", 2,
               "--draws", 40, "--samples", 100, "--out", out)
    table = out.read_text()
    assert table.strip() in text and "| heteroscedastic | 0." in table   # the geometric means
    assert table.count("| gp | 1 |") == 2 and table.count("| heteroscedastic | 1 |") == 2
    assert "| bimodal | - | " in table                  # no known-hyperparameter answer
    cells = json.loads(out.with_suffix(".json").read_text())
    assert [(c["family"], c["k"]) for c in cells] == [(f, k) for f in ("gp", "heteroscedastic", "bimodal")
                                                      for k in (5, 8)]
    crps = [v for c in cells for v in c["task_crps"].values()]
    assert sum(np.isnan(v).all() for v in crps) == 2 and all(min(v) > 0 for v in crps if v[0] == v[0])


def test_speed(micro_model):
    text = run(ROOT / "benchmarks" / "speed.py", "--head", micro_model, "--repeat", 1,
               "--threads", 1, "--only", "head")  # the set model's timing takes a minute
    row = next(line for line in text.splitlines() if line.startswith("| head"))
    assert text.count("| 1 |") == 1 and row.count(" / ") == 2  # first and second predict


def test_family_curves(micro_model, tmp_path):
    text = run(ROOT / "benchmarks" / "family_curves.py", micro_model, "--families", "bimodal",
               "--ds", 1, "--ks", 10, "--tasks", 2, "--queries", 3, "--out", tmp_path)
    assert "| features alone | ard | 0 |" in text and "| 16 |" in text  # 4 steps x 4 tasks
    assert (tmp_path / "curves.png").stat().st_size > 0
    stored = json.loads((tmp_path / "curves.json").read_text())
    assert stored["models"][0]["tasks"] == 16 and "bimodal" in stored["features_alone"]["ard"]


def test_small_contexts(micro_model):
    text = run(ROOT / "benchmarks" / "small_contexts.py", micro_model, "--noises", "gaussian",
               "--tasks", 3, "--queries", 2, "--samples", 4)
    rows = [line for line in text.splitlines() if line.startswith("| linear | gaussian |")]
    assert len(rows) == 7 and "| gp, k <= d + 3 | geometric mean |" in text


def test_beyond_training(micro_model, tmp_path):
    out = tmp_path / "beyond.md"
    run(ROOT / "benchmarks" / "beyond_training.py", "--model", micro_model, "--widths", 12,
        "--rows", 60, "--folds", 2, "--methods", "skdiffusion,skdiffusion behind PCA(10)",
        "--out", out)
    text = out.read_text()
    assert "| Friedman 1, d = 12 | skdiffusion behind PCA(10) |" in text
    assert "| diabetes + 45 products (d = 55) | skdiffusion |" in text
    assert "## More than 1,024 rows" in text and "| Friedman 3, n = 60 | skdiffusion |" in text


def test_small_real(tmp_path):
    out = tmp_path / "small.md"
    run(ROOT / "benchmarks" / "small_real.py", "--only", "longley,stackloss", "--methods",
        "skdiffusion,features alone,BayesianRidge,GP (ARD),the prior's average", "--threads", 1,
        "--out", out)
    text = out.read_text()
    assert "| longley | 16 | 6 |" in text and "| stackloss | 21 | 3 |" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == 10 and all(-1 < r["r2"] <= 1 and r["crps"] > 0 for r in rows)
    again = tmp_path / "again.md"  # reused peers are taken over, the model's rows refitted
    old = out.with_suffix(".json")
    old.write_text(json.dumps([{**r, "seconds": -1.0} for r in rows]))
    run(ROOT / "benchmarks" / "small_real.py", "--only", "longley,stackloss", "--methods",
        "skdiffusion,features alone,GP (ARD)", "--reuse", old, "--out", again)
    rows2 = json.loads(again.with_suffix(".json").read_text())
    assert [r["seconds"] for r in rows2 if r["method"] == "GP (ARD)"] == [-1.0, -1.0]
    assert all(r["seconds"] >= 0 for r in rows2 if r["method"] != "GP (ARD)")
    assert "| mean R^2 |" in again.read_text()


def test_extrapolation(micro_model, tmp_path):
    out = tmp_path / "extrapolation.md"
    text = run(ROOT / "benchmarks" / "extrapolation.py", "--model", micro_model, "--ks", "3,12",
               "--ds", "1,2", "--tasks", 3, "--queries", 4, "--samples", 4, "--out", out)
    assert "| 12 | inside |" in text and "| all | " in text
    assert out.read_text().strip() == text.strip()


def test_echo_benchmark(tmp_path):
    out = tmp_path / "echo.md"
    text = run(ROOT / "benchmarks" / "echo.py", "--batches", 2, "--echo", 2, "--held-out", 1,
               "--out", out)
    table = out.read_text()
    assert table.strip() in text
    # the untrained model, echo 1 at 2 batches, echo 2 at 2 batches, echo 1 at 4 batches
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][1:]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("| untrained", "0", "0"), ("| 1", "2", "2"), ("| 2", "2", "4"), ("| 1", "4", "4")]
    losses = [float(r[4]) for r in rows]
    assert len(set(losses)) == 4 and all(0 < v < 10 for v in losses)
