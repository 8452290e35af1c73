"""Tests of cnnlab.scratch.network: the NumPy LeNets against cnnlab's PyTorch LeNets (eval and
train mode, outputs and gradients), a finite-difference check of Sequential.backward, and the
errors of load_torch_state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.scratch import network as N
from cnnlab.scratch.gradcheck import numerical_gradient, relative_error


def _torch_lenet(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cnnlab.create_model(name, num_classes=10, in_channels=1).double()
    # Non-trivial batch-norm affine parameters and running statistics.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(3):
            model(torch.randn(6, 1, 28, 28, dtype=torch.float64) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("name, batch_norm", [("lenet", False), ("lenet_bn", True)])
def test_eval_logits_match_torch(name, batch_norm):
    tmodel = _torch_lenet(name)
    smodel = N.scratch_lenet(10, 1, batch_norm=batch_norm, rng=np.random.default_rng(0))
    N.load_torch_state(smodel, tmodel.state_dict()).eval()
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28))
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(smodel.forward(x), expected, rtol=0, atol=1e-10)


def test_train_mode_forward_and_backward_match_autograd():
    tmodel = _torch_lenet("lenet_bn")
    smodel = N.load_torch_state(N.scratch_lenet(batch_norm=True), tmodel.state_dict())
    tmodel.train()
    smodel.train()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 1, 28, 28))
    dout = rng.standard_normal((5, 10))

    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = tmodel(xt)
    out_t.backward(torch.from_numpy(dout))
    out_s = smodel.forward(x)
    dx = smodel.backward(dout)

    np.testing.assert_allclose(out_s, out_t.detach().numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    torch_params = dict(tmodel.named_parameters())
    grads = dict(zip(smodel.state_names(), smodel.gradients(), strict=True))
    assert set(grads) == set(torch_params)
    for key in ["features.0.weight", "features.1.weight", "features.5.bias", "hidden.0.weight"]:
        expected = torch_params[key].grad.numpy()
        np.testing.assert_allclose(grads[key], expected, rtol=1e-8, atol=1e-10, err_msg=key)
    for key in ["hidden.4.bias", "fc.weight", "fc.bias"]:
        np.testing.assert_allclose(grads[key], torch_params[key].grad.numpy(), atol=1e-10)
    # The running statistics moved the same way.
    bn = smodel.layers[smodel.names.index("hidden.1")]
    expected_mean = tmodel.state_dict()["hidden.1.running_mean"].numpy()
    np.testing.assert_allclose(bn.buffers["running_mean"], expected_mean, atol=1e-12)


def test_sequential_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    net = N.Sequential(
        N.Conv2d(2, 3, 3, padding=1, rng=rng),
        N.ReLU(),
        N.MaxPool2d(2),
        N.Flatten(),
        N.Linear(3 * 3 * 3, 4, rng),
    )
    for p in net.parameters():
        p += rng.standard_normal(p.shape) * 0.1  # non-zero biases too
    x = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) / 20.0 - 1.0  # distinct entries
    dout = rng.standard_normal((2, 4))
    net.forward(x)
    dx = net.backward(dout)
    assert relative_error(dx, numerical_gradient(lambda: net.forward(x), x, dout)) < 1e-6
    for name, p, g in zip(net.state_names(), net.parameters(), net.gradients(), strict=True):
        numeric = numerical_gradient(lambda: net.forward(x), p, dout)
        assert relative_error(g, numeric) < 1e-6, name


def test_train_eval_flags_and_modern_variant():
    net = N.scratch_lenet_modern(rng=np.random.default_rng(4))
    assert all(layer.train for layer in net.layers)
    net.eval()
    assert not any(layer.train for layer in net.layers)
    assert any(isinstance(layer, N.MaxPool2d) for layer in net.layers)
    assert any(isinstance(layer, N.ReLU) for layer in net.layers)
    assert net.forward(np.zeros((2, 1, 28, 28))).shape == (2, 10)
    # Xavier-uniform weights within the bound, zero biases.
    conv = net.layers[0]
    assert np.abs(conv.params["weight"]).max() <= np.sqrt(6 / (25 + 150))
    assert not conv.params["bias"].any()


def test_load_torch_state_rejects_bad_state():
    state = cnnlab.create_model("lenet_bn", num_classes=10, in_channels=1).state_dict()
    model = N.scratch_lenet(batch_norm=True)
    wrong = dict(state, **{"hidden.3.weight": torch.zeros(84, 121)})
    with pytest.raises(ValueError, match=r"hidden\.3\.weight"):
        N.load_torch_state(model, wrong)
    missing = {k: v for k, v in state.items() if k != "features.5.running_var"}
    with pytest.raises(ValueError, match=r"features\.5\.running_var"):
        N.load_torch_state(model, missing)
    # A plain lenet state lacks the batch-norm entries the scratch lenet_bn needs.
    plain = cnnlab.create_model("lenet", num_classes=10, in_channels=1).state_dict()
    with pytest.raises(ValueError, match=r"features\.1\."):
        N.load_torch_state(model, plain)


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        ("Adam", {"lr": 1e-3, "weight_decay": 1e-3}),
        ("AdamW", {"lr": 1e-3, "weight_decay": 0.05}),
    ],
)
def test_training_steps_through_lenet_match_torch(optimizer, kwargs):
    """Three training steps of the whole LeNet-BN (forward, softmax cross-entropy, backward,
    optimiser step) in NumPy and in PyTorch from the same weights: the same weights after each
    step, and the same running statistics, to 1e-9 in float64."""
    from cnnlab.scratch import optim
    from cnnlab.scratch.losses import softmax_cross_entropy

    tmodel = _torch_lenet("lenet_bn").train()
    with torch.no_grad():
        # Biases in front of BatchNorm get a zero gradient: rounding noise is all Adam would see
        # of them if weight decay had nothing to act on, and it would scale that noise up.
        for name, param in tmodel.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    smodel = N.load_torch_state(N.scratch_lenet(batch_norm=True), tmodel.state_dict()).train()
    names = smodel.state_names()
    tparams = dict(tmodel.named_parameters())
    topt = getattr(torch.optim, optimizer)([tparams[n] for n in names], **kwargs)
    sopt = getattr(optim, optimizer)(smodel.parameters(), **kwargs)
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, y = rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        sloss, dlogits = softmax_cross_entropy(smodel.forward(x), y)
        smodel.backward(dlogits, input_grad=False)
        sopt.step(smodel.gradients())
        assert sloss == pytest.approx(tloss.item(), abs=1e-10)
        for name, value in zip(names, smodel.parameters(), strict=True):
            expected = tparams[name].detach().numpy()
            np.testing.assert_allclose(value, expected, rtol=0, atol=1e-9, err_msg=name)
    state = tmodel.state_dict()
    for prefix, layer in zip(smodel.names, smodel.layers, strict=True):
        for key, value in layer.buffers.items():
            np.testing.assert_allclose(value, state[f"{prefix}.{key}"].numpy(), atol=1e-12)


def test_float32_network_and_skipped_input_gradient():
    model = N.scratch_lenet_modern(rng=np.random.default_rng(0), dtype=np.float32)
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float32)}
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    logits = model.forward(x)
    assert logits.dtype == np.float32
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == x.shape and dx.dtype == np.float32
    grads = [g.copy() for g in model.gradients()]
    model.forward(x)
    assert model.backward(np.ones_like(logits), input_grad=False) is None
    for before, after in zip(grads, model.gradients(), strict=True):
        np.testing.assert_array_equal(before, after)  # the parameters' gradients are unchanged
    model.astype(np.float64)
    assert model.forward(x.astype(np.float64)).dtype == np.float64
