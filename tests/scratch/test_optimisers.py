"""The NumPy optimisers and gradient clipping match torch.optim / clip_grad_norm_ step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.scratch.optim import SGD, Adam, AdamW, clip_grad_norm

SHAPES = [(3, 4), (4,), (2, 3, 2, 2)]

CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.1}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.05}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.05}),
    (Adam, torch.optim.Adam, {"lr": 1e-2}),
    (Adam, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 1e-2}),
    (AdamW, torch.optim.AdamW, {"lr": 1e-2, "betas": (0.85, 0.995), "weight_decay": 0.3}),
]


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CASES)
def test_optimiser_matches_torch(ours, theirs, kwargs):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt, topt = ours(params, **kwargs), theirs(tparams, **kwargs)
    for _ in range(5):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g.copy())
        opt.step(grads)
        topt.step()
        for p, tp in zip(params, tparams, strict=True):
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-14)


def test_step_updates_in_place_and_checks_shapes():
    p = np.ones(3)
    ref = p
    SGD([p], lr=1.0).step([np.ones(3)])
    assert ref is p and np.allclose(p, 0.0)
    with pytest.raises(ValueError):
        SGD([p], lr=1.0).step([np.ones(4)])


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s) * 3 for s in SHAPES]
    tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for tp, g in zip(tparams, grads, strict=True):
        tp.grad = torch.tensor(g.copy())
    total = clip_grad_norm(grads, max_norm=1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm=1.0)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for g, tp in zip(grads, tparams, strict=True):
        np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-10)
    assert np.sqrt(sum(np.sum(g * g) for g in grads)) <= 1.0


def test_clip_grad_norm_leaves_small_grads_untouched():
    grads = [np.full((2, 2), 0.01), np.array([0.02])]
    before = [g.copy() for g in grads]
    total = clip_grad_norm(grads, max_norm=5.0)
    assert total == pytest.approx(np.sqrt(4 * 1e-4 + 4e-4))
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g, b)
