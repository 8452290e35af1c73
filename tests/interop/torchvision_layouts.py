"""torchvision's state-dict layouts, written independently of cnnlab's renaming rules, for the
tests of torchvision-layout weights (torchvision itself does not run here).

`torchvision_layout(name)` lists torchvision's state-dict keys and shapes, built from
torchvision's architecture definitions (module names, channel configurations); `tensors` fills
a layout with random values. torchvision_forwards.py runs torchvision's forward passes over them.
"""

import numpy as np
import torch

Layout = dict[str, tuple[int, ...]]
COUNTER = "num_batches_tracked"


# ---- torchvision's layouts ----------------------------------------------------------------------


def conv(layout: Layout, name: str, cin: int, cout: int, kernel, bias=False, groups=1) -> None:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    layout[f"{name}.weight"] = (cout, cin // groups, kh, kw)
    if bias:
        layout[f"{name}.bias"] = (cout,)


def bn(layout: Layout, name: str, channels: int) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        layout[f"{name}.{leaf}"] = (channels,)
    layout[f"{name}.{COUNTER}"] = ()


def linear(layout: Layout, name: str, fan_in: int, fan_out: int) -> None:
    layout[f"{name}.weight"], layout[f"{name}.bias"] = (fan_out, fan_in), (fan_out,)


def basic_conv(layout: Layout, name: str, cin: int, cout: int, kernel) -> None:
    conv(layout, f"{name}.conv", cin, cout, kernel)
    bn(layout, f"{name}.bn", cout)


def alexnet_layout() -> Layout:
    layout: Layout = {}
    for index, cin, cout, kernel in ((0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3)):
        conv(layout, f"features.{index}", cin, cout, kernel, bias=True)
    conv(layout, "features.8", 384, 256, 3, bias=True)
    conv(layout, "features.10", 256, 256, 3, bias=True)
    for index, fan_in, fan_out in ((1, 9216, 4096), (4, 4096, 4096), (6, 4096, 1000)):
        linear(layout, f"classifier.{index}", fan_in, fan_out)
    return layout


VGG_CFGS = {  # torchvision's cfgs: channels, "M" for a max pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", *[256] * 3, "M", *[512] * 3, "M", *[512] * 3, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
}


def vgg_layout(name: str) -> Layout:
    layout: Layout = {}
    batch_norm, index, cin = name.endswith("_bn"), 0, 3
    for item in VGG_CFGS[name.removesuffix("_bn")]:
        if item == "M":
            index += 1
            continue
        conv(layout, f"features.{index}", cin, item, 3, bias=True)
        if batch_norm:
            bn(layout, f"features.{index + 1}", item)
        index, cin = index + (3 if batch_norm else 2), item
    for index, fan_in in ((0, 25088), (3, 4096)):
        linear(layout, f"classifier.{index}", fan_in, 4096)
    linear(layout, "classifier.6", 4096, 1000)
    return layout


RESNETS = {  # block, layers, groups, width per group
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
}


def resnet_layout(name: str) -> Layout:
    block, layers, groups, base_width = RESNETS[name]
    expansion = 1 if block == "basic" else 4
    layout: Layout = {}
    conv(layout, "conv1", 3, 64, 7)
    bn(layout, "bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for index in range(count):
            prefix, stride = f"layer{stage}.{index}", 2 if stage > 1 and index == 0 else 1
            if block == "basic":
                convs = [(inplanes, planes, 3, 1), (planes, planes, 3, 1)]
            else:
                width = int(planes * base_width / 64) * groups
                convs = [(inplanes, width, 1, 1), (width, width, 3, groups)]
                convs.append((width, planes * 4, 1, 1))
            for number, (cin, cout, kernel, g) in enumerate(convs, start=1):
                conv(layout, f"{prefix}.conv{number}", cin, cout, kernel, groups=g)
                bn(layout, f"{prefix}.bn{number}", cout)
            if stride != 1 or inplanes != planes * expansion:
                conv(layout, f"{prefix}.downsample.0", inplanes, planes * expansion, 1)
                bn(layout, f"{prefix}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    linear(layout, "fc", 512 * expansion, 1000)
    return layout


DENSENETS = {  # growth rate, block config, initial features
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


def densenet_layout(name: str, legacy: bool = False) -> Layout:
    """`legacy`: the old `norm.1` spelling of the files torchvision downloads, no counters."""
    growth, blocks, channels = DENSENETS[name]
    layout: Layout = {}
    conv(layout, "features.conv0", 3, channels, 7)
    bn(layout, "features.norm0", channels)
    sep = "." if legacy else ""
    for block, count in enumerate(blocks, start=1):
        for index in range(count):
            prefix = f"features.denseblock{block}.denselayer{index + 1}"
            bn(layout, f"{prefix}.norm{sep}1", channels + index * growth)
            conv(layout, f"{prefix}.conv{sep}1", channels + index * growth, 4 * growth, 1)
            bn(layout, f"{prefix}.norm{sep}2", 4 * growth)
            conv(layout, f"{prefix}.conv{sep}2", 4 * growth, growth, 3)
        channels += count * growth
        if block < len(blocks):
            bn(layout, f"features.transition{block}.norm", channels)
            conv(layout, f"features.transition{block}.conv", channels, channels // 2, 1)
            channels //= 2
    bn(layout, "features.norm5", channels)
    linear(layout, "classifier", channels, 1000)
    return {k: v for k, v in layout.items() if not (legacy and k.endswith(COUNTER))}


GOOGLENET_BLOCKS = {  # in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


def googlenet_layout(aux: bool = True) -> Layout:
    layout: Layout = {}
    for name, cin, cout, kernel in (
        ("conv1", 3, 64, 7),
        ("conv2", 64, 64, 1),
        ("conv3", 64, 192, 3),
    ):
        basic_conv(layout, name, cin, cout, kernel)
    for block, (cin, c1, r3, c3, r5, c5, proj) in GOOGLENET_BLOCKS.items():
        prefix = f"inception{block}"
        basic_conv(layout, f"{prefix}.branch1", cin, c1, 1)
        basic_conv(layout, f"{prefix}.branch2.0", cin, r3, 1)
        basic_conv(layout, f"{prefix}.branch2.1", r3, c3, 3)
        basic_conv(layout, f"{prefix}.branch3.0", cin, r5, 1)
        basic_conv(layout, f"{prefix}.branch3.1", r5, c5, 3)  # 3x3 in torchvision
        basic_conv(layout, f"{prefix}.branch4.1", cin, proj, 1)
    for name, cin in (("aux1", 512), ("aux2", 528)) if aux else ():
        basic_conv(layout, f"{name}.conv", cin, 128, 1)
        linear(layout, f"{name}.fc1", 2048, 1024)
        linear(layout, f"{name}.fc2", 1024, 1000)
    linear(layout, "fc", 1024, 1000)
    return layout


def inception_v3_layout() -> Layout:
    layout: Layout = {}
    stem = [("1a", 3, 32, 3), ("2a", 32, 32, 3), ("2b", 32, 64, 3), ("3b", 64, 80, 1)]
    for name, cin, cout, kernel in [*stem, ("4a", 80, 192, 3)]:
        basic_conv(layout, f"Conv2d_{name}_{kernel}x{kernel}", cin, cout, kernel)

    def convs(block: str, *specs) -> None:
        for name, cin, cout, kernel in specs:
            basic_conv(layout, f"{block}.{name}", cin, cout, kernel)

    for block, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs(block, ("branch1x1", cin, 64, 1), ("branch5x5_1", cin, 48, 1))
        convs(block, ("branch5x5_2", 48, 64, 5), ("branch3x3dbl_1", cin, 64, 1))
        convs(block, ("branch3x3dbl_2", 64, 96, 3), ("branch3x3dbl_3", 96, 96, 3))
        convs(block, ("branch_pool", cin, pool, 1))
    convs("Mixed_6a", ("branch3x3", 288, 384, 3), ("branch3x3dbl_1", 288, 64, 1))
    convs("Mixed_6a", ("branch3x3dbl_2", 64, 96, 3), ("branch3x3dbl_3", 96, 96, 3))
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs(block, ("branch1x1", 768, 192, 1), ("branch7x7_1", 768, c7, 1))
        convs(block, ("branch7x7_2", c7, c7, (1, 7)), ("branch7x7_3", c7, 192, (7, 1)))
        convs(block, ("branch7x7dbl_1", 768, c7, 1), ("branch7x7dbl_2", c7, c7, (7, 1)))
        convs(block, ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)))
        convs(block, ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", 768, 192, 1))
    convs("AuxLogits", ("conv0", 768, 128, 1), ("conv1", 128, 768, 5))
    linear(layout, "AuxLogits.fc", 768, 1000)
    convs("Mixed_7a", ("branch3x3_1", 768, 192, 1), ("branch3x3_2", 192, 320, 3))
    convs("Mixed_7a", ("branch7x7x3_1", 768, 192, 1), ("branch7x7x3_2", 192, 192, (1, 7)))
    convs("Mixed_7a", ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, 3))
    for block, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs(block, ("branch1x1", cin, 320, 1), ("branch3x3_1", cin, 384, 1))
        convs(block, ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)))
        convs(block, ("branch3x3dbl_1", cin, 448, 1), ("branch3x3dbl_2", 448, 384, 3))
        convs(block, ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)))
        convs(block, ("branch_pool", cin, 192, 1))
    linear(layout, "fc", 2048, 1000)
    return layout


def torchvision_layout(name: str) -> Layout:
    if name == "alexnet":
        return alexnet_layout()
    if name.startswith("vgg"):
        return vgg_layout(name)
    if name in RESNETS:
        return resnet_layout(name)
    if name in DENSENETS:
        return densenet_layout(name)
    return googlenet_layout() if name == "googlenet" else inception_v3_layout()


def tensors(layout: Layout, device: str = "meta") -> dict[str, torch.Tensor]:
    """Tensors of the layout's shapes: on the meta device (no memory), or real ones on the CPU
    scaled so that activations stay near 1 through deep stacks."""
    generator = torch.Generator().manual_seed(0)
    result = {}
    for key, shape in layout.items():
        if key.endswith(COUNTER):
            result[key] = torch.zeros(shape, dtype=torch.long, device=device)
        elif device == "meta":
            result[key] = torch.empty(shape, device="meta")
        elif key.endswith("running_var"):
            result[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 10
            result[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
    return result
