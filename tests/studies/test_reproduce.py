"""The d2l recipes hold the book's hyperparameters, and reproduce_d2l runs them."""

import json

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.studies.reproduce import (
    D2L_PUBLISHED,
    RECIPES_DIR,
    format_reproduction,
    load_recipe,
    reproduce_d2l,
)

# recipe: (model, batch size, lr, input size, model options), from the issue / d2l's chapters.
D2L_HYPERPARAMETERS = {
    "lenet": ("lenet", 256, 0.9, 28, {}),
    "lenet_bn": ("lenet_bn", 256, 1.0, 28, {}),
    "alexnet": ("alexnet", 128, 0.01, 224, {}),
    "vgg11": ("vgg11", 128, 0.05, 224, {"width_multiplier": 0.25}),
    "nin": ("nin", 128, 0.1, 224, {}),
    "googlenet": ("googlenet", 128, 0.1, 96, {}),
    "resnet18": ("resnet18", 256, 0.05, 96, {}),
    "densenet": ("densenet_d2l", 256, 0.1, 96, {}),
}


def test_one_recipe_per_published_result():
    assert {path.stem for path in RECIPES_DIR.glob("*.toml")} == set(D2L_HYPERPARAMETERS)
    assert set(D2L_PUBLISHED) == set(D2L_HYPERPARAMETERS)
    assert all(0.7 < acc < 0.95 for acc in D2L_PUBLISHED.values())


@pytest.mark.parametrize("name", sorted(D2L_HYPERPARAMETERS))
def test_recipe_has_the_books_hyperparameters(name):
    model, batch_size, lr, size, options = D2L_HYPERPARAMETERS[name]
    config = load_recipe(name)
    assert config.model == model and config.dataset == "fashion-mnist"
    assert config.optimizer == "sgd" and config.schedule == "constant" and config.epochs == 10
    assert (config.batch_size, config.lr, config.resize) == (batch_size, lr, size)
    assert config.model_options == options
    assert (config.weight_decay, config.label_smoothing, config.augment) == (0.0, 0.0, "none")
    assert config.resolved() == config  # nothing left for the family defaults to fill in


def test_unknown_recipe_and_missing_folder(tmp_path):
    with pytest.raises(CnnlabError, match=r"no d2l recipe 'lenet5'.*recipes: alexnet"):
        load_recipe("lenet5")
    with pytest.raises(CnnlabError, match=r"recipes folder .*nowhere does not exist"):
        load_recipe("lenet", recipes_dir=tmp_path / "nowhere")
    (tmp_path / "mine.toml").write_text('model = "lenet"\nepochs = 2\n')
    assert load_recipe("mine", recipes_dir=tmp_path).epochs == 2


def test_reproduce_one_model_for_one_epoch(fake_data, tmp_path):
    lines = []
    rows = reproduce_d2l(
        ["lenet"],
        epochs=1,
        data_dir=str(fake_data),
        out=str(tmp_path / "d2l"),
        echo=lines.append,
        overrides={"device": "cpu", "quiet": True},
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "lenet" and row["published"] == D2L_PUBLISHED["lenet"]
    assert row["epochs"] == 1 and row["seconds"] >= 0
    evaluation = json.loads((tmp_path / "d2l" / "lenet" / "evaluation.json").read_text())
    assert evaluation["split"] == "fashion-mnist/test" and row["ours"] == evaluation["acc"]
    assert json.loads((tmp_path / "d2l" / "reproduction.json").read_text()) == rows
    table = format_reproduction(rows)
    assert "lenet" in table and "0.779" in table and f"{row['ours']:.3f}" in table


def test_every_recipe_is_checked_before_any_training(tmp_path):
    with pytest.raises(CnnlabError, match="no d2l recipe 'nope'"):
        reproduce_d2l(["lenet", "nope"], out=str(tmp_path / "d2l"))
    with pytest.raises(CnnlabError, match="unknown training setting"):
        reproduce_d2l(["lenet"], out=str(tmp_path / "d2l"), overrides={"colour": "red"})
    assert not (tmp_path / "d2l").exists()


def test_format_without_a_published_figure():
    rows = [{"model": "mine", "published": None, "ours": 0.5, "epochs": 2, "seconds": 3.0}]
    line = format_reproduction(rows).splitlines()[1]
    assert line.split() == ["mine", "-", "0.500", "-", "2", "3.0", "s"]
