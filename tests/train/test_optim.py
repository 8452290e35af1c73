import itertools
import json
import math

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_schedule,
    l1_penalty,
    schedule_multipliers,
)


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


# --- optimisers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_step_on_lenet(name):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, in_channels=1)
    optimizer = build_optimizer(model, name, lr=0.01, weight_decay=1e-4)
    before = [param.detach().clone() for param in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_optimizer_classes_and_settings():
    model = tiny_model()
    sgd = build_optimizer(model, "sgd", lr=0.1, momentum=0.9)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0 and not sgd.defaults["nesterov"]
    polyak = build_optimizer(model, "momentum", lr=0.1, momentum=0.8)
    assert polyak.defaults["momentum"] == 0.8 and not polyak.defaults["nesterov"]
    nesterov = build_optimizer(model, "nesterov", lr=0.1, momentum=0.8)
    assert nesterov.defaults["momentum"] == 0.8 and nesterov.defaults["nesterov"]
    assert type(build_optimizer(model, "adam", lr=0.1)) is torch.optim.Adam
    adamw = build_optimizer(model, "adamw", lr=0.1)
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["weight_decay"] == 0.0  # ours, not torch's AdamW default of 0.01


def test_momentum_accumulates_velocity():
    weight = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(nn.ParameterList([weight]), "momentum", lr=1.0, momentum=0.5)
    for _ in range(2):
        weight.grad = torch.ones(1)
        optimizer.step()
    # v1 = 1, v2 = 0.5 * 1 + 1 = 1.5: w = -(1 + 1.5)
    assert weight.item() == pytest.approx(-2.5)


def test_frozen_parameters_are_not_optimised():
    model = tiny_model()
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, "sgd", lr=0.1)
    optimised = {id(param) for group in optimizer.param_groups for param in group["params"]}
    assert id(model[0].weight) not in optimised and id(model[0].bias) not in optimised
    assert id(model[3].weight) in optimised
    model.requires_grad_(False)
    with pytest.raises(CnnlabError, match="frozen"):
        build_optimizer(model, "sgd", lr=0.1)


def test_bad_optimizer_options_are_refused():
    model = tiny_model()
    with pytest.raises(CnnlabError, match="sgd, momentum, nesterov, adam, adamw"):
        build_optimizer(model, "rmsprop", lr=0.1)
    for lr in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(CnnlabError, match="lr"):
            build_optimizer(model, "sgd", lr=lr)
    with pytest.raises(CnnlabError, match="weight decay"):
        build_optimizer(model, "adam", lr=0.1, weight_decay=-0.1)
    for momentum in (0.0, 1.0, -0.5):
        with pytest.raises(CnnlabError, match="momentum"):
            build_optimizer(model, "nesterov", lr=0.1, momentum=momentum)


def decayed_once(name: str, gradient: float) -> tuple[float, float]:
    """Values after one step from w = 1 with weight decay 0.1 and lr 0.01: (with, without)."""
    results = []
    for weight_decay in (0.1, 0.0):
        weight = nn.Parameter(torch.ones(1))
        optimizer = build_optimizer(nn.ParameterList([weight]), name, 0.01, 0.9, weight_decay)
        weight.grad = torch.full((1,), gradient)
        optimizer.step()
        results.append(weight.item())
    return results[0], results[1]


def test_adamw_decay_is_decoupled_from_the_gradient():
    # Zero gradient: Adam's moments stay 0, so AdamW moves w only by its decay lr * wd * w.
    decayed, plain = decayed_once("adamw", gradient=0.0)
    assert plain == 1.0
    assert decayed == pytest.approx(1.0 - 0.01 * 0.1 * 1.0, abs=1e-7)


def test_adam_l2_decay_goes_through_the_adaptive_denominator():
    # Zero gradient: L2 turns it into wd * w = 0.1, and Adam's first step normalises any
    # gradient to a move of about lr, far more than the decoupled lr * wd * w = 0.001.
    decayed, plain = decayed_once("adam", gradient=0.0)
    assert plain == 1.0
    assert decayed == pytest.approx(1.0 - 0.01, abs=1e-6)
    # With a large gradient the L2 term is scaled down with it: the decay barely shows.
    decayed, plain = decayed_once("adam", gradient=100.0)
    assert abs(decayed - plain) < 1e-5


def test_sgd_weight_decay_is_l2_in_the_gradient():
    decayed, plain = decayed_once("sgd", gradient=1.0)
    assert plain == pytest.approx(1.0 - 0.01 * 1.0)
    assert decayed == pytest.approx(1.0 - 0.01 * (1.0 + 0.1 * 1.0))


# --- L1 penalty ---------------------------------------------------------------------------------


def test_l1_penalty_value_and_gradient():
    model = create_model("lenet", num_classes=10, in_channels=1)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    penalty = l1_penalty(model, 0.01)
    expected = 0.01 * sum(weight.detach().abs().sum() for weight in weights)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()
    for weight in weights:
        torch.testing.assert_close(weight.grad, 0.01 * weight.detach().sign())
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(bias.grad is None for bias in biases)


def test_l1_penalty_skips_norm_layers_biases_and_frozen_weights():
    model = tiny_model()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)
    # Linear weights 4*3 + 3*2 = 18; biases and BatchNorm scale/shift are left out.
    assert l1_penalty(model, 1.0).item() == 18.0
    model[0].requires_grad_(False)
    assert l1_penalty(model, 1.0).item() == 6.0


