"""Meta-training: determinism, resume, clear failures, torchrun/DDP, model files."""

import json
import os
import subprocess
import sys

import pytest
import torch

from skdiffusion.checkpoint import load_weights, save_model
from skdiffusion.pretrained import build, load, make_spec, pretrain
from skdiffusion.priors import make_prior, sample_tasks
from skdiffusion.training import TrainConfig, curriculum, diffusion_loss, lr_at

SMALL = dict(max_features=3, n_layer=1, n_embd=16, n_head=2, timesteps=20)


def spec(**train):
    return make_spec(train=dict(dict(n_steps=6, batch_size=4, n_points=10, warmup_steps=2), **train),
                     **SMALL)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_lr_schedule_and_curriculum():
    cfg = TrainConfig(n_steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    cfg = TrainConfig(n_points=40, curriculum_steps=100)
    assert curriculum(0, cfg, 10)[0] == 1 and curriculum(100, cfg, 10) == (10, 40)


def head_spec(**train):
    return dict(spec(**train), architecture="head", head={"width": 16, "depth": 2, "pairs": 3})


def ard_spec(**train):
    s = head_spec(**train)
    return dict(s, head={**s["head"], "baseline": "ard"})


@pytest.mark.parametrize("make, pairs, gain", [
    # the pure transformer, whose untrained output is far from the target (the linear
    # baseline starts close to it on these linear tasks)
    (lambda **t: dict(spec(**t), linear_baseline=False, residual_scaling=False), 1, 0.9),
    # the diffusion head, zero at init (the Gaussian baseline), with 3 draws per token
    (head_spec, 8, 0.97),
    # the same head correcting in-context GP model averaging with the ARD member
    (ard_spec, 8, 0.97)], ids=["set", "head", "head-ard"])
def test_training_is_deterministic_and_learns(tmp_path, make, pairs, gain):
    s = make(n_steps=150, batch_size=32, learning_rate=3e-3)
    a, schedule = pretrain(s, str(tmp_path / "a"), verbose=0)
    b, _ = pretrain(s, str(tmp_path / "b"), verbose=0)
    assert torch.equal(weights(a), weights(b))
    untrained, _ = build(s)
    batch = sample_tasks(make_prior("noisy_linear"), 256, 10, 3, torch.Generator().manual_seed(9))

    def loss(model):
        with torch.no_grad():
            return diffusion_loss(model, schedule, batch, "v", torch.Generator().manual_seed(1),
                                  3.0, pairs=pairs).item()

    assert loss(a) < gain * loss(untrained)
    summary = json.load(open(tmp_path / "a" / "config.json"))["summary"]
    assert summary["rank_weight_divergence"] == 0.0


@pytest.mark.parametrize("make", [spec, ard_spec], ids=["set", "head-ard"])
def test_prefetching_the_next_step_changes_nothing(make):
    """The thread that draws the next step's tasks and computes their baseline features
    beside the current step leaves every weight as the sequential loop does, bit for
    bit at one torch thread (float sums depend on the thread count, which prefetching
    halves for the run and then restores), over steps whose task sizes change."""
    from skdiffusion.pretrained import _prior, train_pairs
    from skdiffusion.training import train

    s = make(n_steps=7, curriculum_steps=5)
    threads = torch.get_num_threads()

    def run(prefetch, n_threads):
        model, schedule = build(s)
        torch.set_num_threads(n_threads)
        try:
            train(model, schedule, _prior(s), TrainConfig(**s["train"]), s["prediction_type"],
                  verbose=0, pairs=train_pairs(s), prefetch=prefetch)
            assert torch.get_num_threads() == n_threads
        finally:
            torch.set_num_threads(threads)
        return weights(model)

    sequential = run(False, 1)
    assert torch.equal(run(True, 1), sequential)
    assert not torch.equal(sequential, weights(build(s)[0]))  # it trained
    torch.testing.assert_close(run(True, 2), sequential, rtol=0, atol=1e-4)


def test_set_denoiser_takes_one_draw_per_token():
    model, schedule = build(spec())
    batch = sample_tasks(make_prior("linear"), 2, 10, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one"):
        diffusion_loss(model, schedule, batch, "v", torch.Generator(), 3.0, pairs=2)


def killed_at(s, out, checkpoint_every):
    """Run ``pretrain(s)`` into ``out`` until its first checkpoint, then kill it (an
    exception from the callback); the step it was killed at."""
    class Killed(Exception):
        pass

    steps = []

    def kill(step, model):
        steps.append(step)
        raise Killed

    with pytest.raises(Killed):
        pretrain(s, str(out), verbose=0, checkpoint_every=checkpoint_every, callback=kill)
    return steps[0]


@pytest.mark.parametrize("make", [spec, head_spec, ard_spec], ids=["set", "head", "head-ard"])
def test_resume_continues_exactly(tmp_path, make):
    """A run killed after its step-4 checkpoint and restarted ends where an
    uninterrupted run ends (weights, optimizer, step and RNG state are restored)."""
    full, _ = pretrain(make(n_steps=8), str(tmp_path / "full"), verbose=0)
    assert killed_at(make(n_steps=8), tmp_path / "part", checkpoint_every=4) == 4
    resumed, _ = pretrain(make(n_steps=8), str(tmp_path / "part"), verbose=0)
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=1e-6)


def test_non_finite_loss_is_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        pretrain(spec(learning_rate=1e30, n_steps=50), str(tmp_path), verbose=0)


def test_variance_cap_is_part_of_the_configuration_only_when_not_default():
    assert "variance_cap" not in make_spec(**SMALL)  # keys of earlier models stay valid
    s = make_spec(variance_cap=100, **SMALL)
    assert s["variance_cap"] == 100.0 and build(s)[0].variance_cap == 100.0
    assert build(make_spec(**SMALL))[0].variance_cap == 10.0


def test_centred_dof_is_part_of_the_configuration_only_when_set():
    assert "centred_dof" not in make_spec(**SMALL) and not build(make_spec(**SMALL))[0].centred_dof
    s = make_spec(centred_dof=True, **SMALL)
    assert s["centred_dof"] is True and build(s)[0].centred_dof


def test_model_files_round_trip_and_reject_damage(tmp_path):
    s = spec()
    model, _ = build(s)
    save_model(str(tmp_path), model, s, {"steps": 0})
    loaded, _ = load(str(tmp_path), s)
    assert torch.equal(weights(loaded), weights(model))
    with pytest.raises(ValueError, match="different configuration"):
        load(str(tmp_path), dict(s, n_embd=32))
    other, _ = build(make_spec(**dict(SMALL, n_embd=32)))
    with pytest.raises(ValueError, match="shape"):
        load_weights(str(tmp_path), other)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="configuration"):
        load(str(tmp_path))


