"""Sphinx configuration of the bayesresnet documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import bayesresnet  # noqa: E402

project = "bayesresnet"
author = "the bayesresnet developers"
copyright = "the bayesresnet developers"  # noqa: A001
version = release = bayesresnet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]

# No network at build time, and no generated stub files in the source tree: the API page
# documents modules with automodule and autosummary only tabulates them.
autosummary_generate = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_mock_imports: list[str] = []

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "Bayesian weight-parameterized ResNets on Pyro",
                      "fixed_sidebar": True}
nitpicky = False
