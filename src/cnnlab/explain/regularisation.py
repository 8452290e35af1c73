"""Explain topic about regularisation: L1 sets weights to exactly zero where L2 only shrinks
them (and only a proximal step lands on those zeros), and weight decay equals an L2 penalty
under SGD but not under Adam, which is what AdamW fixes.

It runs on cnnlab's NumPy engine (`cnnlab.scratch`): its penalties and optimisers applied to
the weight vector of a linear regression whose relevant features are known, so it takes seconds.
"""

from __future__ import annotations

import numpy as np

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.scratch.losses import l1_penalty, l2_penalty, mse
from cnnlab.scratch.optim import SGD, Adam, AdamW

# ----------------------------------------------------------------------------------------------
# 14. Regularisation
# ----------------------------------------------------------------------------------------------


def _regression(rng: np.random.Generator, n: int, d: int, relevant: int, scales=1.0):
    """y = x w_true + noise with only the first `relevant` weights nonzero (|w| in 1.5..3)."""
    x = rng.normal(size=(n, d)) * scales
    w_true = np.zeros(d)
    w_true[:relevant] = rng.choice([-1, 1], relevant) * rng.uniform(1.5, 3, relevant)
    return x, x @ w_true + 0.5 * rng.normal(size=n), w_true


def _data_grad(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient with respect to w of the mean squared error of x @ w against y."""
    return x.T @ mse(x @ w, y)[1]


def _soft_threshold(v: np.ndarray, t: float) -> np.ndarray:
    """The proximal operator of t |w|_1: shrink towards 0 by t and stop AT 0 instead of
    crossing it, which is what lets L1 land on exact zeros."""
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _sparsity(ctx: Context) -> tuple[dict, dict]:
    """L1 by proximal and by subgradient steps, and L2, on a sparse regression: the numbers,
    and each fit's sorted |w| for the figure."""
    rng = ctx.rng(16)
    x, y, w_true = _regression(rng, 200, 50, 5)
    lam, lr, steps = 0.2, 0.1, 500 if ctx.quick else 3000
    fits = {name: np.zeros(50) for name in ("l1_proximal", "l1_subgradient", "l2")}
    flipped = np.zeros(45, dtype=bool)
    for step in range(steps):
        w = fits["l1_proximal"]
        w[:] = _soft_threshold(w - lr * _data_grad(w, x, y), lr * lam)
        w = fits["l1_subgradient"]
        before = np.sign(w[5:])
        w -= lr * (_data_grad(w, x, y) + l1_penalty(w, lam)[1])
        if step >= steps - 10:  # a subgradient weight near 0 keeps jumping across it
            flipped |= np.sign(w[5:]) != before
        w = fits["l2"]
        w -= lr * (_data_grad(w, x, y) + l2_penalty(w, lam)[1])
    out = {"features": 50, "relevant": 5, "strength": lam, "steps": steps}
    out["smallest_true_weight"] = float(np.abs(w_true[:5]).min())
    out["subgradient_sign_flips_last_10_steps"] = int(flipped.sum())
    for name, w in fits.items():
        out[name] = {
            "exact_zeros_irrelevant": int(np.sum(w[5:] == 0)),
            "exact_zeros_relevant": int(np.sum(w[:5] == 0)),
            "max_abs_irrelevant": float(np.abs(w[5:]).max()),
            "median_abs_irrelevant": float(np.median(np.abs(w[5:]))),
            "weight_error": float(np.linalg.norm(w - w_true)),
        }
    return out, {name: np.sort(np.abs(w))[::-1] for name, w in fits.items()}


def _decay_run(make, x, y, w0, steps: int, explicit_l2: float = 0.0):
    """Train w from w0 with the optimiser make([w]); explicit_l2 adds l2_penalty's gradient to
    the data gradient. Returns the final w and the optimiser."""
    w = w0.copy()
    optimizer = make([w])
    for _ in range(steps):
        optimizer.step([_data_grad(w, x, y) + l2_penalty(w, explicit_l2)[1]])
    return w, optimizer


def _weight_decay(ctx: Context) -> dict:
    """SGD and Adam with weight_decay against the same optimiser on the L2-penalised loss, and
    Adam+L2 against AdamW."""
    rng = ctx.rng(17)
    # Feature scales over two orders of magnitude give the weights very different gradients.
    scales = 10.0 ** np.linspace(-1, 1, 6)
    x, y, _ = _regression(rng, 256, 6, 6, scales)
    w0, wd, steps = rng.normal(size=6), 0.1, 2000 if ctx.quick else 4000
    sgd_wd, _ = _decay_run(lambda p: SGD(p, 0.002, momentum=0.9, weight_decay=wd), x, y, w0, steps)
    sgd_l2, _ = _decay_run(lambda p: SGD(p, 0.002, momentum=0.9), x, y, w0, steps, wd)
    adam_wd, adam = _decay_run(lambda p: Adam(p, 0.01, weight_decay=wd), x, y, w0, steps)
    adam_l2, _ = _decay_run(lambda p: Adam(p, 0.01), x, y, w0, steps, wd)
    adamw, _ = _decay_run(lambda p: AdamW(p, 0.01, weight_decay=wd), x, y, w0, steps)
    # Adam divides the whole gradient, L2 term included, by sqrt(v_hat): the decay a weight
    # feels is lr * wd / sqrt(v_hat), where AdamW gives every weight lr * wd.
    sqrt_v_hat = np.sqrt(adam.v[0] / (1 - adam.betas[1] ** adam.t))
    # The minimiser of mean((x w - y)^2) + wd/2 |w|^2, where a converged L2 run must end.
    ridge = np.linalg.solve(2 * x.T @ x / len(y) + wd * np.eye(6), 2 * x.T @ y / len(y))
    distance = {
        k: float(np.linalg.norm(w - ridge))
        for k, w in (("sgd", sgd_wd), ("adam_l2", adam_wd), ("adamw", adamw))
    }
    return {
        "weight_decay": wd,
        "steps": steps,
        "feature_scales": scales.tolist(),
        "sgd_decay_vs_l2_max_diff": float(np.abs(sgd_wd - sgd_l2).max()),
        "adam_decay_vs_l2_max_diff": float(np.abs(adam_wd - adam_l2).max()),
        "adam_l2_vs_adamw_relative": float(np.linalg.norm(adam_wd - adamw) / np.linalg.norm(adamw)),
        "distance_to_l2_optimum": distance,
        "adam_l2_weights": adam_wd.tolist(),
        "adamw_weights": adamw.tolist(),
        "adam_sqrt_v_hat": sqrt_v_hat.tolist(),
        "decay_spread": float(sqrt_v_hat.max() / sqrt_v_hat.min()),
    }


@topic(
    14,
    "regularisation",
    "Regularisation: L1, L2 and weight decay",
    "L1 sets weights to exactly zero while L2 only shrinks them; weight decay is L2 for SGD "
    "but not for Adam.",
    """(a) An L1 penalty lam |w|_1 pulls every weight towards zero with the same force lam, so
    a weight whose data gradient is weaker than lam ends at exactly zero (Tibshirani 1996, the
    lasso); L2's pull lam w fades as w shrinks, so no weight reaches zero. Exact zeros need the
    proximal step (soft-thresholding, ISTA): plain subgradient descent with sign(w) overshoots
    0 every step and oscillates around it without landing. A regression with 5 relevant and 45
    irrelevant features is fitted three ways and the exact zeros counted. (b) For SGD,
    decaying the weights by lr wd w each step is the same as adding wd/2 |w|^2 to the loss.
    Adam divides the gradient, L2 term included, by the root of its running second moment
    v_hat, so the decay is weak on weights with large gradients and strong on small ones; AdamW
    (Loshchilov & Hutter 2019) decouples the decay from that scaling. cnnlab's SGD, Adam and
    AdamW run both ways on a regression whose features span two orders of magnitude.""",
)
def regularisation(ctx: Context) -> Finding:
    (sparse, magnitudes), decay = _sparsity(ctx), _weight_decay(ctx)
    prox, sub, l2 = sparse["l1_proximal"], sparse["l1_subgradient"], sparse["l2"]
    l1_sparse = prox["exact_zeros_irrelevant"] >= 0.8 * 45 and prox["exact_zeros_relevant"] == 0
    small = l2["max_abs_irrelevant"] < 0.25 * sparse["smallest_true_weight"]
    l2_dense = l2["exact_zeros_irrelevant"] == 0 and small
    sgd_same = decay["sgd_decay_vs_l2_max_diff"] < 1e-12
    adam_differs = decay["adam_decay_vs_l2_max_diff"] < 1e-12
    adam_differs = adam_differs and decay["adam_l2_vs_adamw_relative"] > 0.01
    sqrt_v, adam_l2, adamw = (
        decay[k] for k in ("adam_sqrt_v_hat", "adam_l2_weights", "adamw_weights")
    )
    distance = decay["distance_to_l2_optimum"]
    verdict = (
        f"(a) Of 45 irrelevant weights, L1 with the proximal step sets "
        f"{prox['exact_zeros_irrelevant']} exactly to zero (and {prox['exact_zeros_relevant']} "
        f"of the 5 relevant ones). L1 by subgradient descent sets "
        f"{sub['exact_zeros_irrelevant']}: {sparse['subgradient_sign_flips_last_10_steps']} of "
        f"them changed sign in the last 10 steps, hovering at a median |w| of "
        f"{sub['median_abs_irrelevant']:.1e}. L2 sets {l2['exact_zeros_irrelevant']}, all small "
        f"(largest {l2['max_abs_irrelevant']:.3f}). (b) After {decay['steps']} steps, SGD with "
        f"weight_decay and SGD on the L2-penalised loss differ by at most "
        f"{decay['sgd_decay_vs_l2_max_diff']:.1e}, Adam's weight_decay and Adam on that loss by "
        f"{decay['adam_decay_vs_l2_max_diff']:.1e}, but Adam+L2 and AdamW by "
        f"{decay['adam_l2_vs_adamw_relative']:.1%} of the weights' norm. Adam divides the decay "
        f"by sqrt(v_hat), from {sqrt_v[0]:.2g} (smallest feature scale) to {sqrt_v[-1]:.3g} "
        f"(largest): the smallest-scale weight ends at {adam_l2[0]:.3f} with Adam+L2 and "
        f"{adamw[0]:.3f} with AdamW, the largest-scale one at {adam_l2[-1]:.3f} and "
        f"{adamw[-1]:.3f}. Distance to the L2-penalised optimum: SGD {distance['sgd']:.1e}, "
        f"Adam+L2 {distance['adam_l2']:.1e}, AdamW {distance['adamw']:.1e}."
    )
    rank = list(range(1, 51))
    labels = {"l1_proximal": "L1, proximal", "l1_subgradient": "L1, subgradient", "l2": "L2"}
    figures = save_curves(
        ctx.figure_path("weights"),
        {labels[k]: (rank, np.maximum(m, 1e-8).tolist()) for k, m in magnitudes.items()},
        "Sorted |w|, 5 relevant of 50 features (exact 0 drawn at 1e-8)",
        "rank",
        "|w|",
        log_y=True,
    )
    return Finding(
        numbers={"sparsity": sparse, "weight_decay": decay},
        holds=l1_sparse and l2_dense and sgd_same and adam_differs,
        verdict=verdict,
        figures=figures,
    )
