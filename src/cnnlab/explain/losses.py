"""Explain topics about what a network's output is trained against: loss functions
(saturation, outliers, margins) and multi-class vs multi-label outputs (softmax against a
sigmoid per label).

Everything runs on cnnlab's NumPy engine (`cnnlab.scratch`): its losses, its layers assembled
into small `Sequential` models, and its optimisers, on small synthetic problems whose right
answer is known, so each topic takes seconds.
"""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.scratch.layers import sigmoid_backward, sigmoid_forward
from cnnlab.scratch.losses import (
    binary_cross_entropy_with_logits,
    l1,
    mse,
    multiclass_hinge,
    smooth_l1,
    softmax_cross_entropy,
)
from cnnlab.scratch.network import Linear, Sequential, Sigmoid
from cnnlab.scratch.optim import SGD, Adam


def _train(model: Sequential, x: np.ndarray, loss_fn, optimizer, steps: int) -> list[float]:
    """Full-batch training: loss_fn(output) -> (loss, dloss/doutput); the loss at each step."""
    losses = []
    for _ in range(steps):
        loss, dout = loss_fn(model(x))
        model.backward(dout, input_grad=False)
        optimizer.step(model.gradients())
        losses.append(loss)
    return losses


def _linear(fan_in: int, fan_out: int, rng, weight: float, *after) -> Sequential:
    """A Linear layer with every weight set to `weight` (bias 0), then the layers `after`."""
    layer = Linear(fan_in, fan_out, rng)
    layer.params["weight"][...] = weight
    return Sequential(layer, *after)


def _weight(model: Sequential) -> np.ndarray:
    return model.layers[0].params["weight"]


# ----------------------------------------------------------------------------------------------
# 13. Loss functions
# ----------------------------------------------------------------------------------------------


def _saturation(ctx: Context) -> dict:
    """dL/dz of MSE(sigmoid(z), 1) and of cross-entropy for a positive target, and a 1-D
    logistic model trained both ways from a confidently wrong start (weight -6)."""
    zs = np.linspace(-12.0, 4.0, 33)
    probs, cache = sigmoid_forward(zs)
    # Both losses average over the batch; times zs.size gives each point's own gradient.
    mse_grad = sigmoid_backward(mse(probs, np.ones_like(zs))[1], cache) * zs.size
    ce_grad = binary_cross_entropy_with_logits(zs, np.ones_like(zs))[1] * zs.size
    at = int(np.argmin(np.abs(zs + 8)))
    rng = ctx.rng(13)
    labels = rng.integers(0, 2, (200, 1)).astype(float)
    x = (2 * labels - 1) * rng.uniform(1, 3, labels.shape)  # every |x| >= 1: all saturated
    steps = 100 if ctx.quick else 400
    runs = {}
    for name, after, loss_fn in (
        ("mse", [Sigmoid()], lambda p: mse(p, labels)),
        ("ce", [], lambda z: binary_cross_entropy_with_logits(z, labels)),
    ):
        model = _linear(1, 1, rng, -6.0, *after)
        optimizer = SGD(model.parameters(), lr=1.0)
        accuracy = []
        for chunk in (5, steps - 5):
            _train(model, x, loss_fn, optimizer, chunk)
            accuracy.append(float(np.mean((model.layers[0].forward(x) > 0) == (labels > 0.5))))
        runs[name] = {"accuracy_after_5": accuracy[0], "final_accuracy": accuracy[1]}
        runs[name]["final_weight"] = float(_weight(model)[0, 0])
    return {
        "z": zs.tolist(),
        "mse_grad": mse_grad.tolist(),
        "ce_grad": ce_grad.tolist(),
        "mse_grad_at_z_minus_8": float(mse_grad[at]),
        "ce_grad_at_z_minus_8": float(ce_grad[at]),
        "bad_start": {"weight": -6.0, "steps": steps, **runs},
    }