def test_torchrun_two_processes_stay_in_sync_and_resume(tmp_path):
    out = tmp_path / "ddp"
    config = dict(max_features=3, max_context=6, n_layer=1, n_embd=16, n_head=2, timesteps=20,
                  n_train_steps=4, batch_size=4, variance_cap=50, centred_dof=True, echo=1,
                  ema=0.0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "skdiffusion", "pretrain", "--out", str(out), "--config", json.dumps(config),
           "--checkpoint-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    stored = json.load(open(out / "config.json"))
    assert stored["summary"]["rank_weight_divergence"] == 0.0
    assert stored["config"]["variance_cap"] == 50.0 and stored["config"]["centred_dof"] is True
    first = weights(load(str(out))[0])
    # more steps from the same directory resume from the 4-step checkpoint
    cmd[cmd.index("--config") + 1] = json.dumps(dict(config, n_train_steps=6))
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    summary = json.load(open(out / "config.json"))["summary"]
    assert summary["steps"] == 6 and summary["rank_weight_divergence"] == 0.0
    # the loss logged before the restart is kept: one entry per run's last step
    assert [step for step, _ in summary["loss_history"]] == [4, 6]
    assert summary["loss_history"][-1][1] == summary["final_loss"]
    assert not torch.equal(first, weights(load(str(out))[0]))


def test_pretrain_cli_rejects_a_bad_config(capsys):
    from skdiffusion.__main__ import main
    assert main(["pretrain", "--config", '{"n_layr": 2}']) == 2
    assert "n_layr" in capsys.readouterr().err
    assert main(["pretrain", "--config", '{"prior": {"mixture": 5}}']) == 2


def test_damaged_training_checkpoint_is_a_clear_error(tmp_path):
    """A garbage train_state.pt is named, with no advice to unpickle it unsafely."""
    (tmp_path / "train_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the training checkpoint") as e:
        pretrain(spec(), str(tmp_path), verbose=0)
    assert "weights_only" not in str(e.value)


def test_non_finite_weights_are_rejected_on_load(tmp_path):
    s = spec()
    model, _ = build(s)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    save_model(str(tmp_path), model, s)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load(str(tmp_path))


def test_training_hands_freed_heap_back_every_few_steps(tmp_path, monkeypatch):
    """Varying batch shapes fragment glibc's heap (resident memory grew by tens of MB per
    step): the loop trims it every TRIM_EVERY steps, and on glibc the trim is real."""
    from skdiffusion import training

    calls = []
    monkeypatch.setattr(training, "TRIM_EVERY", 3)
    monkeypatch.setattr(training, "release_heap", lambda: calls.append(1))
    pretrain(spec(n_steps=7), str(tmp_path), verbose=0)
    assert len(calls) == 2
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert training._MALLOC_TRIM is not None


def test_pretrain_cli_logs_a_learning_curve(tmp_path):
    """``--curve`` appends the posterior-mean ratios of each checkpoint to curve.jsonl."""
    config = dict(n_train_steps=2, max_features=3, n_layer=1, n_embd=16, n_head=2,
                  timesteps=20, batch_size=4, echo=1, ema=0.0)
    subprocess.run([sys.executable, "-m", "skdiffusion", "pretrain", "--config",
                    json.dumps(config), "--out", str(tmp_path), "--curve",
                    "--checkpoint-every", "1"], check=True, capture_output=True)
    lines = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(r > 0 for line in lines for r in line["ratio"].values())


def test_echo_init_and_ema_leave_earlier_configurations_as_they_were(tmp_path):
    """``echo``, ``init`` and ``ema`` enter a configuration only where set, so the cache
    keys of models trained before they existed (the shipped ones among them) stay valid."""
    assert not {"echo", "init", "ema"} & set(spec()["train"])
    assert spec(echo=3, init="abc")["train"]["echo"] == 3
    from skdiffusion.config import ModelConfig, named_model
    from skdiffusion.pretrained import spec_key, trained_directory
    earlier = ModelConfig(echo=1, ema=0.0)  # the previous default
    assert not {"echo", "ema"} & set(earlier.spec()["train"])
    assert spec_key(earlier.spec()) == "699e4727b8b33153"
    train = ModelConfig(echo=4, ema=0.9).spec()["train"]
    assert train["echo"] == 4 and train["ema"] == 0.9
    assert ModelConfig().spec()["train"]["echo"] == 16  # the default trains with both
    assert ModelConfig().spec()["train"]["ema"] == 0.999
    for shipped in ("default", "linear"):
        assert "weights" in trained_directory(spec_key(named_model(shipped).spec()))
    with pytest.raises(ValueError, match="echo"):
        pretrain(spec(echo=0), str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="ema"):
        pretrain(spec(ema=1.0), str(tmp_path), verbose=0)


def test_ema_writes_the_moving_average_of_the_weights_and_resumes_exactly(tmp_path):
    """With ``ema`` = a the model is the average of the weights after each step (the first
    step's weights, then a * average + (1 - a) * weights); averaging leaves the weights'
    own path unchanged; a killed run resumes to the same average, and a checkpoint
    written without one starts it from its weights."""
    a, raw, avg = 0.7, [], []

    def record(step, model):  # the weights trained (from the checkpoint) and the average
        trained, _ = build(spec(ema=a))
        trained.load_state_dict(torch.load(tmp_path / "full" / "train_state.pt")["model"])
        raw.append(weights(trained))
        avg.append(weights(model))

    full, _ = pretrain(spec(ema=a), str(tmp_path / "full"), verbose=0, checkpoint_every=1,
                       callback=record)
    expected = raw[0]
    assert len(raw) == 6 and torch.equal(avg[0], raw[0])
    for trained, averaged in zip(raw[1:], avg[1:]):
        expected = a * expected + (1 - a) * trained
        torch.testing.assert_close(averaged, expected, rtol=0, atol=1e-6)
    assert torch.equal(weights(full), avg[-1]) and not torch.allclose(avg[-1], raw[-1])
    plain, _ = pretrain(spec(), str(tmp_path / "plain"), verbose=0)
    torch.testing.assert_close(weights(plain), raw[-1], rtol=0, atol=1e-6)

    assert killed_at(spec(ema=a), tmp_path / "part", checkpoint_every=3) == 3
    resumed, _ = pretrain(spec(ema=a), str(tmp_path / "part"), verbose=0)
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=1e-6)

    assert killed_at(spec(), tmp_path / "late", checkpoint_every=3) == 3
    late, _ = pretrain(spec(ema=a), str(tmp_path / "late"), verbose=0)
    expected = raw[3]  # the average starts at step 4, the first update after the resume
    for trained in raw[4:]:
        expected = a * expected + (1 - a) * trained
    torch.testing.assert_close(weights(late), expected, rtol=0, atol=1e-6)


