import json
import math

import pytest
import torch

from cnnlab.errors import CnnlabError, InputShapeError
from cnnlab.train.metrics import RunningMetrics, confusion_matrix, per_class_accuracy, top_k

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
# argmax: 0, 1, 2, 0


def test_running_metrics_by_hand():
    metrics = RunningMetrics()
    assert metrics.update(torch.tensor(2.0), LOGITS[:2], torch.tensor([0, 2])) is None
    metrics.update(torch.tensor(1.0), LOGITS[2:], torch.tensor([2, 0]))
    result = metrics.result()
    # Losses 2 + 1 over 4 samples; correct: samples 0, 2 and 3.
    assert result == {"loss": 0.75, "acc": 0.75, "count": 4}
    assert isinstance(result["count"], int) and isinstance(result["loss"], float)


def test_running_metrics_keep_tensors_on_the_logits_device():
    metrics = RunningMetrics()
    metrics.update(torch.tensor(1.5), LOGITS, torch.tensor([0, 1, 2, 0]))
    state = [value for value in vars(metrics).values() if isinstance(value, torch.Tensor)]
    assert len(state) == 2
    assert all(value.device == LOGITS.device for value in state)
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:  # labels and loss on the CPU are moved to the logits' device
        metrics = RunningMetrics()
        metrics.update(torch.tensor(1.5), LOGITS.to(device), torch.tensor([0, 1, 2, 0]))
        tensors = [value for value in vars(metrics).values() if isinstance(value, torch.Tensor)]
        assert all(value.device.type == device for value in tensors)


def test_running_metrics_detach_the_loss_and_reset():
    metrics = RunningMetrics()
    loss = torch.tensor(3.0, requires_grad=True) * 2
    metrics.update(loss, LOGITS.requires_grad_(False), torch.tensor([1, 1, 1, 1]))
    assert metrics.result() == {"loss": 1.5, "acc": 0.25, "count": 4}
    metrics.reset()
    empty = metrics.result()
    assert empty["count"] == 0 and math.isnan(empty["loss"]) and math.isnan(empty["acc"])
    metrics.update(torch.tensor(0.5, dtype=torch.bfloat16), LOGITS[:1], torch.tensor([0]))
    assert metrics.result() == {"loss": 0.5, "acc": 1.0, "count": 1}


def test_running_metrics_refuse_mismatched_shapes():
    with pytest.raises(InputShapeError, match="logits"):
        RunningMetrics().update(torch.tensor(1.0), LOGITS, torch.tensor([0, 1]))
    with pytest.raises(InputShapeError, match="logits"):
        RunningMetrics().update(torch.tensor(1.0), LOGITS[0], torch.tensor(0))


def test_confusion_matrix_by_hand():
    predictions = torch.tensor([0, 1, 2, 0, 2, 2])
    labels = torch.tensor([0, 2, 2, 0, 1, 1])
    expected = torch.tensor([[2, 0, 0], [0, 0, 2], [0, 1, 1]])  # not symmetric
    confusion = confusion_matrix(predictions, labels, 3)
    assert confusion.dtype == torch.int64
    assert torch.equal(confusion, expected)
    assert torch.equal(confusion_matrix(predictions, labels, 4)[:3, :3], expected)
    assert confusion_matrix(predictions, labels, 4)[3].sum() == 0


def test_confusion_matrix_refuses_bad_input():
    with pytest.raises(CnnlabError, match=r"labels must be class indices in 0\.\.1.*0 to 2"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), 2)
    with pytest.raises(CnnlabError, match="predictions"):
        confusion_matrix(torch.tensor([-1, 1]), torch.tensor([0, 1]), 2)
    with pytest.raises(InputShapeError, match="same length"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)
    with pytest.raises(CnnlabError, match="number of classes"):
        confusion_matrix(torch.tensor([0]), torch.tensor([0]), 0)


def test_per_class_accuracy_with_a_class_without_samples():
    confusion = torch.tensor([[2, 0, 0], [0, 0, 1], [0, 1, 3]])
    accuracy = per_class_accuracy(confusion)
    assert accuracy.dtype == torch.float64
    torch.testing.assert_close(accuracy, torch.tensor([1.0, 0.0, 0.75], dtype=torch.float64))
    empty_class = per_class_accuracy(torch.tensor([[1, 1], [0, 0]]))
    assert empty_class[0] == 0.5 and math.isnan(empty_class[1])
    with pytest.raises(InputShapeError, match="square"):
        per_class_accuracy(torch.zeros(2, 3))


def test_top_k_orders_and_clamps_k():
    probabilities = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    values, indices = top_k(probabilities, 2)
    torch.testing.assert_close(values, torch.tensor([[0.6, 0.3], [0.5, 0.3]]))
    assert indices.tolist() == [[1, 2], [0, 2]]
    values, indices = top_k(probabilities[0], 10)
    assert indices.tolist() == [1, 2, 0] and values.shape == (3,)
    with pytest.raises(CnnlabError, match="k"):
        top_k(probabilities, 0)


def test_state_round_trip_continues_the_sums():
    first = RunningMetrics()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    first.update(torch.tensor(1.5), logits[:2], labels[:2])
    resumed = RunningMetrics()
    resumed.load_state(json.loads(json.dumps(first.state())))
    first.update(torch.tensor(0.5), logits[2:], labels[2:])
    resumed.update(torch.tensor(0.5), logits[2:], labels[2:])
    assert resumed.result() == first.result() == {"loss": 2.0 / 3, "acc": 2 / 3, "count": 3}
