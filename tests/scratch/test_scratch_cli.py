"""`cnnlab gradcheck` and `cnnlab scratch-train`: the table, JSON, exit codes and clear errors."""

from __future__ import annotations

import json

from cnnlab.cli import main
from cnnlab.scratch import layers as L


def test_gradcheck_prints_a_passing_table(capsys):
    assert main(["gradcheck", "conv", "batchnorm_graph", "lenet_modern"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["component", "gradients"]
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert list(rows) == ["conv", "batchnorm_graph", "lenet_modern"]
    assert all(line.endswith("pass") for line in rows.values())
    assert "x and 18 parameters" in rows["lenet_modern"]
    assert out[-1] == "3 of 3 components pass (tolerance 1e-06)"


def test_gradcheck_json_and_failure_exit_code(capsys, monkeypatch):
    monkeypatch.setattr(L, "tanh_backward", lambda dout, cache: dout * (1 + cache * cache))
    assert main(["gradcheck", "tanh", "relu", "--json"]) == 1
    rows = {row["component"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["tanh"]["passed"] is False and rows["tanh"]["max_relative_error"] > 0.1
    assert rows["relu"]["passed"] is True and rows["relu"]["max_relative_error"] < 1e-6
    assert rows["relu"]["gradients"] == ["x"] and rows["relu"]["tolerance"] == 1e-6


def test_gradcheck_unknown_component_and_list(capsys):
    assert main(["gradcheck", "convv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab gradcheck: error: unknown component convv; expected one of:")
    assert main(["gradcheck", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"linear", "conv_depthwise", "batchnorm_graph", "lrn", "lenet"} <= set(names)


def test_scratch_train_on_fake_data(fake_data, capsys):
    argv = ["scratch-train", "--data-dir", str(fake_data), "--no-download", "--epochs", "2"]
    assert main([*argv, "--model", "lenet_modern", "--batch-size", "20", "--json"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2  train loss" in out and "epoch 2/2" in out
    history = json.loads(out[out.index("[") :])
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_scratch_train_missing_data_is_one_clear_line(tmp_path, capsys):
    argv = ["scratch-train", "--data-dir", str(tmp_path), "--no-download"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab scratch-train: error:") and "fashion-mnist" in err
    assert "\n" not in err and "Traceback" not in err
