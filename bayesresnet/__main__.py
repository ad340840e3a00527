"""``python -m bayesresnet``: the ``bayesresnet`` command line (see :mod:`bayesresnet.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
