"""`cnnlab.load_model(run_or_weights)`: a trained model and its metadata as stored, from a run
folder or its weights file, in eval mode; clear errors for what is no finished run."""

from __future__ import annotations

import pytest
import torch

import cnnlab
from cnnlab.errors import CheckpointError
from cnnlab.runs.trained import eval_pipeline


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load") / "run"
    settings = {"model": "lenet_bn", "epochs": 1, "batch_size": 16, "quiet": True}
    trainer = cnnlab.Trainer(
        cnnlab.TrainConfig(**settings, data_dir=str(shared_data), out=str(folder))
    )
    trainer.fit()
    return folder, trainer


def test_a_run_folder_and_its_weights_give_the_trained_model(run):
    folder, trainer = run
    for source in (folder, folder / "model.safetensors", str(folder)):
        model, metadata = cnnlab.load_model(source)
        assert not model.training and type(model) is type(trainer.model)
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(model.state_dict()[key], value.cpu()), key
    assert metadata["model"] == "lenet_bn" and metadata["in_channels"] == 1
    assert metadata["classes"] == trainer.data.classes and len(metadata["classes"]) == 10
    assert metadata["input_size"] == trainer.config.resize
    assert metadata["mean"] == pytest.approx(trainer.data.mean)
    assert metadata["std"] == pytest.approx(trainer.data.std)


def test_the_loaded_model_scores_the_test_split_as_the_run_did(run):
    folder, trainer = run
    model, metadata = cnnlab.load_model(folder)
    test = trainer.data.test
    with torch.no_grad():
        predicted = model(eval_pipeline(metadata)(test.images)).argmax(dim=1)
    accuracy = (predicted == test.labels).float().mean().item()
    assert accuracy == pytest.approx(trainer.final_evaluation.acc)


def test_an_unfinished_run_or_a_missing_file_is_named(run, tmp_path):
    folder, _ = run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text((folder / "config.toml").read_text())
    with pytest.raises(
        CheckpointError, match=r"has no model.safetensors: the run has not finished"
    ):
        cnnlab.load_model(unfinished)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors"):
        cnnlab.load_model(tmp_path / "missing.safetensors")
