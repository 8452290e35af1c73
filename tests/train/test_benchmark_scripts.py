"""The benchmark scripts' machinery on tiny inputs: they run, and their summaries compute what
their tables claim. (No timing is asserted: performance figures live in BENCHMARKS.md.)"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: its shared `machine` module


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_accuracy_summary_mean_spread_and_verdict():
    tta = load("time_to_accuracy")
    timeline = {stage: 1.0 for stage in tta.STAGES}
    runs = [
        {"seed": s, "acc": acc, "wall_s": 9.0, "timeline": {**timeline, "evaluated": t}}
        for s, (acc, t) in enumerate([(0.905, 8.0), (0.899, 9.0), (0.902, 12.0)])
    ]
    row = tta.summarize("fast-90", runs)
    assert row["mean_acc"] == pytest.approx(0.902) and row["min_acc"] == 0.899
    assert row["std_acc"] == pytest.approx(0.003) and row["median_result_s"] == 9.0
    assert row["meets_target"] is True
    slow = tta.summarize(
        "fast-90", [{**r, "timeline": {**timeline, "evaluated": 11}} for r in runs]
    )
    assert slow["meets_target"] is False
    text = tta.table([row, slow])
    assert "| fast-90 | 90% in 10 s | 3 | 0.9020 ± 0.0030 (0.8990-0.9050) | 9.0 s" in text
    assert "**no**" in text


def test_time_to_accuracy_runs_a_recipe_in_a_fresh_process(fake_data, tmp_path):
    tta = load("time_to_accuracy")
    extra = ["--data-dir", str(fake_data), "--epochs", "1", "--batch-size", "32"]
    run = tta.run_once("fast-90", 3, tmp_path / "runs", extra)
    assert 0 <= run["acc"] <= 1 and run["seed"] == 3
    assert 0 < run["timeline"]["evaluated"] <= run["wall_s"] + 1


def test_scaling_child_measures_a_training_step():
    scaling = load("scaling")
    point = scaling.child("lenet", 4, 28, "fp32")
    assert point["images_per_s"] > 0 and point["peak_mib"] > point["step_mib"]
    # In a long pytest process a tiny step can reuse heap that earlier tests freed, so its
    # rise in peak memory may be ~0 (the benchmark itself measures in fresh processes).
    assert point["step_mib"] > -1
    assert scaling.measure("alexnet", 4, 32, "fp32") is None  # below AlexNet's 63-pixel minimum
    assert scaling.cell(None) == "below minimum input"


def test_step_profile_counts_the_operators_of_a_step(fake_data):
    profiler = load("step_profile")
    trainer, events = profiler.profile_steps("lenet_bn", "fp32", 2, data_dir=str(fake_data))
    names = {event.key for event in events}
    assert trainer.config.model == "lenet_bn"
    assert "aten::convolution" in names or "aten::mkldnn_convolution" in names
    assert any("batch_norm" in name for name in names)


def test_scratch_speed_times_every_pair_side_by_side():
    import numpy as np

    bench = load("scratch_speed")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    for name in bench.PAIRS:
        row = bench.measure(name, x, y, rounds=1, steps=1)
        assert set(row) == {"model", "torch fp32", "scratch fp32", "scratch fp64"}
        assert all(row[k] > 0 for k in row if k != "model")


def test_machine_line_names_cpu_cores_and_versions():
    import numpy as np
    import torch

    line = load("machine").describe()
    assert "cores" in line and torch.__version__ in line and np.__version__ in line
