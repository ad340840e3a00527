#!/usr/bin/env bash
# The second test command: the ArviZ-facing tests (marker `arviz`) on Python 3.12 with ArviZ 1.x.
#
# Python 3.12 resolves arviz>=1 (arviz-base, arviz-stats), the line a user on a current Python
# gets. The virtual environment lives outside the repository, is built once (torch 2.13 for 3.12
# is the CUDA build on the package index: several GB, but it runs on the CPU) and is reused.
#
#   tools/test_arviz1.sh                 # build the venv if missing, then run the tests
#   PYTHON312=/path/to/python3.12 BAYESRESNET_PY312_VENV=/path/to/venv tools/test_arviz1.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BAYESRESNET_PY312_VENV:-$HOME/.cache/bayesresnet/venv-py312}"
python312="${PYTHON312:-$(command -v python3.12 || echo "$HOME/.pyenv/versions/3.12.1/bin/python")}"
if [ ! -x "$venv/bin/python" ]; then
    echo "building $venv with $python312 (once; downloads several GB)"
    "$python312" -m venv "$venv"
    "$venv/bin/pip" install --quiet "torch==2.13.0" -e ".[test]"
else
    # The checkout may have moved or gained requirements; satisfied ones are not reinstalled.
    "$venv/bin/pip" install --quiet -e ".[test]"
fi
"$venv/bin/python" -c 'import arviz, sys; print("Python", sys.version.split()[0], "ArviZ", arviz.__version__)'
"$venv/bin/python" -m pytest -q -m "arviz and not slow and not statistical" -p no:cacheprovider "$@"
