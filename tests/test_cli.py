"""The CLI: summary and zoo output, JSON shape, and one-line errors with a non-zero exit."""

import json

import pytest

from cnnlab.cli import main


def test_summary_json_has_the_promised_fields(capsys):
    assert main(["summary", "vgg11", "--input", "1x224x224", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == sum(layer["params"] for layer in data["layers"])
    assert data["total_macs"] == sum(layer["macs"] for layer in data["layers"])
    keys = {"name", "type", "output_shape", "params", "macs", "receptive_field", "jump"}
    assert all(keys <= set(layer) for layer in data["layers"])
    pools = [layer["output_shape"] for layer in data["layers"] if layer["type"] == "MaxPool2d"]
    assert [shape[-1] for shape in pools] == [112, 56, 28, 14, 7]


def test_summary_table_explains_macs(capsys):
    assert main(["summary", "resnet18", "--input", "1x96x96", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "1 MAC = 2 FLOPs" in out and "stages.3.1" in out and "Identity" not in out


def test_summary_with_build_option(capsys):
    assert (
        main(
            [
                "summary",
                "vgg11",
                "--input",
                "1x224x224",
                "--set",
                "width_multiplier=0.25",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    assert "16x224x224" in capsys.readouterr().out


def test_summary_fully_convolutional_map(capsys):
    assert main(["summary", "vgg16", "--fully-conv", "--input", "3x384x384", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_shape"] == [1000, 6, 6]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "resnet19"], "unknown model 'resnet19'; close matches: resnet18"),
        (["summary", "alexnet", "--input", "3x40x40"], "(W - F + 2P) / S + 1"),
        (["summary", "vgg11", "--set", "depth=3"], "has no option 'depth'"),
        (["summary", "vgg11", "--set", "nonsense"], "expects OPTION=VALUE"),
        (["summary", "nin", "--fully-conv"], "nin"),
        (["zoo", "nothing*"], "no model matches"),
    ],
)
def test_errors_are_one_line_and_non_zero(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_input_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "lenet", "--input", "28x28"])
    assert exit_info.value.code == 2
    assert "expected CxHxW" in capsys.readouterr().err


def test_zoo_json_lists_every_model(capsys):
    from cnnlab.models import list_models

    assert main(["zoo", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == list_models()
    resnet50 = next(e for e in entries if e["name"] == "resnet50")
    assert resnet50["params"] == 25_557_032 and resnet50["year"] == 2015
    assert 4.0e9 < resnet50["macs"] < 4.2e9
