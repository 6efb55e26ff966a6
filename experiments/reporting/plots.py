"""A table's two pictures, drawn from its rows and its verdicts.

- `curves.png`: what each row learned during pretraining, one panel per family of curve (held-out MLM loss, the
  generator's for an RTD row; the discriminator's held-out AUC), one colour per row, legends inside the panels.
- `metrics.png`: first the verdicts, each claim's comparisons as the effect with its own 95% interval against
  the claim's threshold (or margin band), so that "inconclusive" is seen as an interval across the line; then
  each metric by row (mean, with the seeds' range), axes zoomed to the rows' values, and the chance line where
  the metric has one (a task's majority class, 50 for the minimal pairs, 0.5 for an AUC). The title names the
  table, the preset and the seeds.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from experiments.running.durable import write_atomically

CURVE_FAMILIES = {  # panel title -> the logged columns it draws (first found per row)
    "held-out MLM loss (an RTD row: its generator's)": ("val/mlm_loss", "val/generator_mlm_loss"),
    "discriminator AUC, held out": ("val/disc_auc",),
}


def chance_line(metric: str, majority: dict[str, float]) -> tuple[float, str] | None:
    """The value a model that learned nothing scores on `metric`, where there is one."""
    base = metric.split("@")[0]
    if f"{base.removesuffix('_probe')}_majority" in majority:
        return majority[f"{base.removesuffix('_probe')}_majority"], "majority class"
    if base.startswith("minimal_pairs"):
        return 50.0, "chance"
    if base.startswith("disc_auc"):
        return 0.5, "chance"
    return None


def draw(experiment, rows: dict, directory: Path, metrics: list[str], majority: dict[str, float],
         unlearned: set[str], preset: str = "", claims: list = ()) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = [r.name for r in experiment.rows if r.name in rows]
    if not ordered:
        return []
    palette = plt.get_cmap("tab10" if len(experiment.rows) <= 10 else "tab20")  # one colour per row, none repeated
    colours = {name: palette(i) for i, name in enumerate(r.name for r in experiment.rows)}
    seeds = sorted({len(rows[r].seeds) for r in ordered})
    title = f"{experiment.title} at `{preset}`, {'-'.join(map(str, seeds))} seed{'s' * (seeds != [1])}"
    written = []
    if _curves(plt, experiment, rows, ordered, colours, title, directory / "curves.png"):
        written.append("curves.png")
    shown = [m for m in metrics if any(m in rows[r].values for r in ordered) and not m.endswith("ppl")]
    decided = [c for c in claims if c.get("comparisons") and c["verdict"] != "not measured" and c["source"] == "paper"]
    if shown or decided:
        _metrics(plt, rows, ordered, colours, shown, decided, majority, unlearned, title, directory / "metrics.png")
        written.append("metrics.png")
    return written


def _curves(plt, experiment, rows, ordered, colours, title, path: Path) -> bool:
    import pandas as pd

    frames = {}
    for name in ordered:
        for i, work in enumerate(rows[name].curves):
            logs = sorted(work.glob("log-*/metrics.csv"))
            if logs:
                frames[(name, i)] = pd.concat([pd.read_csv(log) for log in logs]).sort_values("step")
    families = [(label, columns) for label, columns in CURVE_FAMILIES.items()
                if any(c in frame for frame in frames.values() for c in columns)]
    if not families:
        return False
    figure, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.2), squeeze=False)
    for axis, (label, columns) in zip(axes[0], families):
        for (name, seed), frame in frames.items():
            column = next((c for c in columns if c in frame), None)
            if column is None:
                continue
            points = frame[["step", column]].dropna()
            axis.plot(points["step"], points[column], marker="o", markersize=3, color=colours[name],
                      linestyle="-" if seed == 0 else ":", label=name if seed == 0 else None)
        axis.set_xlabel("optimizer step"), axis.set_title(label, fontsize=9)
        axis.legend(fontsize=7, loc="best", frameon=True)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(figure, path)
    return True


def _metrics(plt, rows, ordered, colours, shown, claims, majority, unlearned, title, path: Path) -> None:
    columns = min(4, max(1, len(shown)))
    grid_rows = math.ceil(len(shown) / columns) + (1 if claims else 0)
    figure = plt.figure(figsize=(3.6 * columns, 3.3 * grid_rows + (0.35 * sum(len(c["comparisons"]) for c in claims)
                                                                      if claims else 0)))
    heights = ([max(2.0, 0.45 * sum(len(c["comparisons"]) for c in claims))] if claims else []) + \
        [3.0] * (grid_rows - (1 if claims else 0))
    grid = figure.add_gridspec(grid_rows, columns, height_ratios=heights)
    if claims:
        _verdicts(figure.add_subplot(grid[0, :]), claims)
    first = 1 if claims else 0
    for index, metric in enumerate(shown):
        axis = figure.add_subplot(grid[first + index // columns, index % columns])
        means = np.array([rows[r].mean(metric) for r in ordered])
        low = np.array([min(rows[r].values.get(metric, [np.nan])) for r in ordered])
        high = np.array([max(rows[r].values.get(metric, [np.nan])) for r in ordered])
        axis.errorbar(range(len(ordered)), means, yerr=[means - low, high - means], fmt="none", ecolor="black",
                      capsize=3, linewidth=1)
        for i, name in enumerate(ordered):  # a row that did not learn: hollow, it decides nothing
            axis.scatter([i], [means[i]], s=60, color=colours[name] if name not in unlearned else "white",
                         edgecolors=colours[name], linewidths=1.5, zorder=3)
        values = [v for v in np.concatenate([low, high]) if np.isfinite(v)]
        chance = chance_line(metric, majority)
        span = (max(values) - min(values) or abs(max(values)) * 0.05 or 1.0) if values else 1.0
        if chance is not None and values and min(values) - 3 * span <= chance[0] <= max(values) + 3 * span:
            values.append(chance[0])  # near the rows: drawn, and the axis takes it in
            span = max(values) - min(values) or span  # a row at chance exactly keeps the span above
        if chance is not None:
            axis.axhline(chance[0], color="grey", linestyle="--", linewidth=1, label=f"{chance[1]} {chance[0]:.3g}")
            axis.legend(fontsize=6, loc="best")
        if values:  # zoomed to the rows, so that their differences show; a chance line far off is named in the legend
            axis.set_ylim(min(values) - 0.25 * span, max(values) + 0.25 * span)
        axis.set_xticks(range(len(ordered)), [f"{n} (did not learn)" if n in unlearned else n for n in ordered],
                        rotation=40, ha="right", fontsize=7)
        axis.set_title(metric, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(figure, path)


VERDICT_COLOURS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:grey"}


def _verdicts(axis, claims: list) -> None:
    """Each paper claim's comparisons: the mean effect (positive = in the claim's favour) with its 95% interval,
    the claim's threshold as a line, an equivalence margin as a band; coloured by the comparison's verdict."""
    y, labels = 0, []
    for claim in claims:
        for comparison in claim["comparisons"]:
            mean, low, high = comparison["mean"], comparison["low"], comparison["high"]
            colour = VERDICT_COLOURS.get(comparison["verdict"], "tab:grey")
            if mean is not None:
                if low is not None:
                    axis.plot([low, high], [y, y], color=colour, linewidth=3, solid_capstyle="butt")
                axis.scatter([mean], [y], color="black", s=18, zorder=3)
            if comparison["within"] is not None:
                axis.fill_betweenx([y - 0.4, y + 0.4], -comparison["within"], comparison["within"], color="tab:blue",
                                   alpha=0.12)
            else:
                axis.plot([comparison["threshold"]] * 2, [y - 0.4, y + 0.4], color="tab:blue", linewidth=1.5)
            labels.append(f"{comparison['label']} ({claim['metric']})")
            y += 1
    axis.axvline(0, color="black", linewidth=0.6)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("effect in the claim's favour, with its 95% interval (green holds, red does not, grey "
                    "inconclusive; blue: the claim's threshold or margin)", fontsize=7)
    axis.grid(axis="x", alpha=0.3)


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    figure.savefig(image, dpi=110, format="png")
    plt.close(figure)
    write_atomically(path, image.getvalue())
