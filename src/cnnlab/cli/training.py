"""Commands that train and use trained models: train, eval, predict, lr-find, cv, reproduce,
report."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli.args import parse_options, positive_int
from cnnlab.errors import CnnlabError

TRAIN_FLAGS = [  # (flag, type, help); each sets the TrainConfig field of the same name
    ("--recipe", str, "start from a named recipe: fast (= fast-92), fast-90 ... fast-94"),
    ("--model", str, "zoo model (default lenet_bn)"),
    ("--dataset", str, "dataset name or image folder (default fashion-mnist)"),
    ("--out", str, "run folder (default runs/<model>-<dataset>-<timestamp>)"),
    ("--epochs", int, "default 10"),
    ("--batch-size", int, "default: d2l's for the model (other datasets: from the data)"),
    ("--lr", float, "default: d2l's for the model (other datasets: scaled with the batch)"),
    ("--optimizer", str, "sgd, momentum, nesterov, adam, adamw (default sgd)"),
    ("--momentum", float, "for momentum and nesterov (default 0.9)"),
    ("--weight-decay", float, "L2 penalty; decoupled for adamw (default 0)"),
    ("--l1", float, "L1 penalty strength (default 0)"),
    ("--schedule", str, "constant, step, cosine, onecycle (default constant)"),
    ("--warmup-epochs", float, "linear learning-rate warmup (default 0)"),
    ("--label-smoothing", float, "default 0"),
    ("--clip-grad-norm", float, "clip the gradient norm to this (default 0: off)"),
    ("--nonfinite", str, "a NaN/inf loss or gradient: stop (default) or skip that step"),
    ("--aux-weight", float, "weight of auxiliary-head losses (default 0.3)"),
    ("--val-split", float, "fraction of the training set held out (default 0)"),
    ("--early-stopping", int, "patience in epochs (needs --val-split; default 0: off)"),
    ("--early-stopping-metric", str, "val_loss or val_acc (default val_loss)"),
    ("--precise-bn", int, "batches that recompute BatchNorm statistics before evaluating (50)"),
    ("--target-acc", float, "stop once the validation accuracy reaches this (needs --val-split)"),
    ("--ema", float, "evaluate an exponential moving average of the weights with this decay"),
    ("--tta", str, "test-time augmentation for every evaluation: none or flip"),
    ("--resize", int, "input size fed to the model (default: d2l's; other data: its own size)"),
    ("--augment", str, "comma list: crop, crop-reflect, flip, erase, erase-random, jitter"),
    ("--seed", int, "default 0"),
    ("--device", str, "auto, cpu, cuda (default auto)"),
    ("--precision", str, "fp32, bf16, fp16, or auto: the fastest measured (default fp32)"),
    ("--memory-format", str, "auto (the faster, measured), contiguous, channels_last"),
    ("--threads", int, "CPU threads (default: torch's, one per physical core)"),
    ("--init-from", str, "start from a trained run's weights (new classifier)"),
    ("--freeze", str, "'features': train only the head (with --init-from)"),
]
# Flags that change only what is printed, not the run: --resume accepts them.
PRINT_ONLY_FLAGS = {"quiet"}
NO_DETERMINISTIC_KERNEL = " does not have a deterministic implementation"  # torch's words
TRAIN_FLAG_TYPES = [(flag, kind) for flag, kind, _ in TRAIN_FLAGS]
TRAIN_SWITCHES = [
    ("--class-weights", "weight the loss by inverse class frequency"),
    (
        "--deterministic",
        "deterministic algorithms: bit-exact reruns and resumes on a CPU "
        "(same torch, CPU type and --threads)",
    ),
    ("--compile", "torch.compile the model"),
    ("--sync-bn", "under torchrun: synchronise BatchNorm statistics across processes"),
    ("--tensorboard", "write TensorBoard event files to <run folder>/tensorboard"),
    ("--quiet", "no progress bar: one line per epoch"),
]


def add_parsers(commands) -> None:
    add_train_parser(commands)
    add_after_training_parsers(commands)


def add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a zoo model on a dataset",
        description="Train a zoo model. Flags override --config FILE.toml; unset values take "
        "d2l's settings for the model. Everything goes to a run folder.",
        argument_default=argparse.SUPPRESS,
    )
    for flag, kind, help_text in TRAIN_FLAGS:
        train.add_argument(flag, type=kind, help=help_text)
    for flag, help_text in TRAIN_SWITCHES:
        train.add_argument(flag, action="store_true", help=help_text)
    train.add_argument("--data-dir", help="where datasets live (default $CNNLAB_DATA)")
    train.add_argument(
        "--set",
        action="append",
        metavar="OPTION=VALUE",
        dest="options",
        help="a model build option, e.g. --set width_multiplier=0.25 (repeatable)",
    )
    train.add_argument("--config", metavar="FILE.toml", help="settings file; flags override it")
    train.add_argument(
        "--budget",
        metavar="DURATION",
        help="the best network this machine trains in DURATION (90s, 5m, 1h) from process "
        "start to the final test accuracy: plans the network size (or with --model just its "
        "resolution, batch and schedule) and the epochs, and keeps to it",
    )
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run folder with its own settings (--quiet may be added)",
    )
    train.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="with --resume: continue even if the checkpoint was written for another model, "
        "class list or dataset than the run's config.toml (its weights must still fit)",
    )
    train.set_defaults(handler=run_train)


def add_after_training_parsers(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="evaluate a trained model: loss, accuracy, per class, confusion matrix"
    )
    evaluate.add_argument("source", metavar="RUN_OR_WEIGHTS", help="run folder or .safetensors")
    evaluate.add_argument("--dataset", help="default: the dataset the model was trained on")
    evaluate.add_argument("--split", default="test", help="default test")
    evaluate.add_argument("--data-dir", help="where datasets live (default $CNNLAB_DATA)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")
    evaluate.set_defaults(handler=run_eval)

    predict = commands.add_parser("predict", help="top-k classes for your own image files")
    predict.add_argument("source", metavar="RUN_OR_WEIGHTS", help="run folder or .safetensors")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    predict.add_argument("--top-k", type=positive_int, default=5, metavar="K")
    predict.add_argument(
        "--invert",
        action="store_true",
        help="invert pixel values (dark objects on white, for models trained on MNIST-style data)",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda")
    predict.set_defaults(handler=run_predict)

    lr_find = commands.add_parser(
        "lr-find",
        help="learning-rate range test: a plot and a suggested rate",
        argument_default=argparse.SUPPRESS,
    )
    for flag in (
        "--model",
        "--dataset",
        "--batch-size",
        "--optimizer",
        "--resize",
        "--augment",
        "--seed",
        "--device",
    ):
        kind = dict(TRAIN_FLAG_TYPES)[flag]
        lr_find.add_argument(flag, type=kind)
    lr_find.add_argument("--data-dir")
    lr_find.add_argument("--start-lr", type=float, default=1e-6)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=positive_int, default=100)
    lr_find.add_argument("--plot", metavar="OUT.png", help="write the loss-vs-lr plot")
    lr_find.set_defaults(handler=run_lr_find)

    cv = commands.add_parser(
        "cv",
        help="stratified k-fold cross-validation: per-fold and mean +- std accuracy",
        argument_default=argparse.SUPPRESS,
    )
    cv.add_argument("--folds", type=positive_int, default=5)
    for flag, kind, help_text in TRAIN_FLAGS:
        if flag not in ("--val-split", "--early-stopping", "--early-stopping-metric"):
            cv.add_argument(flag, type=kind, help=help_text)
    for flag, help_text in TRAIN_SWITCHES:
        cv.add_argument(flag, action="store_true", help=help_text)
    cv.add_argument("--data-dir")
    cv.add_argument("--config", metavar="FILE.toml")
    cv.set_defaults(handler=run_cv)

    reproduce = commands.add_parser(
        "reproduce", help="run d2l's Fashion-MNIST recipes; our results beside the published"
    )
    reproduce.add_argument("suite", choices=["d2l"])
    reproduce.add_argument("--models", nargs="+", help="recipe names (default: all)")
    reproduce.add_argument("--epochs", type=positive_int, help="override the recipes' 10")
    reproduce.add_argument("--data-dir")
    reproduce.add_argument("--out", help="folder for the runs")
    reproduce.add_argument("--device", help="auto, cpu, cuda")
    reproduce.add_argument("--quiet", action="store_true", help="one line per epoch")
    reproduce.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="FILE.html",
        help="also write the HTML comparison of the runs, d2l's accuracy beside each "
        "(default file: report.html in the runs' folder)",
    )
    reproduce.set_defaults(handler=run_reproduce)

    report = commands.add_parser(
        "report",
        help="compare run folders: leaderboard, learning curves, confusion matrices",
        description="Compare run folders side by side. Prints the leaderboard (sorted by test "
        "accuracy); --html writes one self-contained page with the figures too.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    report.add_argument("--html", metavar="OUT.html", help="write the HTML report here")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.set_defaults(handler=run_report)


def run_train(args: argparse.Namespace) -> int:
    """Under torchrun, this process's part of the job (see train/distributed.py)."""
    from cnnlab.train.distributed import run_job

    return run_job(lambda: train(args))


