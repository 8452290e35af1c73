"""Binary logistic regression from scratch: the loss, its gradient, and a tiny trainer.

Model: p = sigmoid(z), z = x @ w + b, for x (N, D), w (D,), scalar b and labels y in {0, 1}.
Loss: mean binary cross-entropy plus an L2 penalty on w (the bias is not regularised):

    L = (1/N) sum_i [ -y_i log p_i - (1 - y_i) log(1 - p_i) ] + (l2 / 2) |w|^2

Gradient. With log p = -log(1 + e^-z) and log(1 - p) = -z - log(1 + e^-z), each term is
    l(z) = log(1 + e^-z) + (1 - y) z = softplus(z) - y z,
and since d softplus(z)/dz = sigmoid(z), dl/dz = sigmoid(z) - y: the prediction error. By the
chain rule through z = x w + b,
    dL/dw = x^T (p - y) / N + l2 w,        dL/db = sum(p - y) / N.

Numerical stability: softplus(z) = max(z, 0) + log1p(exp(-|z|)) never overflows and never takes
log(0), unlike computing log(sigmoid(z)) directly when |z| is large.
"""

from __future__ import annotations

import numpy as np

from cnnlab.scratch.layers import sigmoid_forward


def logistic_loss_and_grad(
    w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, l2: float = 0.0
) -> tuple[float, np.ndarray, float]:
    """(loss, dL/dw, dL/db) of mean binary cross-entropy on sigmoid(x @ w + b) plus l2/2 |w|^2."""
    n = x.shape[0]
    z = x @ w + b
    softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    loss = np.mean(softplus - y * z) + 0.5 * l2 * np.sum(w * w)
    dz = (sigmoid_forward(z)[0] - y) / n
    dw = x.T @ dz + l2 * w
    return float(loss), dw, float(np.sum(dz))


def predict(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    """Hard 0/1 labels: sigmoid(z) > 1/2 exactly when z > 0."""
    return (x @ w + b > 0).astype(np.int64)


def train(
    x: np.ndarray, y: np.ndarray, lr: float = 0.5, steps: int = 500, l2: float = 0.0
) -> tuple[np.ndarray, float]:
    """Full-batch gradient descent from zero weights (the loss is convex, so any start works)."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        _, dw, db = logistic_loss_and_grad(w, b, x, y, l2)
        w -= lr * dw
        b -= lr * db
    return w, b