def test_echo_trains_each_batch_for_its_steps_and_resumes_exactly(tmp_path, monkeypatch):
    """With ``echo`` = 2 each drawn batch and its baseline features serve two optimizer
    steps, each with its own (t, noise), the features unchanged by the first; a run
    killed at a checkpoint (``checkpoint_every`` 3 rounds up to 4, the end of a batch)
    and restarted ends where an uninterrupted run ends."""
    from skdiffusion import training

    draws, seen = [], []
    sample, loss = training.sample_tasks, training.diffusion_loss
    monkeypatch.setattr(training, "sample_tasks", lambda *a: draws.append(1) or sample(*a))

    def recording_loss(model, schedule, batch, *args):
        seen.append((args[-1].clone(), args[-2][1].clone()))  # the features, the noise
        return loss(model, schedule, batch, *args)

    monkeypatch.setattr(training, "diffusion_loss", recording_loss)
    full, _ = pretrain(ard_spec(n_steps=8, echo=2), str(tmp_path / "full"), verbose=0)
    assert len(draws) == 4 and len(seen) == 8
    for (f1, e1), (f2, e2) in zip(seen[::2], seen[1::2]):
        assert torch.equal(f1, f2) and not torch.equal(e1, e2)
    assert not torch.equal(seen[0][0], seen[2][0])  # the next batch is a new one
    once, _ = pretrain(ard_spec(n_steps=8), str(tmp_path / "once"), verbose=0)
    assert len(draws) == 12 and not torch.equal(weights(once), weights(full))
    assert killed_at(ard_spec(n_steps=8, echo=2), tmp_path / "part", checkpoint_every=3) == 4
    resumed, _ = pretrain(ard_spec(n_steps=8, echo=2), str(tmp_path / "part"), verbose=0)
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=1e-6)


def test_init_starts_from_the_trained_model_of_a_cache_key(tmp_path, monkeypatch):
    from skdiffusion.pretrained import spec_key

    monkeypatch.setenv("SKDIFFUSION_CACHE", str(tmp_path / "cache"))
    base = spec(n_steps=6)
    trained, _ = pretrain(base, str(tmp_path / "cache" / spec_key(base)), verbose=0)
    start, _ = pretrain(spec(n_steps=0, init=spec_key(base)), str(tmp_path / "s"), verbose=0)
    assert torch.equal(weights(start), weights(trained))
    tuned, _ = pretrain(spec(n_steps=2, init=spec_key(base)), str(tmp_path / "t"), verbose=0)
    fresh, _ = pretrain(spec(n_steps=2), str(tmp_path / "f"), verbose=0)
    assert not torch.equal(weights(tuned), weights(trained))
    moved = (weights(tuned) - weights(trained)).abs().max()
    assert moved < (weights(fresh) - weights(trained)).abs().max()
    with pytest.raises(ValueError, match="no trained model with cache key 'nope'"):
        pretrain(spec(init="nope"), str(tmp_path / "n"), verbose=0)