def train(args: argparse.Namespace) -> int:
    """Every setting is checked before any data is loaded or any folder is made."""
    from cnnlab.runs.config import check_inputs, config_from, load_toml
    from cnnlab.train.trainer import Trainer

    given = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    allow_mismatch = given.pop("allow_mismatch", False)
    budget = given.pop("budget", None)
    if budget is not None and ("resume" in given or "epochs" in given):
        raise CnnlabError("--budget plans the run's epochs itself; drop --resume and --epochs")
    if "resume" in given:
        extra = sorted(set(given) - {"resume"} - PRINT_ONLY_FLAGS)
        if extra:
            raise CnnlabError(
                f"--resume continues a run with its own settings; drop {', '.join(extra)}"
            )
        trainer = Trainer.resume(
            given["resume"], allow_mismatch=allow_mismatch, quiet=given.get("quiet")
        )
        check_inputs(trainer.config, new_run=False)
        fit(trainer)
        return 0
    if allow_mismatch:
        raise CnnlabError("--allow-mismatch only applies with --resume RUN")
    values = load_toml(given.pop("config")) if "config" in given else {}
    options = parse_options(given.pop("options", []))
    values.update(given)
    if options:
        values["model_options"] = {**values.get("model_options", {}), **options}
    if budget is not None and "model" not in values:
        values.setdefault("recipe", "fast")  # the budget's network family, checked as such
    config = config_from(values).resolved()
    check_inputs(config)
    if budget is not None:
        from cnnlab.studies.budget import parse_duration, train_within_budget
        from cnnlab.train.distributed import refuse_torchrun

        refuse_torchrun("train --budget")  # each process would time and plan its own run
        parse_duration(budget)  # a bad duration is refused before any data is loaded
        train_within_budget(values, budget)
        return 0
    fit(Trainer(config))
    return 0


