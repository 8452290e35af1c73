"""Choosing the fastest training step: measured within 5% of the planned training time, not
at all for a run too short to pay for it, and remembered per machine, model, input and batch."""

import json

import pytest

from cnnlab.runs.config import load_toml
from cnnlab.train import TrainConfig, Trainer, fast_path


def config(data, out, **settings):
    base = dict(model="lenet_bn", data_dir=str(data), out=str(out), batch_size=16, quiet=True,
                val_split=0.25, epochs=1, precision="auto")  # fmt: skip
    return TrainConfig(**{**base, **settings})


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test its own memory of choices: another test's run must not answer for it."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def always_measure(monkeypatch):
    """The fake data's few steps would be too short a run to measure, or to time more than
    the warm-up steps: here measuring may take all of it."""
    monkeypatch.setattr(fast_path, "worth_measuring", lambda options, steps: True)
    monkeypatch.setattr(fast_path, "SHARE", 100.0)


def train(data, run, **settings) -> tuple[Trainer, list[str]]:
    lines = []
    trainer = Trainer(config(data, run, **settings), echo=lines.append)
    trainer.fit()
    return trainer, lines


def test_the_step_is_measured_recorded_and_then_remembered(fake_data, tmp_path, always_measure):
    trainer, lines = train(fake_data, tmp_path / "first")
    assert lines[0].startswith("fastest step: ") and "fp32/contiguous" in lines[0]
    assert "bf16/channels_last" in lines[0]
    saved = load_toml(tmp_path / "first" / "config.toml")
    chosen = (saved["precision"], saved["memory_format"])
    assert chosen == (trainer.config.precision, trainer.config.memory_format)
    # the same model, input and batch again: no measuring, the same choice, still on the timeline
    again, lines = train(fake_data, tmp_path / "second", seed=5, lr=0.01)
    assert lines[0] == f"fastest step: {'/'.join(chosen)} (measured before on this machine)"
    assert (again.config.precision, again.config.memory_format) == chosen
    timeline = json.loads((tmp_path / "second" / "timeline.json").read_text())
    assert timeline["data_loaded"] <= timeline["step_chosen"] <= timeline["training_started"]
    # another batch size is another decision
    _, lines = train(fake_data, tmp_path / "third", batch_size=8)
    assert lines[0].startswith("fastest step: ") and "per step" in lines[0]


def test_a_damaged_memory_is_measured_again(fake_data, tmp_path, always_measure, own_cache):
    train(fake_data, tmp_path / "first")
    (memory,) = (own_cache / "step-choice").glob("lenet_bn-*.json")
    memory.write_text('{"precision": "fp64", "memory_format": "contiguous"')
    _, lines = train(fake_data, tmp_path / "second")
    assert "per step" in lines[0]
    assert json.loads(memory.read_text())["precision"] in ("fp32", "bf16")


def test_a_choice_from_warm_up_steps_alone_is_not_remembered(fake_data, tmp_path, own_cache,
                                                             monkeypatch):  # fmt: skip
    monkeypatch.setattr(fast_path, "worth_measuring", lambda options, steps: True)
    _, lines = train(fake_data, tmp_path / "run")  # 6 steps: no room for a timed round
    assert lines[0].startswith("fastest step: ")
    assert not list((own_cache / "step-choice").glob("*.json"))


def test_a_run_too_short_to_pay_for_measuring_is_not_measured(fake_data, tmp_path):
    trainer, lines = train(fake_data, tmp_path / "run")  # 6 steps: 8 would be needed at 5%
    assert lines[0] == "step: fp32/contiguous (not measured: the run is too short)"
    assert (trainer.config.precision, trainer.config.memory_format) == ("fp32", "contiguous")
    assert fast_path.worth_measuring([1, 2, 3, 4], 160)
    assert not fast_path.worth_measuring([1, 2, 3, 4], 159)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("planned_steps", [200, 2_000, 200_000])
def test_measuring_costs_at_most_five_percent_of_the_planned_training(monkeypatch, planned_steps):
    """Fake candidates with known step times on a fake clock: the fastest wins, and what the
    race costs (warm-up included) stays within 5% of planned_steps at the winner's speed."""
    clock = Clock()
    step_times = {("fp32", "contiguous"): 0.10, ("bf16", "contiguous"): 0.12,
                  ("fp32", "channels_last"): 0.09, ("bf16", "channels_last"): 0.06}  # fmt: skip

    class FakeTrial:
        def __init__(self, model, images, labels, criterion, device, precision, memory_format):
            self.seconds = step_times[(precision, memory_format)]

        def step_seconds(self):
            clock.now += self.seconds
            return self.seconds

    monkeypatch.setattr(fast_path, "Trial", FakeTrial)
    monkeypatch.setattr(fast_path.time, "perf_counter", clock)
    options = list(step_times)
    precision, memory_format, timings, timed = fast_path.choose(
        None, None, None, None, "cpu", options, planned_steps
    )
    assert timed == (planned_steps > 200)  # 200 steps leave room for the warm-up round only
    assert (precision, memory_format) == ("bf16", "channels_last")
    assert clock.now <= 0.05 * planned_steps * 0.06 + 1e-9
    assert timings[("bf16/channels_last")] == 0.06
    if planned_steps == 200_000:  # room for every round, but after the first only the fastest
        assert clock.now == pytest.approx(2 * sum(step_times.values()))  # is left: it wins
