"""cnnlab eval and predict as a library: a saved run evaluated again, and the user's own images."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.errors import CheckpointError, CnnlabError, DataFormatError
from cnnlab.models import create_model
from cnnlab.runs.config import TrainConfig
from cnnlab.runs.trained import eval_pipeline, load_image_for, load_trained
from cnnlab.runs.weights import save_weights
from cnnlab.studies.inference import (
    evaluate_saved,
    format_evaluation,
    format_predictions,
    predict_images,
)
from cnnlab.train.evaluate import Evaluation
from cnnlab.train.trainer import Trainer

FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def fake_fashion_mnist(root: Path, train: int, test: int) -> None:
    """Random images with labels 0..9 cycling, as the IDX gzip files load_dataset reads."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (count, 28, 28))),
            ("labels-idx1", np.arange(count) % 10),
        ):
            header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            data = gzip.compress(header + array.astype(np.uint8).tobytes())
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A LeNet trained for one epoch on a fake Fashion-MNIST; returns the data root (the run
    folder is its `run` subfolder)."""
    root = tmp_path_factory.mktemp("inference")
    fake_fashion_mnist(root, train=64, test=20)
    config = TrainConfig(
        model="lenet",
        dataset="fashion-mnist",
        data_dir=str(root),
        epochs=1,
        out=str(root / "run"),
        quiet=True,
        batch_size=16,
        device="cpu",
    )
    Trainer(config, echo=lambda *args: None).fit()
    return root


def write_class_folder(root: Path, classes: int, mode: str) -> Path:
    for index in range(classes):
        folder = root / f"class{index}"
        folder.mkdir(parents=True)
        Image.new(mode, (28, 28), 100).save(folder / "a.png")
    return root


# ---- evaluate_saved -------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["run", "run/model.safetensors"])
def test_evaluate_saved_gives_the_runs_own_evaluation(trained, target):
    saved = json.loads((trained / "run" / "evaluation.json").read_text())
    evaluation, classes, metadata = evaluate_saved(
        str(trained / target), data_dir=str(trained), batch_size=7, device="cpu"
    )
    assert saved["split"] == "fashion-mnist/test" and evaluation.count == saved["count"] == 20
    assert evaluation.loss == pytest.approx(saved["loss"], rel=1e-5)
    assert evaluation.acc == saved["acc"]
    assert evaluation.confusion.tolist() == saved["confusion"]
    assert classes == FASHION and metadata["model"] == "lenet"


def test_evaluate_saved_on_the_train_split(trained):
    evaluation, _, _ = evaluate_saved(
        str(trained / "run"), split="train", data_dir=str(trained), device="cpu"
    )
    assert evaluation.count == 64 and int(evaluation.confusion.sum()) == 64


def test_dataset_with_other_classes_or_channels_is_refused(trained, tmp_path):
    run = str(trained / "run")
    two = write_class_folder(tmp_path / "two", 2, "L")
    with pytest.raises(CnnlabError, match=r"has 2 classes but .*lenet trained on fashion-mnist"):
        evaluate_saved(run, dataset=str(two), split=None, device="cpu")
    colour = write_class_folder(tmp_path / "colour", 10, "RGB")
    with pytest.raises(CnnlabError, match=r"has 3-channel images but .* takes 1-channel images"):
        evaluate_saved(run, dataset=str(colour), split=None, device="cpu")


def test_weights_without_training_metadata_are_refused(tmp_path):
    bare = tmp_path / "bare.safetensors"
    model = create_model("lenet", num_classes=10, in_channels=1)
    save_weights(bare, model, {"model": "lenet", "num_classes": 10, "in_channels": 1})
    with pytest.raises(CheckpointError, match=r"bare.safetensors has no training metadata"):
        evaluate_saved(str(bare))
    with pytest.raises(CheckpointError, match="no training metadata"):
        predict_images(str(bare), ["whatever.png"])


def test_unfinished_run_folder_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match=r"has no model.safetensors.*--resume"):
        evaluate_saved(str(tmp_path))


def test_format_evaluation_with_long_names_uses_indices():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    evaluation = Evaluation(loss=0.5, acc=5 / 6, count=6, confusion=confusion)
    text = format_evaluation(evaluation, ["T-shirt/top", "Trouser", "Bag"])
    assert "loss 0.5000  accuracy 0.8333  (6 images)" in text
    assert "0  T-shirt/top  0.7500  (4 images)" in text
    assert "2  Bag               -  (0 images)" in text  # no images: no accuracy
    table = text.split("columns: predicted class):\n")[1].splitlines()
    assert table == ["     0 1 2", "  0  3 1 0", "  1  0 2 0", "  2  0 0 0"]


def test_format_evaluation_with_short_names_uses_them():
    evaluation = Evaluation(0.1, 1.0, 120, torch.tensor([[100, 0], [0, 20]]))
    table = format_evaluation(evaluation, ["cat", "dog"]).splitlines()[-3:]
    assert table == ["       cat dog", "  cat  100   0", "  dog    0  20"]


# ---- images and predictions -----------------------------------------------------------------


def metadata_of(trained) -> dict:
    return load_trained(str(trained / "run"))[1]


def test_image_conversion_to_the_models_channels_and_size(trained, tmp_path):
    metadata = metadata_of(trained)
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0  # fully transparent white: black on composition
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    image = load_image_for(tmp_path / "clear.png", metadata)
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert int(image.max()) == 0
    Image.new("RGB", (60, 30), (255, 255, 255)).save(tmp_path / "white.jpg", quality=95)
    assert load_image_for(tmp_path / "white.jpg", metadata).min() >= 250
    rgb_metadata = {**metadata, "in_channels": 3, "image_size": [3, 32, 32]}
    assert load_image_for(tmp_path / "white.jpg", rgb_metadata).shape == (3, 32, 32)


def test_invert_flips_values(trained, tmp_path):
    metadata = metadata_of(trained)
    values = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 256
    Image.fromarray(values.astype(np.uint8), "L").save(tmp_path / "ramp.png")
    plain = load_image_for(tmp_path / "ramp.png", metadata)
    inverted = load_image_for(tmp_path / "ramp.png", metadata, invert=True)
    assert torch.equal(inverted.int(), 255 - plain.int())
    assert not torch.equal(inverted, plain)


def test_predictions_are_sorted_top_k_pairs_with_class_names(trained, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (33, 20), dtype=np.uint8), "L").save(tmp_path / "g.png")
    colour = rng.integers(0, 256, (50, 64, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(tmp_path / "c.jpg")
    paths = [str(tmp_path / "g.png"), str(tmp_path / "c.jpg")]
    predictions = predict_images(str(trained / "run"), paths, top_k=3, device="cpu")
    assert [path for path, _ in predictions] == paths
    for _, pairs in predictions:
        probabilities = [p for _, p in pairs]
        assert len(pairs) == 3 and all(name in FASHION for name, _ in pairs)
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    everything = predict_images(str(trained / "run"), paths[:1], top_k=50, device="cpu")
    pairs = everything[0][1]
    assert len(pairs) == 10 and {name for name, _ in pairs} == set(FASHION)
    assert sum(p for _, p in pairs) == pytest.approx(1.0, abs=1e-5)
    text = format_predictions(predictions)
    assert text.splitlines()[0] == paths[0] and pairs[0][0] in format_predictions(everything)


def test_a_saved_test_image_gets_the_models_prediction(trained, tmp_path):
    model, metadata = load_trained(str(trained / "run"))
    test = load_dataset("fashion-mnist", "test", root=trained, download=False)
    with torch.no_grad():
        logits = model(eval_pipeline(metadata)(test.images))
    for index in (0, 1, 2):
        path = tmp_path / f"test{index}.png"
        Image.fromarray(test.images[index, 0].numpy(), "L").save(path)
        assert torch.equal(load_image_for(path, metadata), test.images[index])
        [(_, pairs)] = predict_images(str(trained / "run"), [str(path)], top_k=1, device="cpu")
        assert pairs[0][0] == FASHION[int(logits[index].argmax())]
        probability = float(logits[index].softmax(0).max())
        assert pairs[0][1] == pytest.approx(probability, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        ("missing.png", None, "no such file"),
        ("empty.png", b"", "an empty file"),
        ("notes.png", b"hello, not an image", "text"),
        ("anim.gif", b"GIF89a" + bytes(20), "GIF data"),
        ("cut.png", "truncated", "a corrupt or truncated file"),
    ],
)
def test_bad_image_files_are_named(trained, tmp_path, name, content, found):
    path = tmp_path / name
    if content == "truncated":
        Image.new("L", (28, 28), 7).save(path)
        path.write_bytes(path.read_bytes()[:40])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataFormatError, match=found) as error:
        predict_images(str(trained / "run"), [str(path)], device="cpu")
    assert str(path) in str(error.value) and "expected a PNG or JPEG image" in str(error.value)


def test_folder_and_no_images_are_refused(trained, tmp_path):
    with pytest.raises(DataFormatError, match="found a folder"):
        load_image_for(tmp_path, metadata_of(trained))
    with pytest.raises(CnnlabError, match="no image files given"):
        predict_images(str(trained / "run"), [])
