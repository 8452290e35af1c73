"""Loss functions, a metric and weight penalties by hand, each with its gradient.

Every loss takes the network output and the targets and returns (loss, grad), where grad is the
derivative of the scalar loss with respect to the network output. Losses are averaged like
PyTorch's default reduction='mean' (over the batch, or over every element for element-wise
losses), so the values and gradients match torch.nn.functional one for one. The gradient is what
a training loop feeds into the last layer's backward pass.
"""

from __future__ import annotations

import numpy as np

from cnnlab.scratch.layers import sigmoid_forward

# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax. Shifting by the row max leaves the result unchanged but keeps exp
    from overflowing, and the largest term becomes exp(0) = 1 so the log never sees 0."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of -log softmax(logits)[y] for logits (N, K) and int labels (N,).
    The gradient of softmax followed by the log loss is simply (softmax - one_hot) / N."""
    n = logits.shape[0]
    rows = np.arange(n)
    log_probs = _log_softmax(logits)
    loss = -log_probs[rows, labels].mean()
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return float(loss), grad / n


def binary_cross_entropy_with_logits(
    logits: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray]:
    """Independent sigmoid + log loss per element (multi-label), averaged over all elements.
    -t log s(z) - (1-t) log(1-s(z)) rewritten as max(z, 0) - z t + log(1 + exp(-|z|)): no exp of
    a large positive number and no log of 0. Its derivative is s(z) - t."""
    z = logits
    loss = np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))
    return float(loss.mean()), (sigmoid_forward(z)[0] - targets) / z.size


def multiclass_hinge(
    scores: np.ndarray, labels: np.ndarray, margin: float = 1.0
) -> tuple[float, np.ndarray]:
    """Multi-class SVM loss as torch.nn.functional.multi_margin_loss (p=1): for each sample,
    sum over j != y of max(0, margin - s_y + s_j), divided by the number of classes K, then
    averaged over the N samples."""
    n, k = scores.shape
    rows = np.arange(n)
    margins = margin - scores[rows, labels][:, None] + scores
    margins[rows, labels] = 0  # the true class is not a competitor of itself
    active = (margins > 0).astype(scores.dtype)
    loss = np.sum(margins * active) / (k * n)
    # Each violating class pushes its own score up and the true score down by the same amount.
    grad = active
    grad[rows, labels] = -active.sum(axis=1)
    return float(loss), grad / (k * n)


def zero_one_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose highest-scoring class is wrong. Piecewise constant, so it has
    no useful gradient: a metric to report, not a loss to train on."""
    return float(np.mean(logits.argmax(axis=1) != labels))


# ----------------------------------------------------------------------------------------------
# Regression (element-wise, averaged over every element)
# ----------------------------------------------------------------------------------------------


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error."""
    diff = pred - target
    return float(np.mean(diff * diff)), 2.0 * diff / diff.size


def l1(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean absolute error. |d| has no derivative at 0; like PyTorch we take sign(0) = 0."""
    diff = pred - target
    return float(np.mean(np.abs(diff))), np.sign(diff) / diff.size


def smooth_l1(pred: np.ndarray, target: np.ndarray, beta: float = 1.0) -> tuple[float, np.ndarray]:
    """PyTorch's smooth L1: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta. Quadratic near
    0 (no kink in the gradient), linear far out (outliers cannot dominate); the two pieces meet
    with equal value and slope at |d| = beta. beta = 0 is plain L1."""
    if beta == 0:
        return l1(pred, target)
    diff = pred - target
    small = np.abs(diff) < beta
    loss = np.where(small, 0.5 * diff * diff / beta, np.abs(diff) - 0.5 * beta)
    grad = np.where(small, diff / beta, np.sign(diff))
    return float(loss.mean()), grad / diff.size


# ----------------------------------------------------------------------------------------------
# Weight penalties, added to the data loss; their gradient is added to the weights' gradient
# ----------------------------------------------------------------------------------------------


def l1_penalty(weights: np.ndarray, strength: float) -> tuple[float, np.ndarray]:
    """strength * sum |w|: pulls every weight towards 0 at a constant rate, giving sparsity."""
    return float(strength * np.sum(np.abs(weights))), strength * np.sign(weights)


def l2_penalty(weights: np.ndarray, strength: float) -> tuple[float, np.ndarray]:
    """strength / 2 * sum w^2 (weight decay): the 1/2 makes the gradient simply strength * w."""
    return float(0.5 * strength * np.sum(weights * weights)), strength * weights
