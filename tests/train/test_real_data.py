"""One short training run on the real Fashion-MNIST (CI sets CNNLAB_DATA): the whole path from
the IDX files to a test accuracy, at d2l's LeNet-BN settings."""

import json
import os

import pytest

from cnnlab.train import TrainConfig, Trainer


@pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available",
)
def test_one_epoch_of_lenet_bn_learns_fashion_mnist(tmp_path):
    config = TrainConfig(model="lenet_bn", epochs=1, out=str(tmp_path / "run"), quiet=True)
    lines = []
    history = Trainer(config, echo=lines.append).fit()
    assert history[0]["train_acc"] > 0.6
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["count"] == 10_000 and evaluation["acc"] > 0.75
    assert lines[-1].startswith("test accuracy") and str(tmp_path / "run") in lines[-1]
