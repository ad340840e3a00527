"""How often does the demo's MCLMC row pass ``diagnose()``? The same fit over several seeds.

``bayesresnet demo`` fits ``MCLMC(**DEMO_SETTINGS['full']['mclmc'])`` to the cubic toy with seed
0. Whether that run passes is itself random: the per-chain ESS check asks 100 effective draws
of each of 21 quantities in every chain, and the slowest (the noise, f far from the data) gets
about 0.5-1 effective draw per 1000 steps with much spread between chains and seeds. This script
refits the demo's MCLMC with other seeds (and, with ``--thinning``, other run lengths: the
sampling steps are ``num_samples x thinning``) and records what the checks read, one JSON line
per fit appended to ``--jsonl``; the Markdown table at ``--out`` summarizes every line there.

Run from the repository root (one thread; about 70-100 s per fit)::

    python benchmarks/mclmc_demo_seeds.py --seeds 0 1 2 3 4 5 6 7 [--thinning 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import bayesresnet as brn
from bayesresnet.cli import DEMO_NET, DEMO_SETTINGS, DEMO_TRAIN_POINTS

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("min bulk ESS per chain", "min tail ESS per chain", "max chain-wise R-hat",
           "max energy error variance / dim")


def fit_once(seed: int, thinning: int) -> dict:
    """The demo's MCLMC fit with ``seed`` and ``thinning``; what its checks read."""
    x, y = brn.data.cubic(DEMO_TRAIN_POINTS, seed=0)
    net = brn.ResNet(in_dim=1, out_dim=1, **DEMO_NET)
    model = brn.BayesianResNet(net, prior=brn.priors.Normal(1.0),
                               likelihood=brn.likelihoods.Gaussian())
    settings = {**DEMO_SETTINGS["full"]["mclmc"], "thinning": thinning}
    start = time.perf_counter()
    posterior = brn.fit(model, x, y, brn.MCLMC(**settings), seed=seed, progress=False,
                        check=False)
    seconds = time.perf_counter() - start
    diagnosis = posterior.diagnose()
    row = {"seed": seed, "steps": settings["num_samples"] * thinning, "seconds": seconds,
           "passes": bool(diagnosis.ok),
           "failed": [check.check for check in diagnosis.checks if not check.passed]}
    row.update({check.check: float(check.value) for check in diagnosis.checks
                if check.check in FIGURES})
    return row


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(rows: list[dict]) -> list[str]:
    """One table line per run length and commit (in the order of the commits' first lines):
    passes, and the range of each figure over the seeds."""
    lines = ["| sampling steps | commit | runs | pass | seeds | " + " | ".join(FIGURES)
             + " | seconds per fit |", "|---" * (len(FIGURES) + 6) + "|"]
    commits = list(dict.fromkeys(row.get("commit", "unknown") for row in rows))
    groups = sorted({(row["steps"], row.get("commit", "unknown")) for row in rows},
                    key=lambda key: (key[0], commits.index(key[1])))
    for steps, commit in groups:
        group = [row for row in rows
                 if row["steps"] == steps and row.get("commit", "unknown") == commit]
        ranges = [f"{min(row[name] for row in group):.4g}-{max(row[name] for row in group):.4g}"
                  for name in FIGURES]
        seconds = np.median([row["seconds"] for row in group])
        lines.append(f"| {steps} | {commit} | {len(group)} | "
                     f"{sum(row['passes'] for row in group)} | "
                     f"{', '.join(str(seed) for seed in sorted(row['seed'] for row in group))} | "
                     f"{' | '.join(ranges)} | "
                     f"{seconds:.0f} (median) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--thinning", type=int,
                        default=DEMO_SETTINGS["full"]["mclmc"]["thinning"],
                        help="steps per kept draw (1000 draws are kept per chain)")
    parser.add_argument("--jsonl", type=Path,
                        default=REPO / "benchmarks" / "results" / "mclmc_demo_seeds.jsonl")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "mclmc_demo_seeds.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        row = fit_once(seed, args.thinning)
        row.update(commit=_commit(), load=os.getloadavg()[0])
        print(json.dumps(row), flush=True)
        with args.jsonl.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    lines = [
        "# The demo's MCLMC row over seeds",
        "",
        "`python benchmarks/mclmc_demo_seeds.py --seeds ... --thinning ...`: the demo's MCLMC "
        "fit (4 chains, 20 000 tuning steps, 1000 draws kept per chain) refitted with other "
        "seeds and run lengths; each figure's range over the seeds, as `diagnose()` reads it "
        "(thresholds: bulk and tail ESS > 100 in every chain, chain-wise R-hat < 1.05, energy "
        "error <= 0.005 per dimension). One line per fit in "
        f"`{args.jsonl.name}` (commit, load average).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs; torch "
        f"{torch.__version__} with 1 thread, float64.",
        "",
        *summary(rows),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
