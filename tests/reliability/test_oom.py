"""Running out of memory says so: the batch size that failed and what to try.

Out-of-memory errors (torch's device OutOfMemoryError, Python's MemoryError, the CPU
allocator's RuntimeError) raised while training or evaluating become one `OutOfMemory` line
naming the stage, the batch size, the input size and precision, and what to try (a smaller
--batch-size, --precision bf16, a smaller --resize); other errors pass through unchanged. A
real `cnnlab train` under an address-space limit runs out of memory for real.
"""

from __future__ import annotations

import sys

import pytest
import torch

from cnnlab.errors import CnnlabError, OutOfMemory
from cnnlab.train import TrainConfig, Trainer, epoch_end
from training_processes import run_cnnlab

ERRORS = {
    "device": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "python": lambda: MemoryError(),
    "cpu-allocator": lambda: RuntimeError(
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 21474836480 bytes. "
        "Error code 12 (Cannot allocate memory)"
    ),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(data, out, **overrides) -> TrainConfig:
    """One epoch of lenet at 28x28 in batches of 16, contiguous fp32, on the CPU."""
    values = dict(model="lenet", epochs=1, batch_size=16, device="cpu", quiet=True)
    values.update(memory_format="contiguous", data_dir=str(data), out=str(out))
    return TrainConfig(**{**values, **overrides})


def trainer_failing(data, out, error, when: str) -> Trainer:
    """A trainer of lenet at 28x28 in batches of 16 whose model raises `error()` in forward
    once in training mode (`when="training"`) or in evaluation mode (`when="evaluation"`)."""
    trainer = Trainer(small_config(data, out, lr=0.1, precise_bn=0), echo=lambda line: None)
    setup = trainer.setup

    def patched(*args, **kwargs):
        setup(*args, **kwargs)
        forward = trainer.model.forward

        def failing(images):
            if trainer.model.training == (when == "training"):
                raise error()
            return forward(images)

        trainer.model.forward = failing

    trainer.setup = patched
    return trainer


@pytest.mark.parametrize("kind", ERRORS)
def test_out_of_memory_in_a_training_step_names_batch_and_remedies(fake_data, tmp_path, kind):
    trainer = trainer_failing(fake_data, tmp_path / "run", ERRORS[kind], "training")
    with pytest.raises(OutOfMemory) as error:
        trainer.fit()
    message = str(error.value)
    assert message.startswith("out of cpu memory while training (epoch 1) on batches of 16 ")
    assert "images of 28x28 (fp32)" in message
    assert "a smaller --batch-size (e.g. 8)" in message
    assert "--precision bf16" in message
    assert "a smaller --resize (lenet takes down to 12)" in message
    assert "\n" not in message and "Traceback" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize("kind", ERRORS)
def test_out_of_memory_in_evaluation_names_its_batch(fake_data, tmp_path, kind):
    """Evaluation batches are twice the training batch: the message gives the one that failed."""
    trainer = trainer_failing(fake_data, tmp_path / "run", ERRORS[kind], "evaluation")
    with pytest.raises(OutOfMemory) as error:
        trainer.fit()
    message = str(error.value)
    assert "while evaluating on fashion-mnist/test on batches of 32 images" in message
    assert "a smaller --batch-size (e.g. 8)" in message


def test_other_errors_are_not_called_out_of_memory(fake_data, tmp_path):
    trainer = trainer_failing(
        fake_data, tmp_path / "run", lambda: RuntimeError("mat1 and mat2 shapes differ"), "training"
    )
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes differ") as error:
        trainer.fit()
    assert not isinstance(error.value, CnnlabError)


def test_remedies_already_taken_are_not_suggested(fake_data, tmp_path):
    """At the model's smallest input and in bf16, only the batch size is left to try."""
    trainer = trainer_failing(fake_data, tmp_path / "run", ERRORS["device"], "training")
    trainer.config = TrainConfig(**{**vars(trainer.config), "resize": 12, "precision": "bf16"})
    with pytest.raises(OutOfMemory) as error:
        trainer.fit()
    message = str(error.value)
    assert message.endswith("(bf16); try a smaller --batch-size (e.g. 8)")


# `cnnlab train` with its address space limited to what it has after starting plus 1.5 GB: a
# lenet_bn step at 2048x2048 in batches of 16 needs more (its first convolution's output alone
# is 1.6 GB), so torch's CPU allocator fails for real.
LIMITED = """
import resource, sys
from cnnlab.cli import main

size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 1_500_000_000, size + 1_500_000_000))
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.parametrize(
    ("fast_path", "doing"),
    [
        (("fp32", "contiguous"), "training (epoch 1)"),
        (("auto", "auto"), "timing training steps"),  # the fast path's trial steps
    ],
    ids=["training-step", "fast-path-timing"],
)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_real_process_out_of_cpu_memory_exits_with_one_line(fake_data, tmp_path, fast_path, doing):
    run = tmp_path / "run"
    precision, memory_format = fast_path
    result = run_cnnlab(
        *("--model", "lenet_bn", "--resize", "2048"),
        # enough planned epochs that the fast path's timing is worth its cost (5% of them)
        *("--batch-size", "16", "--epochs", "1" if precision == "fp32" else "40"),
        *("--device", "cpu", "--threads", "1"),
        *("--precision", precision, "--memory-format", memory_format, "--quiet"),
        *("--data-dir", str(fake_data), "--out", str(run)),
        command=[sys.executable, "-c", LIMITED],
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    tips = ", --precision bf16 or" if precision == "fp32" else " or"
    shown = "fp32" if precision == "fp32" else "auto precision"
    assert result.stderr.startswith(
        f"cnnlab train: error: out of cpu memory while {doing} on batches of 16 images of "
        f"2048x2048 ({shown}); try a smaller --batch-size (e.g. 8){tips} a smaller --resize "
        "(lenet_bn takes down to 12)"
    )
    if precision == "auto":  # chosen before the run folder is made
        assert not run.exists()
    else:
        assert list((run / "checkpoints").iterdir()) == []


def test_out_of_memory_recomputing_batchnorm_statistics(fake_data, tmp_path, monkeypatch):
    """Precise BatchNorm runs training batches through the model after each epoch."""

    def exhausted(model, batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(epoch_end, "recompute_batchnorm", exhausted)
    config = small_config(fake_data, tmp_path / "run", model="lenet_bn", precise_bn=3)
    with pytest.raises(OutOfMemory) as error:
        Trainer(config, echo=lambda line: None).fit()
    assert str(error.value).startswith(
        "out of cpu memory while recomputing BatchNorm statistics on batches of 16 images"
    )
