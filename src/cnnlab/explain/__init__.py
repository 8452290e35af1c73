"""`cnnlab explain`: runnable experiments behind the classic claims about CNNs.

Each topic runs a small experiment, prints the measured numbers and a verdict computed from
them, and draws a figure where a picture says it better. Topics live in modules by theme or,
for the larger experiments, one module per topic:

- `layers`: why activations, dropout
- `convolution`: convolution vs cross-correlation, 1x1 convolution, FC layers as convolutions
- `output_size`: output sizes and parameter counts
- `receptive_field`: receptive fields
- `pooling`: pooling and translation
- `global_pooling`, `residual`, `fitting`: global average pooling, residual learning, over- and
  under-fitting (trained on Fashion-MNIST)
- `optimisation`: BatchNorm, batch size and the learning rate
- `depth`: vanishing and exploding gradients, initialisation
- `losses`: loss functions, multi-class vs multi-label
- `regularisation`: L1 vs L2, weight decay vs L2 under Adam
"""

from cnnlab.explain import (
    convolution,
    depth,
    fitting,
    global_pooling,
    layers,
    losses,
    optimisation,
    output_size,
    pooling,
    receptive_field,
    regularisation,
    residual,
)
from cnnlab.explain.topic import TOPICS, Context, Finding, format_report, ordered_topics, run_topic

__all__ = [
    "TOPICS",
    "Context",
    "Finding",
    "convolution",
    "depth",
    "fitting",
    "format_report",
    "global_pooling",
    "layers",
    "losses",
    "optimisation",
    "ordered_topics",
    "output_size",
    "pooling",
    "receptive_field",
    "regularisation",
    "residual",
    "run_topic",
]
