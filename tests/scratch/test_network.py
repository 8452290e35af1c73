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
