"""Explain topic 8, global average pooling vs a fully connected head: the same small conv
feature extractor trained on the real Fashion-MNIST (through cnnlab's Trainer) with a NiN-style
head and with a flatten + fully connected one, their parameters counted and accuracies compared.
"""

from __future__ import annotations

from torch import nn

from cnnlab.explain.figures import save_bars
from cnnlab.explain.topic import Context, Finding, percent, topic
from cnnlab.explain.training import count_params, load_fashion_mnist, train_with_adam
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead


def _extractor(width: int) -> nn.Sequential:
    """Six conv-BN-ReLU layers, three of them stride 2: 28x28 -> 4 x width channels at 4x4."""
    return nn.Sequential(
        ConvNormAct(1, width, 3, 1, 1),
        ConvNormAct(width, 2 * width, 3, 2, 1),
        ConvNormAct(2 * width, 2 * width, 3, 1, 1),
        ConvNormAct(2 * width, 4 * width, 3, 2, 1),
        ConvNormAct(4 * width, 4 * width, 3, 1, 1),
        ConvNormAct(4 * width, 4 * width, 3, 2, 1),
    )


@topic(
    8,
    "global-pooling",
    "Global average pooling vs a fully connected head",
    "A global-average-pooling head needs a tiny fraction of a fully connected head's parameters "
    "and classifies about as well.",
    """Network in Network (Lin, Chen, Yan, 2014) ends with one feature map per class, averaged
    over the image, instead of fully connected layers on the flattened maps, which held most of
    the parameters of AlexNet-style networks and over-fitted. The experiment trains the same
    small conv feature extractor (six conv-BN-ReLU layers to 32 maps of 4x4) twice on
    Fashion-MNIST, with the same optimiser, rate and epochs: once with a NiN-style head (global
    average pooling and one linear map to the 10 classes, the same function as a 1x1 conv to 10
    maps followed by the average) and once with a flatten + fully connected head (512 -> 128 ->
    10). It counts the parameters of each head and model and compares test accuracy; 'comparable'
    means within 2 percentage points.""",
)
def global_pooling(ctx: Context) -> Finding:
    data = load_fashion_mnist(ctx)
    width, hidden = 8, 128
    images, epochs, test = (3000, 6, 2000) if ctx.quick else (20000, 12, 10000)
    heads = {
        "GAP head": lambda: GlobalPoolHead(4 * width, 10),
        "FC head": lambda: nn.Sequential(
            nn.Flatten(1),
            nn.Linear(4 * width * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 10),
        ),
    }
    rows = {}
    for name, make_head in heads.items():
        ctx.manual_seed(1)  # the same starting extractor for both heads
        model = nn.Sequential(_extractor(width), make_head())
        ctx.log(f"{name}: training on {images} images for {epochs} epochs")
        result = train_with_adam(ctx, model, data, images, test, epochs, lr=2e-3, batch_size=64)
        rows[name] = {
            "head_params": count_params(model[1]),
            "model_params": count_params(model),
            "test_acc": result.test_acc,
            "train_acc": result.train_acc,
        }
    gap, fc = rows["GAP head"], rows["FC head"]
    share = gap["head_params"] / fc["head_params"]
    difference = gap["test_acc"] - fc["test_acc"]  # positive: GAP more accurate
    comparable = difference >= -0.02
    few = share < 0.05
    figures = save_bars(
        ctx.figure_path("head-parameters"),
        {name: row["head_params"] for name, row in rows.items()},
        "Parameters of the classifier head",
        "parameters (log scale)",
        log_y=True,
    ) + save_bars(
        ctx.figure_path("accuracy"),
        {name: 100 * row["test_acc"] for name, row in rows.items()},
        f"Test accuracy, {images} training images, {epochs} epochs",
        "test accuracy (%)",
    )
    verdict = (
        f"The GAP head has {gap['head_params']:,} parameters, {100 * share:.2f}% of the FC "
        f"head's {fc['head_params']:,} ({'under' if few else 'not under'} the 5% asked; models "
        f"{gap['model_params']:,} vs {fc['model_params']:,}). Test accuracy: GAP "
        f"{percent(gap['test_acc'])}, FC {percent(fc['test_acc'])}: GAP is "
        f"{100 * abs(difference):.1f} points {'more' if difference >= 0 else 'less'} accurate, "
        f"{'comparable' if comparable else 'not comparable'} by the measure used here (at most "
        f"2 points below FC). On its training images GAP reached {percent(gap['train_acc'])} and "
        f"FC {percent(fc['train_acc'])}."
    )
    return Finding(
        numbers={
            **{name.split()[0].lower(): row for name, row in rows.items()},
            "head_param_share": share,
            "test_acc_difference": difference,
            "comparable_margin": 0.02,
            "train_images": images,
            "epochs": epochs,
        },
        holds=comparable and few,
        verdict=verdict,
        figures=figures,
    )
