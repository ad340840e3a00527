"""Inference: one ``fit`` for NUTS, MCLMC, VI, Laplace, SWAG, deep ensembles and MAP."""

from .base import InferenceMethod, MethodResult
from .ensemble import MAP, Ensemble
from .executor import UnitFailedError
from .fit import METHODS, fit
from .laplace import Laplace
from .mclmc import MCLMC
from .nuts import NUTS
from .swag import SWAG
from .vi import LowRank, MeanField

__all__ = [
    "MAP",
    "MCLMC",
    "METHODS",
    "NUTS",
    "SWAG",
    "Ensemble",
    "InferenceMethod",
    "Laplace",
    "LowRank",
    "MeanField",
    "MethodResult",
    "UnitFailedError",
    "fit",
]
