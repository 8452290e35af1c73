"""Commands of the NumPy reference engine: gradcheck and scratch-train."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli.args import add_data_dir, positive_int
from cnnlab.errors import CnnlabError

SCRATCH_MODELS = ("lenet", "lenet_bn", "lenet_modern")


def add_parsers(commands) -> None:
    gradcheck = commands.add_parser(
        "gradcheck",
        help="check every hand-written backward pass of cnnlab.scratch by finite differences",
        description="Compare each analytic gradient (inputs and parameters) of the NumPy layers, "
        "losses and networks with centred finite differences in float64, and print the largest "
        "relative error per component with pass/fail (tolerance 1e-6). Exit 1 if any fails.",
    )
    gradcheck.add_argument(
        "components", nargs="*", metavar="COMPONENT", help="which to check (default: all)"
    )
    gradcheck.add_argument("--seed", type=int, default=0, help="random inputs (default 0)")
    gradcheck.add_argument("--list", action="store_true", help="list the components and stop")
    gradcheck.add_argument("--json", action="store_true", help="print JSON instead of a table")
    gradcheck.set_defaults(handler=run_gradcheck)

    train = commands.add_parser(
        "scratch-train",
        help="train the NumPy LeNet (cnnlab.scratch) on a real dataset",
        description="Mini-batch SGD with momentum written out in NumPy: the scratch LeNet, its "
        "forward and backward passes and the optimiser are all hand-written.",
    )
    train.add_argument(
        "--model",
        choices=SCRATCH_MODELS,
        default="lenet",
        help="lenet (sigmoid, average pooling), lenet_bn (with BatchNorm) or lenet_modern "
        "(BatchNorm, ReLU, max pooling); default lenet",
    )
    train.add_argument("--dataset", default="fashion-mnist", help="default fashion-mnist")
    train.add_argument("--epochs", type=positive_int, default=6, help="default 6")
    train.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    train.add_argument("--lr", type=float, default=0.1, help="default 0.1")
    train.add_argument("--momentum", type=float, default=0.9, help="default 0.9")
    train.add_argument("--float64", action="store_true", help="train in float64 (half the speed)")
    train.add_argument("--seed", type=int, default=0, help="default 0")
    add_data_dir(train)
    train.add_argument("--json", action="store_true", help="print the history as JSON at the end")
    train.set_defaults(handler=run_scratch_train)


def run_gradcheck(args: argparse.Namespace) -> int:
    from cnnlab.scratch.checks import CHECKS, run_checks

    if args.list:
        print("\n".join(CHECKS))
        return 0
    unknown = [name for name in args.components if name not in CHECKS]
    if unknown:
        raise CnnlabError(
            f"unknown component {', '.join(unknown)}; expected one of: {', '.join(CHECKS)}"
        )
    try:
        results = run_checks(args.components or None, seed=args.seed)
    except RuntimeError as error:  # the random input sat on a kink: another seed will do
        raise CnnlabError(f"{error}; try another --seed") from error
    if args.json:
        rows = [
            {
                "component": r.component,
                "gradients": list(r.gradients),
                "max_relative_error": r.max_error,
                "tolerance": r.tolerance,
                "passed": r.passed,
            }
            for r in results
        ]
        print(json.dumps(rows, indent=2))
    else:
        print(format_gradcheck(results))
    return 0 if all(r.passed for r in results) else 1


def format_gradcheck(results) -> str:
    lines = [f"{'component':<22} {'gradients checked':<34} {'max rel. error':>14}  result"]
    for r in results:
        checked = ", ".join(r.gradients)
        if len(checked) > 34:
            checked = f"{r.gradients[0]} and {len(r.gradients) - 1} parameters"
        verdict = "pass" if r.passed else "FAIL"
        lines.append(f"{r.component:<22} {checked:<34} {r.max_error:>14.1e}  {verdict}")
    passed = sum(r.passed for r in results)
    tolerance = results[0].tolerance if results else 0
    lines.append(f"{passed} of {len(results)} components pass (tolerance {tolerance:.0e})")
    return "\n".join(lines)


def run_scratch_train(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from cnnlab.scratch.network import scratch_lenet, scratch_lenet_modern
    from cnnlab.scratch.train import load_scratch_data, train_scratch

    start = time.perf_counter()
    data = load_scratch_data(args.dataset, root=args.data_dir, download=not args.no_download)
    shape = data.train_images.shape[1:]
    if shape[1:] != (28, 28):
        raise CnnlabError(f"the scratch LeNet expects 28x28 images; {args.dataset} has {shape}")
    dtype = np.float64 if args.float64 else np.float32
    rng = np.random.default_rng(args.seed)
    classes = int(data.train_labels.max()) + 1
    if args.model == "lenet_modern":
        model = scratch_lenet_modern(classes, shape[0], rng=rng, dtype=dtype)
    else:
        batch_norm = args.model == "lenet_bn"
        model = scratch_lenet(classes, shape[0], batch_norm, rng=rng, dtype=dtype)

    def log(line: str) -> None:
        print(f"{line}  ({time.perf_counter() - start:.1f} s)", flush=True)

    history = train_scratch(
        model,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        seed=args.seed,
        log=log,
    )
    if args.json:
        print(json.dumps(history, indent=2))
    return 0
