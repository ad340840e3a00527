"""Compatibility module: ArviZ export and the run file, before they were split.

The ArviZ conversion lives in :mod:`bayesresnet.convert`, the file format in
:mod:`bayesresnet.fileformat` and :func:`~bayesresnet.load` in :mod:`bayesresnet.posterior`; the
names below keep working from here.
"""

from .convert import compare, pointwise_log_likelihood, site_dims, to_arviz
from .fileformat import FORMAT_NAME, FORMAT_VERSION, PosteriorFileError, save
from .posterior import load

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PosteriorFileError",
    "compare",
    "load",
    "pointwise_log_likelihood",
    "save",
    "site_dims",
    "to_arviz",
]
