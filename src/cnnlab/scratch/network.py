"""Small networks assembled from the hand-written NumPy layers of cnnlab.scratch.

The functional layers (`layers`, `conv`, `batchnorm`) each compute `forward(x) -> (out, cache)` and
`backward(dout, cache) -> gradients`. This module wraps them in thin objects that hold their
parameters, their cache and their gradients, so that a network is a `Sequential` list of layers:
the forward pass runs them in order and the backward pass runs them in reverse, each layer storing
the gradients of its parameters on the way.

`scratch_lenet` and `scratch_lenet_modern` build the same layer sequence as cnnlab's PyTorch
LeNet models, with PyTorch-style parameter names, and `load_torch_state` copies a PyTorch
`state_dict` into them, so the NumPy network can be checked against PyTorch output for output
and gradient for gradient.
"""

from __future__ import annotations

import numpy as np

from cnnlab.scratch import batchnorm as B
from cnnlab.scratch import conv as C
from cnnlab.scratch import layers as L
from cnnlab.scratch.init import xavier_uniform

# ----------------------------------------------------------------------------------------------
# Layers: parameters, buffers and gradients around a functional forward/backward pair
# ----------------------------------------------------------------------------------------------


class Layer:
    """Base class. `params` and `grads` map the same names to arrays of the same shapes;
    `buffers` holds state that is not learned (running statistics)."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.train = True
        self.cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.shape}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


class Linear(Layer):
    """out = x @ w.T + b with w (out_f, in_f), as torch.nn.Linear."""

    def __init__(self, in_f: int, out_f: int, rng: np.random.Generator | None = None):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.params = {"weight": xavier_uniform((out_f, in_f), rng), "bias": np.zeros(out_f)}

    def forward(self, x):
        out, self.cache = L.linear_forward(x, self.params["weight"], self.params["bias"])
        return out

    def backward(self, dout, input_grad=True):
        grads = L.linear_backward(dout, self.cache, input_grad)
        dx, self.grads["weight"], self.grads["bias"] = grads
        return dx


class Conv2d(Layer):
    """2-D convolution with a square or (kh, kw) kernel, as torch.nn.Conv2d."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, rng=None):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.params = {"weight": xavier_uniform((cout, cin, kh, kw), rng), "bias": np.zeros(cout)}

    def forward(self, x):
        w, b = self.params["weight"], self.params["bias"]
        out, self.cache = C.conv_forward(x, w, b, stride=self.stride, padding=self.padding)
        return out

    def backward(self, dout, input_grad=True):
        grads = C.conv_backward(dout, self.cache, input_grad)
        dx, self.grads["weight"], self.grads["bias"] = grads
        return dx


class MaxPool2d(Layer):
    def __init__(self, kernel, stride=None):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        out, self.cache = C.max_pool_forward(x, self.kernel, self.stride)
        return out

    def backward(self, dout):
        return C.max_pool_backward(dout, self.cache)


class AvgPool2d(Layer):
    def __init__(self, kernel, stride=None):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        out, self.cache = C.avg_pool_forward(x, self.kernel, self.stride)
        return out

    def backward(self, dout):
        return C.avg_pool_backward(dout, self.cache)


class BatchNorm(Layer):
    """Batch normalisation of (N, D) or (N, C, H, W) input: batch statistics in train mode (and
    running averages updated), running averages in eval mode, as torch.nn.BatchNorm1d/2d."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.params = {"weight": np.ones(num_features), "bias": np.zeros(num_features)}
        self.buffers = {
            "running_mean": np.zeros(num_features),
            "running_var": np.ones(num_features),
        }

    def forward(self, x):
        out, self.cache = B.batchnorm_forward(
            x,
            self.params["weight"],
            self.params["bias"],
            self.buffers["running_mean"],
            self.buffers["running_var"],
            self.train,
            self.momentum,
            self.eps,
        )
        return out

    def backward(self, dout):
        dx, self.grads["weight"], self.grads["bias"] = B.batchnorm_backward(dout, self.cache)
        return dx


class ReLU(Layer):
    def forward(self, x):
        out, self.cache = L.relu_forward(x)
        return out

    def backward(self, dout):
        return L.relu_backward(dout, self.cache)


class Sigmoid(Layer):
    def forward(self, x):
        out, self.cache = L.sigmoid_forward(x)
        return out

    def backward(self, dout):
        return L.sigmoid_backward(dout, self.cache)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), as torch.nn.Flatten(1)."""

    def forward(self, x):
        out, self.cache = L.flatten_forward(x)
        return out

    def backward(self, dout):
        return L.flatten_backward(dout, self.cache)


