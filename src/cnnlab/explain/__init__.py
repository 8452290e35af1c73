"""`cnnlab explain`: runnable experiments behind the classic claims about CNNs.

Each topic runs a small experiment, prints the measured numbers and a verdict computed from
them, and draws a figure where a picture says it better. Topics live in themed modules:

- `layers`: why activations, dropout
- `convolution`: convolution vs cross-correlation, 1x1 convolution, FC layers as convolutions
- `geometry`: output sizes and parameter counts, receptive fields
- `pooling`: pooling and translation
- `generalisation`: global average pooling, residual learning, over- and under-fitting
  (trained on Fashion-MNIST)
- `optimisation`: BatchNorm, batch size and the learning rate
- `depth`: vanishing and exploding gradients, initialisation
- `losses`: loss functions, multi-class vs multi-label
- `regularisation`: L1 vs L2, weight decay vs L2 under Adam
"""

from cnnlab.explain import (
    convolution,
    depth,
    generalisation,
    geometry,
    layers,
    losses,
    optimisation,
    pooling,
    regularisation,
)
from cnnlab.explain.topic import TOPICS, Context, Finding, format_report, ordered_topics, run_topic

__all__ = [
    "TOPICS",
    "Context",
    "Finding",
    "convolution",
    "depth",
    "format_report",
    "generalisation",
    "geometry",
    "layers",
    "losses",
    "optimisation",
    "ordered_topics",
    "pooling",
    "regularisation",
    "run_topic",
]
