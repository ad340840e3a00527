"""bayesresnet: Bayesian weight-parameterized residual networks on Pyro and PyTorch."""

from . import basis, data, likelihoods, metrics, ode, priors
from ._version import __version__
from .basis import Constant, Cubic, Legendre, Linear, Monomial, Piecewise
from .inference import MAP, NUTS, Ensemble, LowRank, MeanField, fit
from .model import BayesianResNet
from .ode import stiffness
from .posterior import Posterior, Prediction
from .report import report
from .resnet import MLP, ResNet

__all__ = [
    "MAP",
    "MLP",
    "NUTS",
    "BayesianResNet",
    "Constant",
    "Cubic",
    "Ensemble",
    "Legendre",
    "Linear",
    "LowRank",
    "MeanField",
    "Monomial",
    "Piecewise",
    "Posterior",
    "Prediction",
    "ResNet",
    "__version__",
    "basis",
    "data",
    "fit",
    "likelihoods",
    "metrics",
    "ode",
    "priors",
    "report",
    "stiffness",
]
