"""A training run's configuration: every setting, its default, and the TOML file that reruns it.

Settings left unset (None) are resolved from the model and the dataset: the input resolution,
batch size and learning rate d2l ("Dive into Deep Learning", Zhang et al.) uses to train each
classic network on Fashion-MNIST, so `cnnlab train --model lenet_bn` is a good run as typed.
A `--config FILE.toml` supplies values; command-line flags override them; `config.toml` in the
run folder holds the fully resolved configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from cnnlab.errors import CnnlabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CHOICES = {
    "optimizer": ("sgd", "momentum", "nesterov", "adam", "adamw"),
    "schedule": ("constant", "step", "cosine", "onecycle"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("fp32", "bf16", "fp16", "auto"),
    "memory_format": ("auto", "contiguous", "channels_last"),
    "early_stopping_metric": ("val_loss", "val_acc"),
    "tta": ("none", "flip"),
    "nonfinite": ("stop", "skip"),
}

# (input size, batch size, learning rate) d2l trains each family with on Fashion-MNIST, all with
# plain SGD for 10 epochs; first matching prefix wins.
FAMILY_DEFAULTS = (
    ("lenet_bn", (28, 256, 1.0)),
    ("lenet", (28, 256, 0.9)),
    ("alexnet", (224, 128, 0.01)),
    ("vgg", (224, 128, 0.05)),
    ("nin", (224, 128, 0.1)),
    ("googlenet", (96, 128, 0.1)),
    ("inception_v2", (96, 128, 0.1)),
    ("inception", (299, 32, 0.045)),  # v3, v4, Inception-ResNet: their papers' 299x299
    ("resnet", (96, 256, 0.05)),
    ("preact_resnet", (96, 256, 0.05)),
    ("resnext", (96, 128, 0.05)),
    ("densenet", (96, 256, 0.1)),
    ("fastnet", (28, 512, 0.2)),  # not in d2l: the fast recipes' network (runs/recipes.py)
)


@dataclass
class TrainConfig:
    model: str = "lenet_bn"
    dataset: str = "fashion-mnist"
    model_options: dict = field(default_factory=dict)
    out: str | None = None
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    l1: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    clip_grad_norm: float = 0.0  # 0: off
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop" the run, or "skip" the step
    aux_weight: float = 0.3
    val_split: float = 0.0  # fraction of the training set held out; 0: none
    early_stopping: int = 0  # patience in epochs; 0: off
    early_stopping_metric: str = "val_loss"
    precise_bn: int = 50  # training batches that recompute BatchNorm statistics; 0: off
    target_acc: float | None = None  # stop once the validation accuracy reaches it
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    tta: str = "none"  # test-time augmentation of every evaluation: "flip" averages mirrored
    resize: int | None = None
    augment: str | None = None  # None: "none" on Fashion-MNIST-like sets, else from the data
    class_weights: bool | None = None  # None: off on Fashion-MNIST-like sets, else from the data
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "fp32"  # "auto": the faster of fp32 and bf16 (fp16 too on GPUs), measured
    memory_format: str = "auto"  # "auto": contiguous or channels_last, whichever steps faster
    compile: bool = False
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch
    tensorboard: bool = False  # TensorBoard event files in <run folder>/tensorboard
    threads: int | None = None  # CPU threads for the math; None: torch's default, one per core
    quiet: bool = False
    init_from: str | None = None
    freeze: str | None = None  # "features": train only the head
    recipe: str | None = None  # the named recipe the settings started from (runs/recipes.py)
    data_choices: dict = field(default_factory=dict)  # setting -> why the data chose it

    def resolved(self) -> TrainConfig:
        """A copy with every model-dependent default filled in, validated. On datasets without
        tuned defaults (see `runs.data_fit`), the settings chosen from the data stay None
        until the trainer has loaded it."""
        from cnnlab.runs.data_fit import has_tuned_defaults

        config = self
        if has_tuned_defaults(self.dataset):
            size, batch, lr = family_defaults(self.model)
            config = dataclasses.replace(
                self,
                resize=self.resize if self.resize is not None else size,
                batch_size=self.batch_size if self.batch_size is not None else batch,
                lr=self.lr if self.lr is not None else lr,
                augment=self.augment if self.augment is not None else "none",
                class_weights=bool(self.class_weights),
            )
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings no run can have (each message names the flag, what it takes and
        what it got); checks nothing on disk, see `check_inputs` for that."""
        _check_types(self)
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                listed = ", ".join(choices)
                raise CnnlabError(f"{_flag(name)} must be one of {listed}, got {value!r}")
        whole = {  # name: (value, smallest allowed)
            "epochs": (self.epochs, 1),
            "batch_size": (self.batch_size, 1),
            "resize": (self.resize, 1),
            "threads": (self.threads, 1),
            "seed": (self.seed, 0),
            "early_stopping": (self.early_stopping, 0),
            "precise_bn": (self.precise_bn, 0),
        }
        for name, (value, low) in whole.items():
            if value is not None and value < low:
                kind = "a positive integer" if low else "an integer >= 0"
                raise CnnlabError(f"{_flag(name)} must be {kind}, got {value!r}")
        ranges = {
            "ema": (self.ema, 0.0, 0.9999999),
            "val_split": (self.val_split, 0.0, 0.9),
            "label_smoothing": (self.label_smoothing, 0.0, 0.99),
            "weight_decay": (self.weight_decay, 0.0, math.inf),
            "l1": (self.l1, 0.0, math.inf),
            "clip_grad_norm": (self.clip_grad_norm, 0.0, math.inf),
            "aux_weight": (self.aux_weight, 0.0, math.inf),
            "warmup_epochs": (self.warmup_epochs, 0.0, self.epochs),
        }
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise CnnlabError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise CnnlabError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        for name, (value, low, high) in ranges.items():
            if not (low <= value <= high and math.isfinite(value)):
                span = f"in [{low}, {high}]" if math.isfinite(high) else f"finite and >= {low}"
                raise CnnlabError(f"{_flag(name)} must be {span}, got {value!r}")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise CnnlabError(f"--target-acc must be in (0, 1], got {self.target_acc!r}")
        if self.target_acc is not None and not self.val_split:
            raise CnnlabError(
                "--target-acc watches a held-out validation split (never the test set): "
                "give --val-split too"
            )
        if self.early_stopping and not self.val_split:
            raise CnnlabError("early stopping watches the validation set: give --val-split too")
        if self.freeze not in (None, "features"):
            raise CnnlabError(f"--freeze takes 'features', got {self.freeze!r}")
        if self.freeze and not self.init_from:
            raise CnnlabError("--freeze features needs trained weights: give --init-from RUN too")

    def to_toml(self) -> str:
        lines, tables = [], []
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, dict):
                if value:
                    rows = [f"{key} = {_toml_value(v)}" for key, v in sorted(value.items())]
                    tables += ["", f"[{item.name}]", *rows]
            elif value is not None:
                lines.append(f"{item.name} = {_toml_value(value)}")
        return "\n".join(lines + tables) + "\n"


