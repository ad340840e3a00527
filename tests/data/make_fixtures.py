"""Writes the committed run file fixture ``run_arviz0.nc`` and its expected predictions.

The fixture was made on Python 3.11 with ArviZ 0.23 by running, from the repository root::

    python tests/data/make_fixtures.py

``tests/test_arviz_interop.py`` loads it on whichever ArviZ line is installed (1.x through the
second test command in CONTRIBUTING.md) and checks that it predicts the recorded numbers.
"""

import json
from pathlib import Path

import numpy as np

import bayesresnet as brn

HERE = Path(__file__).resolve().parent
X_CHECK = np.linspace(-5.0, 5.0, 7)[:, None]


def main() -> None:
    x, y = brn.data.cubic(20, seed=0)
    net = brn.ResNet(in_dim=1, out_dim=1, width=3, depth=3, basis=brn.Linear())
    model = brn.BayesianResNet(net)
    post = brn.fit(model, x, y, method=brn.Ensemble(members=4, steps=100), seed=7,
                   progress=False, check=False)
    post.save(HERE / "run_arviz0.nc")
    pred = post.predict(X_CHECK)
    import arviz

    expected = {"arviz_version": arviz.__version__, "x": X_CHECK.tolist(),
                "mean": pred.mean.tolist(), "std": pred.std.tolist()}
    (HERE / "run_arviz0.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
