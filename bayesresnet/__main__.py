"""``python -m bayesresnet``: the ``bayesresnet`` command line (see :mod:`bayesresnet.cli`)."""

from .cli import console

if __name__ == "__main__":
    raise SystemExit(console())
