"""The pooling topic: max pooling and translation."""

from __future__ import annotations

from cnnlab.explain import Context, run_topic


def test_pooling_keeps_detections_within_the_window(run_quick):
    report = run_quick("pooling")
    numbers = report["numbers"]
    for pool in (2, 3, 4):
        peaks = numbers["aligned_peaks"][f"p={pool}"]
        assert peaks["pooled"][:pool] == [0.0] * pool  # shifts 0..p-1: nothing changes
        assert peaks["pooled"][pool] > 0.5  # a shift by p leaves the window
        assert min(peaks["conv"][1:]) > 0.5  # unpooled detections move at every shift
    random = numbers["random_inputs"]
    conv = random["conv"]
    assert conv[0] == 0.0 and conv[1] > 0.5
    assert random["conv+maxpool2"][1] < conv[1]
    assert all(random["conv+maxpool4"][s] < conv[s] for s in (1, 2, 3))
    assert random["conv+maxpool4"][1] < random["conv+maxpool2"][1]


def test_pooling_is_deterministic(tmp_path):
    first = run_topic("pooling", Context(quick=True, seed=5))["numbers"]
    assert run_topic("pooling", Context(quick=True, seed=5))["numbers"] == first
