"""Our MCLMC against BlackJAX's over seeds: ESS per gradient and per second, run by run.

One run of ``benchmarks/sampling.py`` compares the two samplers on one seed, and its ratios move
with the seed: the tuned step size does (our 0.040-0.048 on the demo problem over three runs),
and with it the effective draws per gradient. This script reads the reports of several such
runs (``--seed`` 0, 1, ...; each with both contenders, so that each ratio comes from one
process) and writes the ratios seed by seed, with their median and geometric mean.

Run from the repository root (two runs at a time on two cores, each pinned to its own)::

    for seed in 0 1 2 3 4; do
        python benchmarks/sampling.py --problems cubic --contenders mclmc blackjax \\
            --blackjax-energy-variance 1e-6 --seed $seed --cpus 1 --tune-allocator \\
            --out /tmp/sampling_seed$seed.md
    done
    python benchmarks/sampling_seeds.py /tmp/sampling_seed*.md \\
        --out benchmarks/results/sampling_seeds.md
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from pathlib import Path

from sampling import read_report_data  # (benchmarks/sampling.py: the rows a report embeds)

SEED = re.compile(r"--seed (\d+)")
STEP = re.compile(r"step[ _]size ([0-9.]+)")


def read_run(path: Path, problem: str) -> dict:
    """The seed, command and our and BlackJAX's rows on ``problem`` of one sampling.py report."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    data = read_report_data(path)
    if not data["sections"]:
        raise SystemExit(f"{path}: no sampling.py data block (is it a sampling.py report?)")
    section = next((s for s in data["sections"] if s["problem"] == problem), None)
    if section is None:
        raise SystemExit(f"{path}: no {problem!r} problem")
    rows = {row["key"]: row for row in data["rows"] if row["problem"] == problem}
    missing = {"mclmc", "blackjax"} - set(rows)
    if missing:
        raise SystemExit(f"{path}: no {', '.join(sorted(missing))} row on {problem!r}")
    seed = SEED.search(section["command"])
    return {"seed": int(seed.group(1)) if seed else 0, "command": section["command"],
            "environment": section["environment"], "ours": rows["mclmc"],
            "blackjax": rows["blackjax"]}


def step_size(row: dict) -> str:
    match = STEP.search(" ".join(row["notes"]))
    return match.group(1) if match else "?"


def summary(values: list[float]) -> str:
    geometric = math.exp(statistics.fmean(math.log(v) for v in values))
    return (f"median {statistics.median(values):.2f}x, geometric mean {geometric:.2f}x, "
            f"range {min(values):.2f}-{max(values):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="sampling.py reports, one per seed")
    parser.add_argument("--problem", default="cubic")
    parser.add_argument("--out", type=Path, default=None, help="default: print only")
    args = parser.parse_args()
    runs = sorted((read_run(path, args.problem) for path in args.reports),
                  key=lambda run: run["seed"])
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"two reports have the same seed: {seeds}")
    for key in ("ours", "blackjax"):
        settings = {run[key]["settings"] for run in runs}
        if len(settings) > 1:
            raise SystemExit(f"the reports ran {key} with different settings: {sorted(settings)}")

    lines = [
        f"# Our MCLMC against BlackJAX's over seeds ({args.problem})",
        "",
        "`python benchmarks/sampling_seeds.py` over these runs of `benchmarks/sampling.py` "
        "(one process each, both samplers in it, one core):",
        "",
        *[f"- seed {run['seed']}: `{run['command']}` ({run['environment']})" for run in runs],
        "",
        "ESS: the smallest over f at 20 inputs and the noise of the per-chain bulk ESS summed "
        "over the 4 chains (sampling.py's column). Ratios are ours over BlackJAX's within a "
        "run. Step size: the median over chains of the tuned step.",
        "",
        "| seed | ours: ESS | min chain ESS | step size | passes | BlackJAX: ESS | min chain ESS "
        "| step size | passes | ESS/1k grads | ESS/s | ESS/CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_grad, per_second, per_cpu, both_pass = [], [], [], []
    for run in runs:
        ours, theirs = run["ours"], run["blackjax"]
        per_grad.append(ours["ess_kgrad"] / theirs["ess_kgrad"])
        per_second.append(ours["ess_s"] / theirs["ess_s"])
        per_cpu.append((ours["ess"] / ours["cpu_seconds"])
                       / (theirs["ess"] / theirs["cpu_seconds"]))
        both_pass.append(bool(ours["passes"] and theirs["passes"]))
        lines.append(
            f"| {run['seed']} | {ours['ess']:.0f} | {ours['ess_chain_min']:.0f} | "
            f"{step_size(ours)} | {'yes' if ours['passes'] else '**no**'} | "
            f"{theirs['ess']:.0f} | {theirs['ess_chain_min']:.0f} | {step_size(theirs)} | "
            f"{'yes' if theirs['passes'] else '**no**'} | {per_grad[-1]:.2f}x | "
            f"{per_second[-1]:.2f}x | {per_cpu[-1]:.2f}x |")
    passing = [i for i, ok in enumerate(both_pass) if ok]
    lines += [
        "",
        f"Passes: ours {sum(run['ours']['passes'] for run in runs)} of {len(runs)} seeds, "
        f"BlackJAX's {sum(run['blackjax']['passes'] for run in runs)} of {len(runs)}.",
        "",
        f"- Over all {len(runs)} seeds: ESS per 1000 gradients {summary(per_grad)}; ESS per "
        f"second {summary(per_second)}; per CPU second {summary(per_cpu)}.",
    ]
    if passing:
        lines.append(
            f"- Over the {len(passing)} seed(s) where both pass every check "
            f"({', '.join(str(runs[i]['seed']) for i in passing)}): ESS per 1000 gradients "
            f"{summary([per_grad[i] for i in passing])}; ESS per second "
            f"{summary([per_second[i] for i in passing])}; per CPU second "
            f"{summary([per_cpu[i] for i in passing])}.")
    else:
        lines.append("- On no seed did both pass every check.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