def _outliers(ctx: Context) -> dict:
    """Fit y = 2x + 1 to data with 10% large one-sided outliers with L2, L1 and smooth L1."""
    rng = ctx.rng(14)
    x = rng.uniform(-1, 1, (200, 1))
    y = 2 * x + 1 + 0.1 * rng.normal(size=x.shape)
    y[:20] += rng.uniform(10, 20, (20, 1))
    steps = 1000 if ctx.quick else 4000
    fits = {}
    for name, loss in (("l2", mse), ("l1", l1), ("smooth_l1", smooth_l1)):
        model = _linear(1, 1, rng, 0.0)
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
        # L1's gradient does not shrink near the optimum: a decaying step lets it settle.
        for t in range(steps):
            optimizer.lr = 0.05 * (1 - t / steps)
            _train(model, x, lambda p, loss=loss: loss(p, y), optimizer, 1)
        slope, intercept = float(_weight(model)[0, 0]), float(model.layers[0].params["bias"][0])
        error = float(np.hypot(slope - 2, intercept - 1))
        fits[name] = {"slope": slope, "intercept": intercept, "error": error}
    return {"outlier_fraction": 0.1, "steps": steps, **fits}


def _margins(ctx: Context) -> dict:
    """A linear classifier on three separable blobs, trained with hinge and with cross-entropy."""
    rng = ctx.rng(15)
    labels = np.repeat(np.arange(3), 50)
    centres = np.array([[0.0, 3.0], [2.6, -1.5], [-2.6, -1.5]])
    x = centres[labels] + 0.5 * rng.normal(size=(len(labels), 2))
    rows, steps = np.arange(len(labels)), 300 if ctx.quick else 1000
    out = {"steps": steps}
    for name, loss in (("hinge", multiclass_hinge), ("ce", softmax_cross_entropy)):
        model, norms = _linear(2, 3, rng, 0.0), []
        optimizer = SGD(model.parameters(), lr=0.1)
        losses = _train(model, x, lambda s, loss=loss: loss(s, labels), optimizer, steps // 2)
        norms.append(float(np.linalg.norm(_weight(model))))
        losses += _train(model, x, lambda s, loss=loss: loss(s, labels), optimizer, steps // 2)
        norms.append(float(np.linalg.norm(_weight(model))))
        scores = model(x)
        final_loss, grad = loss(scores, labels)
        rivals = np.where(np.arange(3) == labels[:, None], -np.inf, scores).max(axis=1)
        zero = [i + 1 for i, value in enumerate(losses) if value == 0.0]
        out[name] = {
            "final_loss": final_loss,
            "final_max_abs_grad": float(np.abs(grad).max()),
            "min_margin": float(np.min(scores[rows, labels] - rivals)),
            "weight_norm_half": norms[0],
            "weight_norm_final": norms[1],
            "first_zero_loss_step": zero[0] if zero else None,
        }
    return out


@topic(
    13,
    "losses",
    "Loss functions",
    "Cross-entropy keeps learning where MSE on a sigmoid saturates; L1 and smooth L1 resist "
    "outliers that drag L2; the hinge loss stops at the margin while cross-entropy pushes on.",
    """Three classic contrasts, measured with cnnlab's NumPy losses. (a) On a sigmoid output,
    the MSE gradient with respect to the logit z carries the factor sigmoid'(z), which vanishes
    when the prediction is confidently wrong, while cross-entropy's gradient is sigmoid(z) - y,
    about -1 there: both are tabulated over z, and a 1-D logistic model is trained with each
    from a confidently wrong start. (b) L2 weighs a residual by its size, so a few large
    outliers drag the fit; L1 weighs every residual alike (it estimates a median); smooth L1
    (Girshick 2015, Fast R-CNN) is quadratic within beta and linear beyond, so outliers pull
    with a bounded force (inliers in the quadratic zone resist less than under L1): a line is
    fitted with each to data with 10% large outliers. (c) The multi-class hinge loss (Weston &
    Watkins 1999) is exactly zero once every margin is met, so its gradient vanishes and
    training stops, while softmax cross-entropy is never zero and keeps growing the margins and
    the weights: a linear classifier is trained with each on separable blobs.""",
)
def losses(ctx: Context) -> Finding:
    sat, fits, margins = _saturation(ctx), _outliers(ctx), _margins(ctx)
    mse_run, ce_run = sat["bad_start"]["mse"], sat["bad_start"]["ce"]
    ratio = abs(sat["ce_grad_at_z_minus_8"] / sat["mse_grad_at_z_minus_8"])
    saturates = ratio > 100 and mse_run["final_accuracy"] < 0.5 and ce_run["final_accuracy"] == 1
    robust = max(fits["l1"]["error"], fits["smooth_l1"]["error"]) < 0.25 * fits["l2"]["error"]
    hinge, ce = margins["hinge"], margins["ce"]
    hinge_stops = hinge["final_loss"] == 0.0 and hinge["final_max_abs_grad"] == 0.0
    hinge_stops = hinge_stops and hinge["weight_norm_final"] == hinge["weight_norm_half"]
    ce_pushes = ce["final_loss"] > 0 and ce["weight_norm_final"] > ce["weight_norm_half"]
    ce_pushes = ce_pushes and ce["min_margin"] > hinge["min_margin"]
    verdict = (
        f"(a) At z = -8 for a positive target dMSE/dz is {sat['mse_grad_at_z_minus_8']:.1e}, "
        f"cross-entropy's {sat['ce_grad_at_z_minus_8']:.3f} ({ratio:.0f}x larger). From weight "
        f"-6, {sat['bad_start']['steps']} gradient steps move the MSE model only to "
        f"{mse_run['final_weight']:.2f} (accuracy {mse_run['final_accuracy']:.2f}); "
        f"cross-entropy has accuracy {ce_run['accuracy_after_5']:.2f} after 5 steps. (b) With "
        f"10% outliers the line's parameter error is {fits['l2']['error']:.3f} for L2, "
        f"{fits['l1']['error']:.3f} for L1 and {fits['smooth_l1']['error']:.3f} for smooth L1 "
        f"(beta 1). (c) The hinge loss is {hinge['final_loss']:.3g} with largest gradient "
        f"{hinge['final_max_abs_grad']:.3g} from step {hinge['first_zero_loss_step']} on (weight "
        f"norm frozen at {hinge['weight_norm_final']:.3f}, smallest margin "
        f"{hinge['min_margin']:.2f}); cross-entropy is still {ce['final_loss']:.1e} after "
        f"{margins['steps']} steps, its weight norm still growing ({ce['weight_norm_half']:.2f} "
        f"-> {ce['weight_norm_final']:.2f}), smallest margin {ce['min_margin']:.2f}."
    )
    figures = save_curves(
        ctx.figure_path("gradients"),
        {
            "MSE on sigmoid": (sat["z"], np.abs(sat["mse_grad"]).tolist()),
            "cross-entropy": (sat["z"], np.abs(sat["ce_grad"]).tolist()),
        },
        "Gradient w.r.t. the logit z, positive target",
        "logit z (negative: confidently wrong)",
        "|dL/dz|",
        log_y=True,
    )
    return Finding(
        numbers={"saturation": sat, "outliers": fits, "margins": margins},
        holds=saturates and robust and hinge_stops and ce_pushes,
        verdict=verdict,
        figures=figures,
    )


# ----------------------------------------------------------------------------------------------
# 18. Multi-class vs multi-label
# ----------------------------------------------------------------------------------------------


def _objects(rng: np.random.Generator, prototypes: np.ndarray, n: int, counts: list[int]):
    """Feature vectors holding `count` of K objects (count drawn from `counts`): the sum of the
    present objects' prototypes plus noise; targets are multi-hot (n, K)."""
    targets = np.zeros((n, len(prototypes)))
    for row, count in enumerate(rng.choice(counts, n)):
        targets[row, rng.choice(len(prototypes), count, replace=False)] = 1
    return targets @ prototypes + rng.normal(size=(n, prototypes.shape[1])), targets


def _fit_both(rng, x, targets, steps: int) -> list[Sequential]:
    """A linear model per head (the objects add up, so a linear score finds each). Softmax
    cross-entropy takes one class per example, so a multi-label example enters once per present
    label (its target mass split among them); one with no label cannot be expressed at all."""
    rows, labels = np.nonzero(targets)
    models = []
    for inputs, loss_fn in (
        (x, lambda z: binary_cross_entropy_with_logits(z, targets)),
        (x[rows], lambda z: softmax_cross_entropy(z, labels)),
    ):
        models.append(Sequential(Linear(x.shape[1], targets.shape[1], rng)))
        _train(models[-1], inputs, loss_fn, Adam(models[-1].parameters(), lr=0.05), steps)
    return models


def _scores(predicted: np.ndarray, targets: np.ndarray) -> dict:
    """Macro F1 over the labels and exact-match accuracy of 0/1 predictions."""
    tp = (predicted * targets).sum(axis=0)
    wrong = (predicted != targets).sum(axis=0)
    f1 = np.where(tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 1.0)
    return {
        "macro_f1": float(f1.mean()),
        "exact_match": float(np.all(predicted == targets, 1).mean()),
    }


def _top_k(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row's `count` most probable labels, the count taken from the truth (an oracle)."""
    ranks = np.argsort(np.argsort(-probs, axis=1), axis=1)
    return (ranks < counts[:, None]).astype(float)


@topic(
    18,
    "multi-label",
    "Multi-class vs multi-label",
    "Softmax makes labels compete for one unit of probability; independent sigmoids score "
    "each label on its own, as multi-label data needs.",
    """Softmax with cross-entropy models exactly one class per example: its probabilities sum
    to 1, so two labels that are both present must share that mass (the weaker at most 0.5)
    and an example with no label cannot be expressed. A sigmoid per label with binary
    cross-entropy asks each label its own yes/no question, so several can be near 1 at once.
    Feature vectors contain 0 to 3 of 6 objects (the sum of their prototypes plus noise); the
    same linear model (cnnlab.scratch, Adam) is trained with each head and scored with sigmoid
    > 0.5, softmax > 0.5 and softmax top-k told the true number of labels. On data with exactly
    one object per example both heads are trained again, and should do equally well.""",
)
def multi_label(ctx: Context) -> Finding:
    rng = ctx.rng(18)
    prototypes = rng.normal(size=(6, 32))
    n, steps = (1000, 150) if ctx.quick else (1500, 500)
    x, targets = _objects(rng, prototypes, n, [0, 1, 2, 3])
    test_x, test_t = _objects(rng, prototypes, 2000, [0, 1, 2, 3])
    sigmoid_model, softmax_model = _fit_both(rng, x, targets, steps)
    p_sigmoid = sigmoid_forward(sigmoid_model(test_x))[0]
    p_softmax = torch.softmax(torch.from_numpy(softmax_model(test_x)), dim=1).numpy()
    counts = test_t.sum(axis=1)
    two = counts == 2
    # Row-major order keeps each example's two present labels side by side.
    present = {
        name: p[two][test_t[two] == 1].reshape(-1, 2)
        for name, p in (("sigmoid", p_sigmoid), ("softmax", p_softmax))
    }
    multi = {
        "sigmoid_threshold": _scores((p_sigmoid > 0.5).astype(float), test_t),
        "softmax_threshold": _scores((p_softmax > 0.5).astype(float), test_t),
        "softmax_top_k_oracle": _scores(_top_k(p_softmax, counts.astype(int)), test_t),
        "two_label_examples": int(two.sum()),
    }
    for name, p in (("sigmoid", p_sigmoid), ("softmax", p_softmax)):
        multi[name] = {
            "prob_sum_two_labels": float(p[two].sum(axis=1).mean()),
            "present_prob_mean": float(present[name].mean()),
            "weaker_present_prob_mean": float(present[name].min(axis=1).mean()),
            "weaker_present_prob_max": float(present[name].min(axis=1).max()),
        }
    x1, t1 = _objects(rng, prototypes, n, [1])
    test_x1, test_t1 = _objects(rng, prototypes, 2000, [1])
    single = {}
    for name, model in zip(("sigmoid", "softmax"), _fit_both(rng, x1, t1, steps), strict=True):
        right = model(test_x1).argmax(axis=1) == test_t1.argmax(axis=1)
        single[f"{name}_accuracy"] = float(right.mean())
    figures = save_curves(
        ctx.figure_path("probabilities"),
        {
            f"{name} head": (np.linspace(0, 1, p.size).tolist(), np.sort(p, axis=None).tolist())
            for name, p in present.items()
        },
        "Probability given to each present label, examples with 2 labels",
        "fraction of present labels (sorted)",
        "predicted probability",
    )
    return _multi_label_finding(multi, single, {"train": n, "steps": steps}, figures)


def _multi_label_finding(multi: dict, single: dict, setup: dict, figures: list) -> Finding:
    sig, soft = multi["sigmoid"], multi["softmax"]
    sig_t, soft_t, oracle = (
        multi[k] for k in ("sigmoid_threshold", "softmax_threshold", "softmax_top_k_oracle")
    )
    shares = abs(soft["prob_sum_two_labels"] - 1) < 1e-9 and soft["weaker_present_prob_max"] <= 0.5
    independent = sig["prob_sum_two_labels"] > 1.5 and sig["weaker_present_prob_mean"] > 0.5
    better = sig_t["exact_match"] > soft_t["exact_match"] + 0.1
    better = better and sig_t["macro_f1"] > soft_t["macro_f1"]
    accuracy = (single["sigmoid_accuracy"], single["softmax_accuracy"])
    both_fine = min(accuracy) > 0.9 and abs(accuracy[0] - accuracy[1]) < 0.03
    ranking = " (it ranks the labels well; its probabilities are what fail)" * (
        oracle["exact_match"] > soft_t["exact_match"] + 0.1
    )
    verdict = (
        f"On {multi['two_label_examples']} test examples with two objects, the softmax "
        f"probabilities sum to {soft['prob_sum_two_labels']:.3f} and give the present labels "
        f"{soft['present_prob_mean']:.2f} on average, the weaker of the two "
        f"{soft['weaker_present_prob_mean']:.2f} (never above "
        f"{soft['weaker_present_prob_max']:.2f}); the sigmoids sum to "
        f"{sig['prob_sum_two_labels']:.2f} and give them {sig['present_prob_mean']:.2f}, the "
        f"weaker {sig['weaker_present_prob_mean']:.2f}. On 0-3 objects sigmoid > 0.5 reaches "
        f"macro F1 {sig_t['macro_f1']:.3f} and exact match {sig_t['exact_match']:.3f}, softmax "
        f"> 0.5 {soft_t['macro_f1']:.3f} and {soft_t['exact_match']:.3f}; softmax top-k, told "
        f"the true number of labels, {oracle['macro_f1']:.3f} and {oracle['exact_match']:.3f}"
        f"{ranking}. With one object per example, "
        f"accuracy is {accuracy[0]:.3f} (sigmoid) and {accuracy[1]:.3f} (softmax)."
    )
    return Finding(
        numbers={**setup, "multi_label": multi, "single_label": single},
        holds=shares and independent and better and both_fine,
        verdict=verdict,
        figures=figures,
    )
