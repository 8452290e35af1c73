"""Benchmark: time to accuracy on Fashion-MNIST (issue 5, table 2).

For each `fast` recipe (runs/recipes.py) and each seed, one fresh `python -m cnnlab train
--recipe R --seed S` process, as a user would type it. Measured per run:

- the final test accuracy (the run's evaluation.json: the whole 10,000-image test set);
- time to result: seconds from process start (Python start-up, importing torch, loading the
  data, choosing the fastest step, training) until that final test accuracy was computed,
  read from the run's timeline.json (cnnlab.clock: the kernel's process start time);
- process wall time: launch to exit as this script sees it, which adds writing the report
  (weights, plots, summary) after the result is known;
- where the time went: the timeline's stages, median over the seeds.

A recipe meets a target when its test accuracy averaged over the seeds reaches the target
accuracy and its median time to result is within the target time. The runs go one after
another: on a 2-core machine, nothing else may run meanwhile.

Run: CNNLAB_DATA=../shared/data python benchmarks/time_to_accuracy.py
     [--targets fast-90 fast-92 ... d2l-lenet] [--seeds 5] [--out DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (label, test accuracy, seconds, recipe, more flags): the CPU targets, each with the
# recipe tuned for it; d2l's LeNet accuracy is asked for in 3 s, the shortest fast run is tried
TARGETS = {
    "fast-90": (0.90, 10.0, "fast-90", []),
    "fast-92": (0.92, 60.0, "fast-92", []),
    "fast-93": (0.93, 180.0, "fast-93", []),
    "fast-94": (0.94, 900.0, "fast-94", []),
    "d2l-lenet": (0.79, 3.0, "fast-90", ["--epochs", "1"]),
}
# what a process pays before its first training step, whatever it trains: Python, `import
# torch`, and the first torch.optim optimizer (its constructor imports torch._dynamo)
FLOOR = {
    "python": "pass",
    "python + import torch": "import torch",
    "python + import torch + first optimizer": "import torch; "
    "torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)",
}
STAGES = ("data_loaded", "training_started", "training_finished", "evaluated", "report_written")


def run_once(label: str, seed: int, out: Path, extra: list[str]) -> dict:
    recipe, flags = TARGETS[label][2:] if label in TARGETS else (label, [])
    extra = [*flags, *extra]
    folder = out / f"{label}-seed{seed}"
    command = [sys.executable, "-m", "cnnlab", "train", "--recipe", recipe, "--seed", str(seed),
               "--out", str(folder), "--quiet", *extra]  # fmt: skip
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{finished.stderr[-2000:]}")
    evaluation = json.loads((folder / "evaluation.json").read_text())
    timeline = json.loads((folder / "timeline.json").read_text())
    return {"seed": seed, "acc": evaluation["acc"], "wall_s": wall, "timeline": timeline}


def floor(repeats: int = 5) -> dict[str, float]:
    """Median wall seconds of each FLOOR program, in fresh processes."""
    times = {}
    for name, code in FLOOR.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            runs.append(time.perf_counter() - started)
        times[name] = statistics.median(runs)
    return times


def summarize(label: str, runs: list[dict]) -> dict:
    accs = [r["acc"] for r in runs]
    result_times = [r["timeline"]["evaluated"] for r in runs]
    target_acc, target_s, recipe, flags = TARGETS.get(label, (None, None, label, []))
    mean_acc, median_s = statistics.mean(accs), statistics.median(result_times)
    return {
        "recipe": " ".join([recipe, *flags]),
        "seeds": len(runs),
        "mean_acc": mean_acc,
        "std_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "min_acc": min(accs),
        "max_acc": max(accs),
        "median_result_s": median_s,
        "min_result_s": min(result_times),
        "max_result_s": max(result_times),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "stages": {s: statistics.median(r["timeline"][s] for r in runs) for s in STAGES},
        "target": None if target_acc is None else [target_acc, target_s],
        "meets_target": None
        if target_acc is None
        else bool(mean_acc >= target_acc and median_s <= target_s),
        "runs": runs,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | target | seeds | test acc mean ± std (min-max) | time to result median "
        "(min-max) | process wall | met |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for row in rows:
        target = "-"
        if row["target"]:
            target = f"{row['target'][0]:.0%} in {row['target'][1]:g} s"
        met = {True: "yes", False: "**no**", None: "-"}[row["meets_target"]]
        lines.append(
            f"| {row['recipe']} | {target} | {row['seeds']} | {row['mean_acc']:.4f} ± "
            f"{row['std_acc']:.4f} ({row['min_acc']:.4f}-{row['max_acc']:.4f}) | "
            f"{row['median_result_s']:.1f} s ({row['min_result_s']:.1f}-{row['max_result_s']:.1f}) "
            f"| {row['median_wall_s']:.1f} s | {met} |"
        )
    lines += ["", "Where the time went (seconds from process start, median over the seeds):", ""]
    lines.append("| recipe | " + " | ".join(s.replace("_", " ") for s in STAGES) + " |")
    lines.append("|---|" + "---:|" * len(STAGES))
    for row in rows:
        cells = " | ".join(f"{row['stages'][s]:.1f}" for s in STAGES)
        lines.append(f"| {row['recipe']} | {cells} |")
    return "\n".join(lines)


def header(args) -> str:
    import torch

    command = "CNNLAB_DATA=../shared/data python benchmarks/time_to_accuracy.py " + shlex.join(
        sys.argv[1:]
    )
    return "\n".join(
        [
            f"- Command: `{command.strip()}`",
            f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, Python {platform.python_version()}",
            f"- Date: {datetime.date.today().isoformat()}",
            f"- Seeds: {', '.join(str(s) for s in range(args.seeds))}; each run a fresh process",
        ]
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="rows of TARGETS")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("extra", nargs="*", help="after --: more `cnnlab train` flags")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not os.environ.get("CNNLAB_DATA"):
        sys.exit("set CNNLAB_DATA to the folder holding fashion-mnist/ (e.g. ../shared/data)")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        rows = []
        for label in args.targets:
            runs = []
            for seed in range(args.seeds):
                runs.append(run_once(label, seed, out, args.extra))
                last = runs[-1]
                print(f"{label} seed {seed}: test acc {last['acc']:.4f}, result at "
                      f"{last['timeline']['evaluated']:.1f} s, exit at {last['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
            rows.append(summarize(label, runs))
    start = floor()
    print(header(args) + "\n\n" + table(rows))
    print("\nBefore any training (fresh processes, median of 5):\n")
    print("\n".join(f"- {name}: {seconds:.2f} s" for name, seconds in start.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
