"""A trained model and how it was fed: load it with its training metadata, and prepare images
exactly as its training run did.

A run folder, or its `model.safetensors`, says how to rebuild the network (weights.py) and how
it was fed: its classes, the stored image size, the resize (`input_size`) and the training set's
per-channel mean and std. Images go through the same evaluation pipeline as in training (to
[0, 1], resize, normalise; never augmentation), with the model in eval mode (dropout off,
BatchNorm on its running statistics). Everything that looks at a trained model (eval, predict,
export, inspect) starts here.

A user's own image is read as training images were: PNG or JPEG only, checked as strictly as an
image folder (cnnlab.data.folder), converted to the model's channels (Pillow "L" for 1, "RGB"
for 3, transparency composited on black) and resized with Pillow's bilinear filter to the
stored training size before the pipeline resizes it to the input size.

Inversion caveat: Fashion-MNIST, MNIST and KMNIST show light objects on a black background. A
photo of a dark object on a white background is the negative of what such a model has seen and
is classified poorly; `invert=True` (`cnnlab predict --invert`) turns it into 255 - value first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnlab.data.augment import BatchPipeline
from cnnlab.data.image_file import BadImage, decode_image
from cnnlab.errors import CheckpointError, DataFormatError
from cnnlab.runs.weights import load_model, weights_path

# What inference needs from the metadata beyond what load_model needs to build the network.
TRAINING_KEYS = ("classes", "dataset", "image_size", "input_size", "mean", "std")


def load_trained(run_or_weights: str) -> tuple[nn.Module, dict]:
    """The model (eval mode, CPU) and metadata of a run folder or weights file written by a
    training run; refuses files that do not say how their images were prepared."""
    model, metadata = load_model(run_or_weights)
    path = weights_path(run_or_weights)
    missing = [key for key in TRAINING_KEYS if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{path} has no training metadata ({', '.join(missing)} missing): cnnlab cannot tell "
            "how its images were prepared; expected the model.safetensors of a cnnlab training run"
        )
    return model, metadata


def eval_pipeline(metadata: dict) -> BatchPipeline:
    """The evaluation pipeline the run used: its statistics and input size, no augmentation."""
    return BatchPipeline(metadata["mean"], metadata["std"], size=metadata["input_size"])


def load_image_for(path: str | Path, metadata: dict, invert: bool = False) -> torch.Tensor:
    """A PNG or JPEG file as uint8 C x H x W the way the model's training images were stored:
    its channels, and its stored size (bilinear). `invert` gives 255 - value (see the module
    docstring: light-on-dark datasets and dark-on-light photos)."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing (no such file)"
        raise DataFormatError(f"{path}: expected a PNG or JPEG image, found {found}")
    _, height, width = metadata["image_size"]
    try:
        array = decode_image(path, metadata["in_channels"], (height, width), None)
    except BadImage as bad:
        raise DataFormatError(bad.message(path)) from None
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return 255 - image if invert else image
