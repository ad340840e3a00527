"""bayesresnet: Bayesian weight-parameterized residual networks on Pyro and PyTorch."""

from . import basis, data, likelihoods, metrics, ode, priors, stacking
from ._version import __version__
from .allocator import tune_allocator
from .basis import Constant, Cubic, Legendre, Linear, Monomial, Piecewise
from .convert import compare
from .diagnostics import ConvergenceWarning, Diagnostics
from .fileformat import PosteriorFileError
from .inference import (
    MAP,
    MCLMC,
    NUTS,
    SWAG,
    Ensemble,
    Laplace,
    LowRank,
    MeanField,
    UnitFailedError,
    fit,
)
from .model import BayesianResNet
from .ode import stiffness
from .posterior import Posterior, Prediction, load
from .pyro_interop import PyroGuide, PyroMCMC, from_pyro
from .report import report
from .resnet import MLP, ResNet

__all__ = [
    "MAP",
    "MCLMC",
    "MLP",
    "NUTS",
    "SWAG",
    "BayesianResNet",
    "Constant",
    "ConvergenceWarning",
    "Cubic",
    "Diagnostics",
    "Ensemble",
    "Laplace",
    "Legendre",
    "Linear",
    "LowRank",
    "MeanField",
    "Monomial",
    "Piecewise",
    "Posterior",
    "PosteriorFileError",
    "Prediction",
    "PyroGuide",
    "PyroMCMC",
    "ResNet",
    "UnitFailedError",
    "__version__",
    "basis",
    "compare",
    "data",
    "fit",
    "from_pyro",
    "likelihoods",
    "load",
    "metrics",
    "ode",
    "priors",
    "report",
    "stacking",
    "stiffness",
    "tune_allocator",
]


def __getattr__(name: str) -> object:
    # The scikit-learn estimator imports sklearn (an optional extra): only when asked for.
    if name == "BayesianResNetRegressor":
        from .estimator import BayesianResNetRegressor

        return BayesianResNetRegressor
    raise AttributeError(f"module 'bayesresnet' has no attribute {name!r}")
