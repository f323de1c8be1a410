"""Training engines (naive: full forward + opacus; cached: frozen features) and the fit loop."""

from common.training.fit import FitResult, fit

__all__ = ["FitResult", "fit"]
