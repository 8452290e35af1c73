"""The convolution topics of `cnnlab explain` (convolution, 1x1 convolution, FC layers as
convolutions): each runs in quick mode and its property holds on the measured numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.explain.convolution import _true_convolution


def test_true_convolution_follows_its_definition():
    # A single 1 in the input reproduces the kernel itself, not its flip, in true convolution.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    kernel = np.arange(9.0).reshape(1, 1, 3, 3)
    assert np.array_equal(_true_convolution(x, kernel)[0, 0], kernel[0, 0])
    correlation = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(kernel))
    assert np.array_equal(correlation[0, 0].numpy(), kernel[0, 0, ::-1, ::-1])


def test_convolution_is_flipped_cross_correlation(run_quick):
    numbers = run_quick("convolution")["numbers"]
    differences = numbers["relative_max_difference"]
    assert differences["torch_flipped_vs_true"] < 1e-12
    assert differences["scratch_flipped_vs_true"] < 1e-12
    assert differences["scratch_vs_torch_unflipped"] < 1e-12
    assert differences["symmetric_kernel_unflipped_vs_true"] < 1e-12
    assert differences["torch_unflipped_vs_true"] > 0.1
    # Both parameterisations learn equally well, and learn flips of one kernel.
    assert numbers["loss_ratio"] == pytest.approx(1, abs=1e-3)
    optimum = numbers["least_squares_optimum_mse"]
    assert numbers["cross_correlation_layer_mse"] == pytest.approx(optimum, rel=1e-3)
    assert numbers["true_convolution_layer_mse"] == pytest.approx(optimum, rel=1e-3)
    assert numbers["learned_kernels_flip_relative_difference"] < 1e-2


def test_one_by_one_is_a_per_pixel_linear_layer(run_quick):
    numbers = run_quick("one-by-one")["numbers"]
    assert numbers["conv_vs_per_pixel_linear_relative_difference"] < 1e-12
    one = numbers["one_by_one"]
    assert one["output_shape"] == [64, 56, 56]
    assert one["params"] == 256 * 64 + 64
    assert one["macs"] == 56 * 56 * 256 * 64
    for name in ("resnet_3x3", "googlenet_5x5"):
        direct, cheap = numbers[name]["direct"], numbers[name]["bottleneck"]
        assert direct["output_shape"] == cheap["output_shape"]
        assert cheap["macs"] < direct["macs"] / 5
        assert cheap["params"] < direct["params"] / 5
        assert numbers[name]["macs_ratio"] == pytest.approx(direct["macs"] / cheap["macs"])


def test_fc_layer_is_a_convolution_and_scores_a_map(run_quick):
    numbers = run_quick("fc-to-conv")["numbers"]
    layer = numbers["fc_layer_as_conv"]
    assert layer["relative_max_difference"] < 1e-4
    assert layer["linear_params"] == layer["conv_params"] == 25088 * 4096 + 4096
    assert layer["conv_output_shape"] == [4096, 1, 1]
    dense = numbers["dense_map_vs_crops"]
    cells = (dense["input_size"] - 32) // dense["jump"] + 1
    assert dense["jump"] == 4
    assert dense["map_size"] == [cells, cells] and cells > 1
    assert dense["relative_max_difference"] < 1e-12
    # Zero padding inside the net breaks the equality: the crops see zeros, the map neighbours.
    padded = numbers["dense_map_vs_crops_with_padding"]
    assert padded["relative_max_difference"] > 1e3 * dense["relative_max_difference"]
