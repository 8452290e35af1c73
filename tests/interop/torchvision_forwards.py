"""torchvision's forward passes as small functional programs (torch.nn.functional over the
torchvision-named tensors of torchvision_layouts.py), to compare loaded cnnlab models with.

Each follows torchvision's module definitions (torchvision/models/*.py): the same convolution
paddings and strides, pools with the same kernel, ceil mode and padding counting, and the same
order of operations, so that an equal output means cnnlab computes what torchvision computes.
"""

import torch
import torch.nn.functional as F
from torchvision_layouts import DENSENETS, GOOGLENET_BLOCKS, VGG_CFGS

# torchvision's `transform_input`: ImageNet-normalised inputs re-normalised with mean = std = 0.5.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def norm(x, sd, name, eps=1e-5, batch_stats=False):
    """BatchNorm in eval mode, or in training mode (`batch_stats`) without updating the stored
    running statistics (momentum 0)."""
    stats = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
    weight, bias = sd[f"{name}.weight"], sd[f"{name}.bias"]
    return F.batch_norm(x, *stats, weight, bias, batch_stats, 0.0, eps)


def fc(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def basic_conv(sd, x, name, stride=1, same=True, batch_stats=False):
    """torchvision's BasicConv2d of GoogLeNet and Inception-v3: conv without bias, BatchNorm
    (eps 0.001), ReLU; `same` pads to keep the map size (k // 2 per side), else no padding."""
    weight = sd[f"{name}.conv.weight"]
    padding = (weight.shape[2] // 2, weight.shape[3] // 2) if same else 0
    x = F.conv2d(x, weight, None, stride, padding)
    return F.relu(norm(x, sd, f"{name}.bn", 1e-3, batch_stats))


def transform_input(x):
    """torchvision's `transform_input=True` (GoogLeNet's and Inception-v3's pretrained weights)."""
    channels = [
        x[:, c : c + 1] * (IMAGENET_STD[c] / 0.5) + (IMAGENET_MEAN[c] - 0.5) / 0.5 for c in range(3)
    ]
    return torch.cat(channels, 1)


def resnet_block(sd, x, prefix, stride):
    count = sum(key.startswith(f"{prefix}.conv") for key in sd)
    strided = 1 if count == 2 else 2  # the 3x3 conv: a basic block's first, a bottleneck's second
    out = x
    for number in range(1, count + 1):
        weight = sd[f"{prefix}.conv{number}.weight"]
        step = stride if number == strided else 1
        groups = out.shape[1] // weight.shape[1]
        out = F.conv2d(out, weight, None, step, weight.shape[-1] // 2, 1, groups)
        out = norm(out, sd, f"{prefix}.bn{number}")
        out = F.relu(out) if number < count else out
    if f"{prefix}.downsample.0.weight" in sd:
        x = F.conv2d(x, sd[f"{prefix}.downsample.0.weight"], None, stride)
        x = norm(x, sd, f"{prefix}.downsample.1")
    return F.relu(out + x)


def resnet_forward(sd, x):
    x = F.relu(norm(F.conv2d(x, sd["conv1.weight"], None, 2, 3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
        blocks = {key.split(".")[1] for key in sd if key.startswith(f"layer{stage}.")}
        for index in range(len(blocks)):
            stride = 2 if stage > 1 and index == 0 else 1
            x = resnet_block(sd, x, f"layer{stage}.{index}", stride)
    return fc(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "fc")


def vgg_forward(sd, x, name):
    index, batch_norm = 0, name.endswith("_bn")
    for item in VGG_CFGS[name.removesuffix("_bn")]:
        if item == "M":
            x, index = F.max_pool2d(x, 2, 2), index + 1
            continue
        x = F.conv2d(x, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"], 1, 1)
        x = norm(x, sd, f"features.{index + 1}") if batch_norm else x
        x, index = F.relu(x), index + (3 if batch_norm else 2)
    x = F.adaptive_avg_pool2d(x, 7).flatten(1)
    x = F.relu(fc(F.relu(fc(x, sd, "classifier.0")), sd, "classifier.3"))
    return fc(x, sd, "classifier.6")


def densenet_forward(sd, x, name, sep):
    x = F.conv2d(x, sd["features.conv0.weight"], None, 2, 3)
    x = F.max_pool2d(F.relu(norm(x, sd, "features.norm0")), 3, 2, 1)
    _, blocks, _ = DENSENETS[name]
    for block, count in enumerate(blocks, start=1):
        for index in range(count):
            prefix = f"features.denseblock{block}.denselayer{index + 1}"
            new = F.conv2d(
                F.relu(norm(x, sd, f"{prefix}.norm{sep}1")), sd[f"{prefix}.conv{sep}1.weight"]
            )
            new = F.relu(norm(new, sd, f"{prefix}.norm{sep}2"))
            x = torch.cat([x, F.conv2d(new, sd[f"{prefix}.conv{sep}2.weight"], None, 1, 1)], 1)
        if block < len(blocks):
            prefix = f"features.transition{block}"
            x = F.conv2d(F.relu(norm(x, sd, f"{prefix}.norm")), sd[f"{prefix}.conv.weight"])
            x = F.avg_pool2d(x, 2, 2)
    x = F.relu(norm(x, sd, "features.norm5"))
    return fc(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "classifier")


# GoogLeNet and Inception-v3. `training` / `batch_stats` run BatchNorm on batch statistics, as
# in training mode; dropout is left out, so compare in training mode only with cnnlab's dropout
# set to 0.


def googlenet_inception(sd, x, prefix, batch_stats):
    def conv(name, y):
        return basic_conv(sd, y, f"{prefix}.{name}", batch_stats=batch_stats)

    pooled = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
    branches = [conv("branch1", x), conv("branch2.1", conv("branch2.0", x))]
    branches += [conv("branch3.1", conv("branch3.0", x)), conv("branch4.1", pooled)]
    return torch.cat(branches, 1)


def googlenet_aux(sd, x, name, batch_stats):
    x = basic_conv(sd, F.adaptive_avg_pool2d(x, 4), f"{name}.conv", batch_stats=batch_stats)
    return fc(F.relu(fc(x.flatten(1), sd, f"{name}.fc1")), sd, f"{name}.fc2")


def googlenet_forward(sd, x, transform=False, training=False):
    """torchvision's GoogLeNet (`transform`: its transform_input): the logits, or in `training`
    with auxiliary heads {"logits", "aux1", "aux2"} (torchvision's (logits, aux2, aux1))."""
    x = transform_input(x) if transform else x
    x = F.max_pool2d(basic_conv(sd, x, "conv1", 2, batch_stats=training), 3, 2, ceil_mode=True)
    x = basic_conv(sd, basic_conv(sd, x, "conv2", batch_stats=training), "conv3", 1, True, training)
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    aux = {}
    for block in GOOGLENET_BLOCKS:
        x = googlenet_inception(sd, x, f"inception{block}", training)
        head = {"4a": "aux1", "4d": "aux2"}.get(block)
        if training and head and f"{head}.fc1.weight" in sd:
            aux[head] = googlenet_aux(sd, x, head, training)
        if block == "3b":
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        elif block == "4e":
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    logits = fc(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "fc")
    return {"logits": logits, **aux} if aux else logits


def inception_v3_aux(sd, x, batch_stats=False):
    """torchvision's InceptionAux, which runs on Mixed_6e's output in training mode."""
    x = basic_conv(sd, F.avg_pool2d(x, 5, 3), "AuxLogits.conv0", batch_stats=batch_stats)
    x = basic_conv(sd, x, "AuxLogits.conv1", same=False, batch_stats=batch_stats)
    return fc(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "AuxLogits.fc")


def inception_v3_forward(sd, x, transform=False):
    """torchvision's Inception3 in eval mode (`transform`: its transform_input): the logits."""

    def conv(name, y, stride=1, same=True):
        return basic_conv(sd, y, name, stride, same)

    def chain(block, names, y):
        for name in names:
            y = conv(f"{block}.{name}", y)
        return y

    def pool_branch(block, y):  # F.avg_pool2d counts the zero padding by default
        return conv(f"{block}.branch_pool", F.avg_pool2d(y, 3, 1, 1))

    x = transform_input(x) if transform else x
    x = conv("Conv2d_2a_3x3", conv("Conv2d_1a_3x3", x, 2, False), same=False)
    x = F.max_pool2d(conv("Conv2d_2b_3x3", x), 3, 2)
    x = conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", x), same=False)
    x = F.max_pool2d(x, 3, 2)
    for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = torch.cat(
            [
                conv(f"{b}.branch1x1", x),
                chain(b, ("branch5x5_1", "branch5x5_2"), x),
                chain(b, ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
                pool_branch(b, x),
            ],
            1,
        )
    double = chain("Mixed_6a", ("branch3x3dbl_1", "branch3x3dbl_2"), x)
    x = torch.cat(
        [
            conv("Mixed_6a.branch3x3", x, 2, False),
            conv("Mixed_6a.branch3x3dbl_3", double, 2, False),
            F.max_pool2d(x, 3, 2),
        ],
        1,
    )
    for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = torch.cat(
            [
                conv(f"{b}.branch1x1", x),
                chain(b, [f"branch7x7_{n}" for n in (1, 2, 3)], x),
                chain(b, [f"branch7x7dbl_{n}" for n in (1, 2, 3, 4, 5)], x),
                pool_branch(b, x),
            ],
            1,
        )
    seven = chain("Mixed_7a", [f"branch7x7x3_{n}" for n in (1, 2, 3)], x)
    x = torch.cat(
        [
            conv("Mixed_7a.branch3x3_2", conv("Mixed_7a.branch3x3_1", x), 2, False),
            conv("Mixed_7a.branch7x7x3_4", seven, 2, False),
            F.max_pool2d(x, 3, 2),
        ],
        1,
    )
    for b in ("Mixed_7b", "Mixed_7c"):
        single = conv(f"{b}.branch3x3_1", x)
        double = chain(b, ("branch3x3dbl_1", "branch3x3dbl_2"), x)
        x = torch.cat(
            [
                conv(f"{b}.branch1x1", x),
                conv(f"{b}.branch3x3_2a", single),
                conv(f"{b}.branch3x3_2b", single),
                conv(f"{b}.branch3x3dbl_3a", double),
                conv(f"{b}.branch3x3dbl_3b", double),
                pool_branch(b, x),
            ],
            1,
        )
    return fc(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "fc")
