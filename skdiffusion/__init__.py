"""skdiffusion: in-context regression with a conditional diffusion model, for scikit-learn."""

from .config import ModelConfig
from .estimator import DiffusionICLRegressor

__all__ = ["DiffusionICLRegressor", "ModelConfig"]
__version__ = "0.1.0"