def check_inputs(config: TrainConfig, new_run: bool = True) -> None:
    """Refuse, before any data is loaded or any folder made, what `validate` cannot see: an
    unknown dataset or model, a model option unknown or of the wrong type, an input size below
    the model's minimum, an unknown augmentation, a missing --init-from, no CUDA for --device
    cuda, and (`new_run`) an --out that is not an empty folder. `config` is resolved (see
    `TrainConfig.resolved`)."""
    from cnnlab.data import DATASETS
    from cnnlab.data.augment import parse_augmentations

    if config.dataset not in DATASETS and not Path(config.dataset).expanduser().is_dir():
        raise CnnlabError(
            f"unknown --dataset {config.dataset!r}: expected one of {', '.join(DATASETS)} or an "
            f"image folder (one subfolder per class), and no folder {config.dataset} exists"
        )
    model = _meta_model(config.model, config.model_options)
    smallest = max(model.default_cfg.min_input_size)
    if config.resize is not None and config.resize < smallest:
        raise CnnlabError(
            f"--resize {config.resize} is below {config.model}'s minimum input size: it needs "
            f"at least {smallest}x{smallest} pixels"
        )
    if config.augment is not None:
        parse_augmentations(config.augment)
    if config.init_from:
        from cnnlab.runs.weights import weights_path

        if not weights_path(config.init_from).is_file():
            raise CnnlabError(
                f"--init-from {config.init_from}: no weights there (expected a run folder holding "
                f"model.safetensors, or a .safetensors file)"
            )
    if new_run and config.out:
        out = Path(config.out)
        if out.exists() and not out.is_dir():
            raise CnnlabError(f"--out {out} is a file; a run needs a new or empty folder")
        if out.is_dir() and any(out.iterdir()):
            raise CnnlabError(
                f"run folder {out} already exists and is not empty: choose another --out, or "
                f"continue it with --resume {out}"
            )
    if config.device == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for, but PyTorch sees no CUDA device here")


