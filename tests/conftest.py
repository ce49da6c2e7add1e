import os
import tempfile

# scikit-learn's array-API check (NumPy namespace) runs only when SciPy is imported with
# this set; set it before anything imports SciPy so that no check is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402

from skdiffusion import ModelConfig  # noqa: E402

# A model small enough to meta-train in CI in about a minute; every test that uses it
# shares one trained denoiser through the in-memory cache.
TINY_MODEL = dict(prior=("noisy_linear", {"noise_range": (0.01, 5.0)}), architecture="set",
                  baseline="ridge", max_features=10, max_context=64, n_layer=2, n_embd=32,
                  n_head=2, timesteps=20, n_train_steps=1000, batch_size=32, echo=1, ema=0.0)
TINY = dict(model=ModelConfig(**TINY_MODEL), sampler="ddim", n_sampling_steps=5, n_samples=16,
            allow_training=True)
# the encoder + diffusion-head architecture, trained briefly (it starts at the baseline)
TINY_HEAD = dict(TINY, model=ModelConfig(**{**TINY_MODEL, "n_train_steps": 300,
                                            "architecture": "head"}, head_width=16),
                 sampler="ddpm")
# the same head correcting in-context GP model averaging (kernels.py), on the functions prior
TINY_HEAD_GP = dict(TINY_HEAD, model=ModelConfig(**{**TINY_MODEL, "n_train_steps": 300,
                                                    "architecture": "head", "baseline": "gp",
                                                    "prior": "functions"}, head_width=16))


def pytest_configure(config):
    os.environ.setdefault("SKDIFFUSION_CACHE", tempfile.mkdtemp(prefix="skdiffusion-test-"))


@pytest.fixture
def tiny():
    return dict(TINY)


@pytest.fixture
def tiny_model():
    return dict(TINY_MODEL)