def test_zero_l1_penalty_is_a_zero_tensor_that_reads_no_weight():
    model = tiny_model()
    penalty = l1_penalty(model, 0.0)
    assert penalty.shape == () and penalty.item() == 0.0
    assert penalty.device == model[0].weight.device
    assert not penalty.requires_grad
    with pytest.raises(CnnlabError, match="L1"):
        l1_penalty(model, -1.0)


# --- schedules ----------------------------------------------------------------------------------


def test_constant_and_warmup():
    assert schedule_multipliers("constant", 2, 3) == [1.0] * 6
    warm = schedule_multipliers("constant", 2, 4, warmup_epochs=1)
    assert warm == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0])
    # A fraction of an epoch that rounds to no step is still one warmup step.
    assert schedule_multipliers("constant", 2, 4, warmup_epochs=0.1)[:2] == [0.5, 1.0]
    assert schedule_multipliers("cosine", 2, 4, warmup_epochs=0.25)[:2] == [0.5, 1.0]


def test_step_schedule_drops_at_the_milestones():
    values = schedule_multipliers("step", 4, 5)  # 20 steps, milestones at 10 and 15
    assert values[:10] == [1.0] * 10
    assert values[10:15] == pytest.approx([0.1] * 5)
    assert values[15:] == pytest.approx([0.01] * 5)
    custom = schedule_multipliers("step", 1, 10, step_milestones=(0.3,), step_gamma=0.5)
    assert custom == [1.0] * 3 + [0.5] * 7
    warm = schedule_multipliers("step", 4, 5, warmup_epochs=1)
    assert warm[0] == pytest.approx(1 / 6) and warm[12] == pytest.approx(0.1)


def test_cosine_runs_from_one_towards_zero_after_the_warmup():
    values = schedule_multipliers("cosine", 2, 5)  # 10 steps
    assert values[0] == 1.0
    assert values[5] == pytest.approx(0.5)
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a > b for a, b in itertools.pairwise(values))
    warm = schedule_multipliers("cosine", 3, 2, warmup_epochs=1)  # 2 warmup + 4 cosine steps
    half_cosine = [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert warm == pytest.approx([1 / 3, 2 / 3, *half_cosine])


def test_onecycle_rises_then_anneals():
    values = schedule_multipliers("onecycle", 10, 10)  # 100 steps, peak at step 30
    assert values[0] == pytest.approx(1 / 25)
    assert values[15] == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)
    assert max(values) == values[30] == 1.0
    assert all(a < b for a, b in itertools.pairwise(values[:31]))
    assert all(a > b for a, b in itertools.pairwise(values[30:]))
    last = 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 69 / 70))
    assert values[-1] == pytest.approx(last)
    warm = schedule_multipliers("onecycle", 10, 10, warmup_epochs=2)
    assert warm.index(1.0) == 20
    assert schedule_multipliers("onecycle", 1, 1) == [1.0]
    optimizer = build_optimizer(tiny_model(), "sgd", lr=0.5)
    scheduler = build_schedule(optimizer, "onecycle", 2, 3)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-4)  # after the last step


def test_scheduler_applies_the_multipliers_each_step_and_past_the_end():
    model = tiny_model()
    optimizer = build_optimizer(model, "momentum", lr=0.5)
    scheduler = build_schedule(optimizer, "cosine", 3, 4, warmup_epochs=0.5)
    expected = schedule_multipliers("cosine", 3, 4, warmup_epochs=0.5)
    seen = []
    for _ in expected:
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5 * m for m in expected])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    optimizer.step()
    scheduler.step()  # one more than planned: stays at the end value
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_scheduler_state_is_json_and_resumes_identically(name):
    def run(steps, optimizer, scheduler):
        lrs = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    options = {"epochs": 4, "steps_per_epoch": 5, "warmup_epochs": 1.0}
    optimizer = build_optimizer(tiny_model(), "adamw", lr=0.3)
    scheduler = build_schedule(optimizer, name, **options)
    run(7, optimizer, scheduler)
    saved = json.loads(json.dumps(scheduler.state_dict()))
    saved_optimizer = optimizer.state_dict()
    uninterrupted = run(10, optimizer, scheduler)

    fresh = build_optimizer(tiny_model(), "adamw", lr=0.3)
    resumed = build_schedule(fresh, name, **options)
    fresh.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved)
    assert run(10, fresh, resumed) == uninterrupted


def test_bad_schedule_options_are_refused():
    with pytest.raises(CnnlabError, match="constant, step, cosine, onecycle"):
        schedule_multipliers("linear", 2, 3)
    with pytest.raises(CnnlabError, match="epochs"):
        schedule_multipliers("cosine", 0, 3)
    with pytest.raises(CnnlabError, match="steps per epoch"):
        schedule_multipliers("cosine", 2, 0)
    with pytest.raises(CnnlabError, match="warmup"):
        schedule_multipliers("cosine", 2, 3, warmup_epochs=2)
    with pytest.raises(CnnlabError, match="warmup"):
        schedule_multipliers("cosine", 2, 3, warmup_epochs=-1)
    with pytest.raises(CnnlabError, match="milestones"):
        schedule_multipliers("step", 2, 3, step_milestones=(0.5, 1.5))
    with pytest.raises(CnnlabError, match="gamma"):
        schedule_multipliers("step", 2, 3, step_gamma=0.0)
    optimizer = build_optimizer(tiny_model(), "sgd", lr=0.1)
    with pytest.raises(CnnlabError, match="schedule"):
        build_schedule(optimizer, "exp", 2, 3)