def min_input_side(model: str, options: dict) -> int:
    """The smallest square input side `model` with `options` takes."""
    return max(_meta_model(model, options).default_cfg.min_input_size)


def _meta_model(name: str, options: dict):
    """The model `name` built on the meta device (its name, options and minimum input size
    checked, no weights made); an option of the wrong type or value is a CnnlabError."""
    from cnnlab.models import create_model, model_options

    for key, default in model_options(name).items():
        value = options.get(key, default)
        if type(default) in (int, float, bool) and not _is_kind(value, type(default)):
            raise CnnlabError(
                f"--set {key}={value!r}: {name}'s {key} takes {_KINDS[type(default)]}, like its "
                f"default {default!r}"
            )
    try:
        with torch.device("meta"), _NoRandomFill():
            return create_model(name, num_classes=10, in_channels=3, **options)
    except CnnlabError:
        raise
    except (TypeError, ValueError) as error:
        raise CnnlabError(f"--model {name} cannot be built with {options}: {error}") from None


class _NoRandomFill(TorchFunctionMode):
    """Random initialisation is skipped while a model is built on the meta device: meta tensors
    hold no values, and torch's meta `normal_` would import its compiler stack (2 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _flag(name: str) -> str:
    """The command-line flag that sets the TrainConfig field `name`."""
    return "--set" if name == "model_options" else "--" + name.replace("_", "-")


_KINDS = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a table of options",
}


def _check_types(config: TrainConfig) -> None:
    """Each setting has its declared type (a config file can hold anything): ints where ints
    belong (never booleans), numbers for floats."""
    hints = typing.get_type_hints(TrainConfig)
    for item in fields(config):
        value, allowed = getattr(config, item.name), typing.get_args(hints[item.name])
        allowed = allowed or (hints[item.name],)
        if value is None and type(None) in allowed:
            continue
        if not any(_is_kind(value, kind) for kind in allowed):
            wanted = " or ".join(_KINDS[kind] for kind in allowed if kind in _KINDS)
            raise CnnlabError(f"{_flag(item.name)} must be {wanted}, got {value!r}")


def _is_kind(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(kind, type) and isinstance(value, kind)


def family_defaults(model: str) -> tuple[int, int, float]:
    for prefix, defaults in FAMILY_DEFAULTS:
        if model.startswith(prefix):
            return defaults
    return (224, 128, 0.05)


def load_toml(path: str | Path) -> dict:
    """The settings in a TOML config file, checked against TrainConfig's fields."""
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError:
        raise CnnlabError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise CnnlabError(f"config file {path} is not valid TOML: {error}") from None
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CnnlabError(
            f"config file {path} has unknown setting(s) {', '.join(unknown)}; "
            f"known settings: {', '.join(sorted(known))}"
        )
    return values


def config_from(values: dict) -> TrainConfig:
    """A TrainConfig from settings; with `recipe`, the recipe's settings for the dataset come
    first and `values` override them (so a saved config.toml, which holds every setting,
    reloads unchanged)."""
    if values.get("recipe") is not None:
        from cnnlab.runs.recipes import recipe_settings

        base = recipe_settings(values["recipe"], values.get("dataset", "fashion-mnist"))
        options = {**base.pop("model_options"), **values.get("model_options", {})}
        values = {**base, **values, "model_options": options, "recipe": base["recipe"]}
    try:
        return TrainConfig(**values)
    except TypeError as error:
        raise CnnlabError(f"bad training settings: {error}") from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise CnnlabError(f"cannot write {value!r} to TOML")