class Dropout(Layer):
    """Inverted dropout in train mode, the identity in eval mode."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        self.p, self.rng = p, np.random.default_rng() if rng is None else rng

    def forward(self, x):
        out, self.cache = L.dropout_forward(x, self.p, self.train, self.rng)
        return out

    def backward(self, dout):
        return L.dropout_backward(dout, self.cache)


# ----------------------------------------------------------------------------------------------
# Sequential: run the layers forward in order and backward in reverse
# ----------------------------------------------------------------------------------------------


class Sequential:
    """A chain of layers. `names` gives each layer's PyTorch module path (e.g. "features.0");
    by default layer i is called "i", as in a plain torch.nn.Sequential."""

    def __init__(self, *layers: Layer, names: list[str] | None = None):
        self.layers = list(layers)
        self.names = [str(i) for i in range(len(layers))] if names is None else list(names)
        if len(self.names) != len(self.layers):
            raise ValueError(f"{len(self.names)} names for {len(self.layers)} layers")

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate dout = dLoss/dout; returns dLoss/dx and leaves each layer's grads.
        Training needs no dLoss/dx: with input_grad=False a first Conv2d or Linear layer skips
        it (as PyTorch does for inputs that do not require grad) and None is returned."""
        *rest, first = reversed(self.layers)
        for layer in rest:
            dout = layer.backward(dout)
        if not input_grad and isinstance(first, (Conv2d, Linear)):
            return first.backward(dout, input_grad=False)
        return first.backward(dout)

    def train(self, mode: bool = True) -> Sequential:
        for layer in self.layers:
            layer.train = mode
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def astype(self, dtype) -> Sequential:
        """Convert every parameter and buffer to `dtype` in place: float64 for checking against
        finite differences and PyTorch, float32 for training at twice the speed."""
        for layer in self.layers:
            for store in (layer.params, layer.buffers):
                for name, value in store.items():
                    store[name] = value.astype(dtype)
        return self

    def parameters(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params.values()]

    def gradients(self) -> list[np.ndarray]:
        """Gradients in the order of parameters(); available after a backward pass."""
        return [layer.grads[k] for layer in self.layers for k in layer.params]

    def state_names(self) -> list[str]:
        """PyTorch-style names of parameters(), e.g. "features.0.weight"."""
        return [
            f"{n}.{k}"
            for n, layer in zip(self.names, self.layers, strict=True)
            for k in layer.params
        ]

    def __repr__(self) -> str:
        inner = "\n".join(
            f"  ({n}): {layer!r}" for n, layer in zip(self.names, self.layers, strict=True)
        )
        return f"Sequential(\n{inner}\n)"


# ----------------------------------------------------------------------------------------------
# LeNet builders, laid out and named as cnnlab.models.lenet
# ----------------------------------------------------------------------------------------------


def _lenet(num_classes, in_channels, batch_norm, activation, pool, rng, dtype) -> Sequential:
    rng = np.random.default_rng() if rng is None else rng
    entries: list[tuple[str, Layer]] = []

    def add(group: str, *layers: Layer) -> None:
        # Number the layers within each group, as torch.nn.Sequential numbers its children.
        for layer in layers:
            index = sum(name.startswith(group + ".") for name, _ in entries)
            entries.append((f"{group}.{index}", layer))

    def block(group: str, main: Layer, width: int) -> None:
        add(group, main, *([BatchNorm(width)] if batch_norm else []), activation())

    block("features", Conv2d(in_channels, 6, 5, padding=2, rng=rng), 6)
    add("features", pool(2, 2))
    block("features", Conv2d(6, 16, 5, rng=rng), 16)
    add("features", pool(2, 2))
    # PyTorch's adaptive pool to 5x5 is the identity for 28x28 inputs, so it is left out here.
    entries.append(("flatten", Flatten()))
    block("hidden", Linear(16 * 5 * 5, 120, rng), 120)
    block("hidden", Linear(120, 84, rng), 84)
    entries.append(("fc", Linear(84, num_classes, rng)))
    names, layers = zip(*entries, strict=True)
    return Sequential(*layers, names=list(names)).astype(dtype)


def scratch_lenet(
    num_classes: int = 10,
    in_channels: int = 1,
    batch_norm: bool = False,
    rng: np.random.Generator | None = None,
    dtype=np.float64,
) -> Sequential:
    """LeNet-5 as d2l trains it (sigmoid, 2x2 average pooling): cnnlab's `lenet`, or `lenet_bn`
    with batch_norm=True. Expects 28x28 inputs."""
    return _lenet(num_classes, in_channels, batch_norm, Sigmoid, AvgPool2d, rng, dtype)


def scratch_lenet_modern(
    num_classes: int = 10,
    in_channels: int = 1,
    rng: np.random.Generator | None = None,
    dtype=np.float64,
) -> Sequential:
    """The BatchNorm/ReLU version: batch norm after every conv and hidden linear layer, ReLU and
    2x2 max pooling. Named like `lenet_bn`, whose layer positions it shares."""
    return _lenet(num_classes, in_channels, True, ReLU, MaxPool2d, rng, dtype)


def load_torch_state(model: Sequential, state_dict) -> Sequential:
    """Copy a PyTorch state_dict (tensors or arrays) into `model` in place, keeping the model's
    dtypes.

    Every parameter and buffer of the scratch model must be present under its PyTorch name with
    the same shape; otherwise ValueError names the key. Extra keys (num_batches_tracked) are
    ignored."""
    for prefix, layer in zip(model.names, model.layers, strict=True):
        for store in (layer.params, layer.buffers):
            for name, target in store.items():
                key = f"{prefix}.{name}"
                if key not in state_dict:
                    raise ValueError(f"state_dict has no key {key!r}")
                value = state_dict[key]
                if hasattr(value, "detach"):
                    value = value.detach().cpu().numpy()
                value = np.asarray(value, dtype=target.dtype)
                if value.shape != target.shape:
                    raise ValueError(
                        f"shape mismatch for {key!r}: state_dict has {value.shape}, "
                        f"model expects {target.shape}"
                    )
                store[name] = value.copy()
    return model