def fit(trainer) -> None:
    """Train. An operation torch cannot run deterministically under --deterministic is one
    clear error, not a traceback."""
    try:
        trainer.fit()
    except RuntimeError as error:
        # torch refuses, in deterministic mode, operations it has only nondeterministic
        # kernels for (on CUDA: the backward of adaptive average pooling, for one)
        operation, found, _ = str(error).partition(NO_DETERMINISTIC_KERNEL)
        if not found:
            raise
        import torch

        raise CnnlabError(
            f"--deterministic: torch {torch.__version__} has no deterministic "
            f"{operation.strip()} for this model on {trainer.device}; train on --device cpu "
            "for bit-exact runs, or drop --deterministic"
        ) from None


def run_eval(args: argparse.Namespace) -> int:
    from cnnlab.studies.inference import evaluate_saved, format_evaluation

    evaluation, classes, _ = evaluate_saved(
        args.source,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device,
    )
    if args.json:
        print(json.dumps(evaluation.to_dict(classes), indent=2))
    else:
        print(format_evaluation(evaluation, classes))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cnnlab.studies.inference import format_predictions, predict_images

    predictions = predict_images(
        args.source, args.images, top_k=args.top_k, device=args.device, invert=args.invert
    )
    print(format_predictions(predictions))
    return 0


def training_settings(args: argparse.Namespace, skip: tuple[str, ...]) -> dict:
    from cnnlab.runs.config import load_toml

    given = {k: v for k, v in vars(args).items() if k not in ("command", "handler", *skip)}
    values = load_toml(given.pop("config")) if "config" in given else {}
    values.update(given)
    return values


def run_lr_find(args: argparse.Namespace) -> int:
    from cnnlab.reports.plots import plot_lr_find
    from cnnlab.runs.config import check_inputs, config_from
    from cnnlab.studies.lr_find import format_lr_find, lr_find
    from cnnlab.train.distributed import refuse_torchrun

    refuse_torchrun("lr-find")
    settings = training_settings(args, ("start_lr", "end_lr", "steps", "plot"))
    config = config_from({**settings, "quiet": True})
    check_inputs(config.resolved(), new_run=False)
    result = lr_find(
        config,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        steps=args.steps,
    )
    print(format_lr_find(result))
    if getattr(args, "plot", None) and result.lrs:
        plot_lr_find(result.lrs, result.losses, result.suggested, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def run_cv(args: argparse.Namespace) -> int:
    from cnnlab.runs.config import check_inputs, config_from
    from cnnlab.studies.cross_validation import cross_validate, format_cross_validation
    from cnnlab.train.distributed import refuse_torchrun

    refuse_torchrun("cv")
    settings = training_settings(args, ("folds",))
    out = settings.pop("out", None)
    config = config_from(settings)
    check_inputs(config.resolved(), new_run=False)
    result = cross_validate(config, args.folds, out=out)
    print(format_cross_validation(result))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from cnnlab.reports.html_report import check_report_path
    from cnnlab.studies.reproduce import format_reproduction, report_d2l, reproduce_d2l
    from cnnlab.train.distributed import refuse_torchrun

    refuse_torchrun("reproduce")
    overrides = {"quiet": True} if args.quiet else {}
    if args.device:
        overrides["device"] = args.device
    if args.report:  # a file named: refuse a path it cannot be written to before training
        check_report_path(args.report)
    rows = reproduce_d2l(
        models=args.models,
        epochs=args.epochs,
        data_dir=args.data_dir,
        out=args.out,
        overrides=overrides,
    )
    print(format_reproduction(rows))
    if args.report is not None:
        print(f"HTML report written to {report_d2l(rows, args.report or None)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cnnlab.reports.compare import compare_runs, format_leaderboard
    from cnnlab.reports.html_report import check_report_path, write_html_report

    if args.html:
        check_report_path(args.html)
    board = compare_runs(args.runs)
    print(json.dumps(board.to_dict(), indent=2) if args.json else format_leaderboard(board))
    if args.html:
        written = write_html_report(board, args.html)
        # with --json, stdout stays one JSON document
        print(f"HTML report written to {written}", file=sys.stderr if args.json else sys.stdout)
    return 0
