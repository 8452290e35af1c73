"""Benchmark: `cnnlab train --budget` on a dataset, several seeds, beside the airbench94 CPU port
(benchmarks/airbench_cpu.py) trained on the same data for about the same time.

Each run is a fresh process, one after another (nothing else may run on a 2-core machine
meanwhile). Per run: the final test accuracy (evaluation.json), seconds from process start to
that accuracy (timeline.json's `evaluated`), the process's whole wall time, and the plan
(budget.json: the network chosen and the steps trained). The table gives the mean accuracy
with its spread (min-max) over the seeds and the median times.

Run: CNNLAB_DATA=../shared/data python benchmarks/budget_runs.py --dataset cifar10-jpeg
     --budget 2m --seeds 3 [--airbench-epochs 1.5] [--json results.json] [-- more train flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.data import DATASETS

HERE = Path(__file__).resolve().parent


def budget_run(dataset: str, budget: str, seed: int, out: Path, extra: list[str]) -> dict:
    folder = out / f"budget-{budget}-seed{seed}"
    command = [sys.executable, "-m", "cnnlab", "train", "--dataset", dataset, "--budget", budget,
               "--seed", str(seed), "--out", str(folder), "--quiet", *extra]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    evaluation = json.loads((folder / "evaluation.json").read_text())
    timeline = json.loads((folder / "timeline.json").read_text())
    plan = json.loads((folder / "budget.json").read_text())
    return {
        "what": f"cnnlab --budget {budget}",
        "seed": seed,
        "acc": evaluation["acc"],
        "to_result_s": timeline["evaluated"],
        "wall_s": round(wall, 1),
        "chosen": plan["chosen"],
        "steps": plan["steps_trained"],
        "timeline": timeline,
    }


def airbench_run(folder: Path, epochs: float, seed: int) -> dict:
    command = [sys.executable, str(HERE / "airbench_cpu.py"), "--folder", str(folder),
               "--epochs", str(epochs), "--seed", str(seed)]  # fmt: skip
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return {
        "what": f"airbench94 CPU port, {epochs:g} epochs",
        "seed": seed,
        "acc": result["accuracy"],
        "to_result_s": result["seconds"],
        "wall_s": round(time.perf_counter() - started, 1),
        "chosen": "airbench94",
        "steps": result["steps"],
    }


def table(runs: list[dict]) -> str:
    lines = [
        "| run | seeds | test accuracy: mean (min-max) | to result: median | network, steps |",
        "|---|---:|---|---:|---|",
    ]
    for what in dict.fromkeys(run["what"] for run in runs):
        group = [run for run in runs if run["what"] == what]
        accs = [run["acc"] for run in group]
        chosen = sorted({f"{run['chosen']} {run['steps']}" for run in group})
        lines.append(
            f"| {what} | {len(group)} | {statistics.mean(accs):.4f} ({min(accs):.4f}-"
            f"{max(accs):.4f}) | {statistics.median(r['to_result_s'] for r in group):.1f} s | "
            f"{', '.join(chosen)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10-jpeg", help="under $CNNLAB_DATA, or a path")
    parser.add_argument("--budget", nargs="+", default=["2m"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--airbench-epochs", type=float, nargs="*", default=[])
    parser.add_argument("--airbench-seeds", type=int, default=1)
    parser.add_argument("--json", help="also write the runs here")
    parser.add_argument("extra", nargs="*", help="after --: more `cnnlab train` flags")
    args = parser.parse_args()
    root = Path(os.environ.get("CNNLAB_DATA", "."))
    named = args.dataset in DATASETS or not (root / args.dataset).is_dir()
    dataset = args.dataset if named else str(root / args.dataset)
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for budget in args.budget:
            for seed in range(args.seeds):
                runs.append(budget_run(dataset, budget, seed, Path(out), args.extra))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "timeline"}))
        for epochs in args.airbench_epochs:
            for seed in range(args.airbench_seeds):
                runs.append(airbench_run(Path(dataset), epochs, seed))
                print(json.dumps(runs[-1]))
    print(table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
