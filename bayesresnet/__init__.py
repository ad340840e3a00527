"""bayesresnet: Bayesian weight-parameterized residual networks on Pyro and PyTorch."""

from . import basis, data, likelihoods, priors
from ._version import __version__
from .basis import Constant, Cubic, Legendre, Linear, Monomial, Piecewise
from .model import BayesianResNet
from .resnet import MLP, ResNet

__all__ = [
    "MLP",
    "BayesianResNet",
    "Constant",
    "Cubic",
    "Legendre",
    "Linear",
    "Monomial",
    "Piecewise",
    "ResNet",
    "__version__",
    "basis",
    "data",
    "likelihoods",
    "priors",
]
