"""What a finished run leaves behind: final weights, the final evaluation, pictures, a summary."""

from __future__ import annotations

from cnnlab.reports.plots import plot_confusion, plot_curves
from cnnlab.runs.weights import save_weights
from cnnlab.version import __version__


def weights_metadata(trainer) -> dict:
    """Everything needed to rebuild the model and feed it images the way it was trained."""
    config, data = trainer.config, trainer.data
    return {
        "model": config.model,
        "options": config.model_options,
        "num_classes": trainer.num_classes,
        "in_channels": data.train.image_size[0],
        "classes": data.classes,
        "dataset": config.dataset,
        "image_size": list(data.train.image_size),
        "input_size": config.resize,
        "mean": data.mean,
        "std": data.std,
        "cnnlab_version": __version__,
    }


def batch_text(trainer) -> str:
    """The global batch, and under torchrun how the processes shared it."""
    size, ranks = trainer.config.batch_size, trainer.ranks.world_size
    if ranks == 1:
        return str(size)
    synced = ", BatchNorm synchronised" if trainer.config.sync_bn else ""
    return f"{size} ({ranks} processes x {size // ranks}{synced})"


def write_final_report(trainer, final_set, evaluation) -> None:
    run, config, classes = trainer.run, trainer.config, trainer.data.classes
    save_weights(run.weights, trainer.eval_model, weights_metadata(trainer))
    if trainer.history:
        plot_curves(
            trainer.history, run.path / "curves.png", title=f"{config.model} on {config.dataset}"
        )
    lines = [
        f"cnnlab {__version__}: {config.model} on {config.dataset}",
        f"epochs run: {len(trainer.history)} of {config.epochs}; optimizer {config.optimizer}, "
        f"lr {config.lr}, batch {batch_text(trainer)}, input {config.resize}x{config.resize}, "
        f"schedule {config.schedule}, augment {config.augment}",
        f"parameters: {sum(p.numel() for p in trainer.model.parameters()):,} "
        f"(trainable {sum(p.numel() for p in trainer.model.parameters() if p.requires_grad):,})",
        f"training time: {sum(r['seconds'] for r in trainer.history):.1f} s",
    ]
    skipped = sum(r.get("skipped_steps", 0) for r in trainer.history)
    if skipped:
        lines.append(f"non-finite steps skipped (--nonfinite skip): {skipped}")
    reached = [r for r in trainer.history if "time_to_target_s" in r]
    if reached:
        first = reached[0]
        lines.append(
            f"time to validation accuracy {config.target_acc}: {first['time_to_target_s']} s "
            f"from process start (epoch {first['epoch']})"
        )
    if evaluation is not None:
        split = final_set.name
        run.write_json("evaluation.json", {"split": split, **evaluation.to_dict(classes)})
        plot_confusion(evaluation.confusion, classes, run.path / "confusion.png", title=split)
        lines += [
            f"final evaluation on {split}: loss {evaluation.loss:.4f}, "
            f"accuracy {evaluation.acc:.4f} ({evaluation.count:,} images)",
            "per-class accuracy:",
        ]
        width = max(len(name) for name in classes)
        lines += [
            f"  {name.ljust(width)}  {acc:.4f}"
            for name, acc in zip(classes, evaluation.per_class.tolist(), strict=True)
        ]
    timeline = ", ".join(
        f"{stage.replace('_', ' ')} {t:.1f} s" for stage, t in trainer.timeline.items()
    )
    lines.append(f"seconds from process start: {timeline}")
    run.write_text("summary.txt", "\n".join(lines) + "\n")
    trainer.mark("report_written")
    run.write_json("timeline.json", trainer.timeline)
    for line in lines[4:]:
        trainer.echo(line)
    if evaluation is not None:
        kind = "test" if final_set is trainer.data.test else "validation"
        trainer.echo(f"{kind} accuracy {evaluation.acc:.4f}; run folder: {run.path}")
    else:
        trainer.echo(f"no test or validation split to evaluate; run folder: {run.path}")
