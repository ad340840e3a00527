"""Sphinx configuration of the bayesresnet documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import inspect
import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

import bayesresnet

project = "bayesresnet"
author = "the bayesresnet developers"
copyright = "the bayesresnet developers"
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
# Every cross-reference must resolve: a broken link to our own API fails the build. The only
# targets outside these pages are the base classes that show-inheritance names.
nitpicky = True
nitpick_ignore = [("py:class", "abc.ABC"), ("py:class", "pyro.nn.module.PyroModule"),
                  ("py:class", "sklearn.base.BaseEstimator"),
                  ("py:class", "sklearn.base.RegressorMixin"),
                  ("py:class", "collections.abc.Callable")]


# The docstrings write array shapes with a star for "any leading sample dimensions", as in
# ``(*S, N, out_dim)``, and absolute values as ``|x|``; reStructuredText would read the star as
# the start of emphasis and the bars as a substitution reference. Outside inline literals, escape
# a star that opens such a shape entry (after "(" or ", " and before a name) and every bar of a
# line that is not a table or line block, before numpydoc and docutils see the text.
_SHAPE_STAR = re.compile(r"(?:(?<=[(\[])|(?<=, ))\*(?=[A-Za-z_][A-Za-z_0-9]*(?:[,)\]]|\s))")


def _escape_plain(text: str, bars: bool) -> str:
    text = _SHAPE_STAR.sub(r"\\*", text)
    return text.replace("|", "\\|") if bars else text


def _escape_docstring(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "*" not in line and "|" not in line:
            continue
        bars = not line.lstrip().startswith(("|", "+"))
        parts = line.split("``")
        # Even parts are outside ``inline literals``.
        lines[i] = "``".join(_escape_plain(part, bars) if k % 2 == 0 else part
                             for k, part in enumerate(parts))


def _resolve_top_level(app, env, node, contnode):
    """Resolve ``bayesresnet.X`` (and ``bayesresnet.X.member``) to where X is documented.

    The API page documents every object in its defining module (``bayesresnet.posterior.Posterior``)
    while users and these pages write the top-level name (``bayesresnet.Posterior``).
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("bayesresnet."):
        return None
    head, _, rest = target[len("bayesresnet."):].partition(".")
    obj = getattr(bayesresnet, head, None)
    if obj is None or inspect.ismodule(obj) or not hasattr(obj, "__qualname__"):
        return None
    canonical = f"{obj.__module__}.{obj.__qualname__}" + (f".{rest}" if rest else "")
    if canonical == target:
        return None
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                             canonical, node, contnode)


def _public_bases(app, name, obj, options, bases):
    """Show a private base class (``_AutoGuideVI``) as the public bases it derives from."""
    expanded = []
    for base in bases:
        expanded.extend(base.__bases__ if base.__name__.startswith("_") else [base])
    bases[:] = list(dict.fromkeys(expanded))


def setup(app):
    # Runs before numpydoc's handler of the same event (lower priority number first).
    app.connect("autodoc-process-docstring", _escape_docstring, priority=100)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_top_level)
