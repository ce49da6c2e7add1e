"""skdiffusion: in-context regression with a conditional diffusion model, for scikit-learn."""

from .estimator import DiffusionICLRegressor

__all__ = ["DiffusionICLRegressor"]
__version__ = "0.1.0"
