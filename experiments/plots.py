"""A table's two pictures, drawn from its rows: `curves.png` (held-out MLM loss during pretraining, from each
row's logs) and `metrics.png` (each metric by row, with spread and baselines)."""
from __future__ import annotations

import io
import math
from pathlib import Path

from experiments.durable import write_atomically


def draw(experiment, rows: dict, directory: Path, metrics: list[str], majority: dict[str, float],
           unlearned: set[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    written = []
    ordered = [r.name for r in experiment.rows if r.name in rows]
    if not ordered:
        return written
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in ordered:
        for i, work in enumerate(rows[name].curves):
            logs = sorted(work.glob("log-*/metrics.csv"))
            if not logs:
                continue
            frame = pd.concat([pd.read_csv(log) for log in logs]).sort_values("step")
            column = next((c for c in ("val/mlm_loss", "val/generator_mlm_loss") if c in frame), None)
            if column is None:
                continue
            points = frame[["step", column]].dropna()
            axis.plot(points["step"], points[column], marker="o", label=name if i == 0 else None,
                      color=f"C{ordered.index(name)}")
    axis.set_xlabel("optimizer step"), axis.set_ylabel("held-out MLM loss"), axis.set_title(experiment.title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout(), save_figure(figure, directory / "curves.png")
    written.append("curves.png")
    metrics = [m for m in metrics if any(m in rows[r].values for r in ordered)
               and not m.endswith("ppl")]
    if not metrics:  # rows that measured none of the table's metrics: nothing to chart
        return written
    columns = min(4, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(3.4 * columns, 3.2 * grid_rows), squeeze=False)
    for axis in axes.flat[len(metrics):]:
        axis.axis("off")
    for axis, metric in zip(axes.flat, metrics):
        means = [rows[r].mean(metric) for r in ordered]
        errors = [rows[r].std(metric) for r in ordered]
        bars = axis.bar(range(len(ordered)), means, yerr=errors, color=[f"C{i}" for i in range(len(ordered))],
                        capsize=3)
        for bar, name in zip(bars, ordered):  # a row that did not learn: hatched, it decides nothing
            if name in unlearned:
                bar.set_hatch("//"), bar.set_alpha(0.5)
        baseline = f"{metric.removesuffix('_probe')}_majority"  # a probe has its task's majority class
        if baseline in majority:
            axis.axhline(majority[baseline], color="black", linestyle="--", linewidth=1, label="majority class")
            axis.legend(fontsize=6)
        axis.set_xticks(range(len(ordered)), [f"{n} (did not learn)" if n in unlearned else n for n in ordered],
                        rotation=45, ha="right", fontsize=7)
        axis.set_title(metric, fontsize=9)
    figure.tight_layout(), save_figure(figure, directory / "metrics.png")
    written.append("metrics.png")
    return written


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    figure.savefig(image, dpi=110, format="png")
    plt.close(figure)
    write_atomically(path, image.getvalue())
