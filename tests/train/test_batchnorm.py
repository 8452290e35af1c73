"""Precise BatchNorm: running statistics recomputed as true averages, nothing else touched."""

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.train.batchnorm import frozen_norms, recompute_batchnorm


def test_statistics_become_the_average_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5))
    batches = [(torch.randn(8, 1, 4, 4) * (i + 1) + i, None) for i in range(3)]
    with torch.no_grad():
        features = [model[0](x) for x, _ in batches]
    model[1].running_mean.fill_(100.0)
    model[1].num_batches_tracked.fill_(7)
    model.train()
    assert recompute_batchnorm(model, batches) == 1
    means = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.var((0, 2, 3)) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)
    torch.testing.assert_close(model[1].running_var, variances)
    assert int(model[1].num_batches_tracked) == 7 and model[1].momentum == 0.1
    assert model.training and all(m.training for m in model)


def test_dropout_is_off_while_recomputing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm1d(4))
    x = torch.ones(16, 4)
    recompute_batchnorm(model, [(x, None)])
    torch.testing.assert_close(model[1].running_mean, torch.ones(4))  # dropout would scale it


def test_unreached_and_frozen_layers_keep_their_statistics():
    model = create_model("googlenet", num_classes=3, in_channels=1, aux_logits=True)
    aux_norm = model.aux["aux1"].conv[1]
    aux_norm.running_mean.fill_(5.0)
    stem_norm = model.features.conv1[1]
    for param in stem_norm.parameters():
        param.requires_grad_(False)
    stem_norm.running_mean.fill_(-3.0)
    assert frozen_norms(model) == [stem_norm]
    recompute_batchnorm(model, [(torch.randn(2, 1, 32, 32), None)])
    assert torch.all(aux_norm.running_mean == 5.0)
    assert torch.all(stem_norm.running_mean == -3.0)
    assert not torch.all(model.features.conv2[1].running_mean == 0.0)
