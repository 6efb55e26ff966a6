"""Seed-to-seed noise: what a claim's verdict is judged against, measured per kind of row by `make calibrate`.

Rows differ in how much they vary between pretraining seeds, so noise is calibrated per kind of row (`KINDS`),
one row of each (`CALIBRATION_ROWS`), stored per preset in `experiments/verdicts/calibration.json`: per metric the SD of
the difference between two pretraining seeds of one row, its degrees of freedom, every seed's value (the SD of a
derived quantity, a gap between two metrics, comes from them), the machine kind it ran on and what a row cost.
How a verdict uses it: experiments.verdicts.judging and docs/verdicts.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from experiments.verdicts.claims import Quantity

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
MAX_DEGREES = 1000  # an SD recorded without its degrees of freedom (older files) is taken as well known

# The kinds of row whose seed-to-seed noise is calibrated separately, each by one row (CALIBRATION_ROWS below).
KINDS = {"absolute-mlm": "absolute-position MLM rows", "disentangled-mlm": "disentangled-attention MLM rows",
         "electra-rtd": "ELECTRA-style RTD rows", "debertav3-rtd": "DeBERTaV3-style RTD rows"}
# A kind not calibrated borrows the noise of the nearest one (same objective, the other attention), marked so.
NEAREST_KIND = {"absolute-mlm": "disentangled-mlm", "disentangled-mlm": "absolute-mlm",
                "electra-rtd": "debertav3-rtd", "debertav3-rtd": "electra-rtd"}
LEGACY_KINDS = {"rtd": "electra-rtd"}  # calibration files written before the two RTD kinds were told apart


def row_kind(config: dict) -> str:
    """A row's kind from its config (as a row file stores it): by objective, then by attention."""
    disentangled = config.get("encoder", {}).get("attention") == "disentangled"
    if config.get("objective") == "rtd":
        return "debertav3-rtd" if disentangled else "electra-rtd"
    return "disentangled-mlm" if disentangled else "absolute-mlm"


def t_quantile(probability: float, degrees: int) -> float:
    return float(stats.t.ppf(probability, degrees))


def base_metric(metric: str) -> str:
    """downstream_avg@0.25 is calibrated as downstream_avg."""
    return metric.split("@")[0]


@dataclass(frozen=True)
class Noise:
    """The calibrated seed-to-seed noise of one kind of row (or of a claim's kinds) at one preset."""

    preset: str
    paired_sd: dict[str, float]  # metric -> SD of the difference between two pretraining seeds of one row
    source: str  # e.g. "calibration 2026-11-27 of absolute-position MLM rows"
    degrees: dict[str, int] = field(default_factory=dict)  # metric -> degrees of freedom of its SD
    # metric -> its value per calibration seed: the SD of a derived quantity (a gap between two metrics) from them
    seed_values: dict[str, list[float]] = field(default_factory=dict)
    machine: str = ""  # where it was measured: the machine kind and precision (experiments.running.hardware.machine_kind)
    borrowed: str = ""  # the claim's kinds that were not calibrated and borrowed this noise

    @property
    def never_decides(self) -> bool:
        return self.preset == "smoke"

    def for_kinds(self, kinds: set[str]) -> "Noise":
        """A figure given for every kind (a test's, or one the caller chose) applies to any claim."""
        return self

    def sd(self, quantity: Quantity) -> tuple[float, int] | None:
        """(SD, degrees of freedom) of `quantity`'s per-seed values, as calibrated; None if not calibrated."""
        if not quantity.minus:  # a difference between two rows' values of one metric
            metric = base_metric(quantity.metric)
            if metric not in self.paired_sd:
                return None
            sd = self.paired_sd[metric] / (1.0 if quantity.rows == 2 else math.sqrt(2.0))
            return sd, self.degrees.get(metric, MAX_DEGREES)
        columns = [quantity.metric, quantity.minus]
        columns += [f"{m}@init" for m in columns] if quantity.from_init else []
        if not all(len(self.seed_values.get(m, [])) >= 2 for m in columns):
            return None
        values = [np.asarray(self.seed_values[m], float) for m in columns]
        gaps = values[0] - values[1] - ((values[2] - values[3]) if quantity.from_init else 0.0)
        sd = float(np.std(gaps, ddof=1)) * (math.sqrt(2.0) if quantity.rows == 2 else 1.0)
        return sd, len(gaps) - 1


@dataclass(frozen=True)
class Calibration:
    """A preset's calibrated noise, one Noise per kind of row (a kind not calibrated is absent)."""

    preset: str
    kinds: dict[str, Noise]

    @property
    def never_decides(self) -> bool:
        return self.preset == "smoke"

    @property
    def source(self) -> str:
        if not self.kinds:
            return "not calibrated"
        return "; ".join(f"{KINDS[kind]}: {noise.source}" for kind, noise in self.kinds.items())

    def for_kinds(self, kinds: set[str]) -> Noise:
        """The noise of a claim whose rows are of `kinds`: each kind's own, or the nearest calibrated kind's
        (borrowed, and marked); per metric the largest SD, with its degrees of freedom."""
        figures, borrowed = [], []
        for kind in sorted(kinds):
            if kind in self.kinds:
                figures.append(self.kinds[kind])
            elif NEAREST_KIND.get(kind) in self.kinds:
                figures.append(self.kinds[NEAREST_KIND[kind]])
                borrowed.append(f"{KINDS.get(kind, kind)} not calibrated: borrowed from {KINDS[NEAREST_KIND[kind]]}")
        what = " and ".join(KINDS.get(kind, kind) for kind in sorted(kinds)) or "no rows"
        if not figures:
            return Noise(self.preset, {}, f"not calibrated for {what}")
        paired_sd, degrees = {}, {}
        for metric in set.intersection(*(set(noise.paired_sd) for noise in figures)):
            widest = max(figures, key=lambda noise: noise.paired_sd[metric])
            paired_sd[metric] = widest.paired_sd[metric]
            if metric in widest.degrees:
                degrees[metric] = widest.degrees[metric]
        # seed values of one kind only: a derived quantity's SD cannot be pooled across kinds from them
        seed_values = figures[0].seed_values if len({id(f) for f in figures}) == 1 else {}
        sources = sorted({noise.source for noise in figures})
        return Noise(self.preset, paired_sd, ", ".join(sources) + (" (the larger)" if len(figures) > 1 else ""),
                     degrees, seed_values, ", ".join(sorted({f.machine for f in figures if f.machine})),
                     "; ".join(borrowed))


def load_calibration(preset: str, path: Path = CALIBRATION_FILE) -> Calibration:
    """The preset's entry of calibration.json: `{"kinds": {kind: {...}}}`, or the older single entry (one
    paired SD pooled over its `rows`), which is read as the noise of each kind those rows are."""
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(preset) or {}
    if "kinds" in entry:
        kinds = {LEGACY_KINDS.get(kind, kind): _noise(preset, LEGACY_KINDS.get(kind, kind), figures)
                 for kind, figures in entry["kinds"].items()}
    else:
        rows = entry.get("rows", [])
        kinds = {kind: _noise(preset, kind, entry) for kind, (experiment, row) in CALIBRATION_ROWS.items()
                 if f"{experiment}/{row}" in rows}
    return Calibration(preset, {kind: noise for kind, noise in kinds.items() if noise.paired_sd})


def _noise(preset: str, kind: str, figures: dict) -> Noise:
    machine = figures.get("machine_kind") or figures.get("hardware", "")
    return Noise(preset, dict(figures.get("paired_sd") or {}),
                 f"calibration {figures.get('date', '?')} of {KINDS.get(kind, kind)}",
                 dict(figures.get("degrees_of_freedom", {})), dict(figures.get("seed_values", {})), machine)


def detectable_effect(noise: Noise, metric: str, seeds: int) -> float:
    """The smallest paired effect whose 95% interval excludes zero at `seeds` pretraining seeds, the calibration's
    SD taken as the pooled one and its degrees of freedom growing with the seeds."""
    sd, degrees = noise.sd(Quantity(metric))
    return t_quantile(0.975, degrees + seeds - 1) * sd / math.sqrt(seeds)


# -- calibration ----------------------------------------------------------------------------------------

# One row of each kind, trained with several pretraining seeds (each fine-tuned with the preset's fine-tuning
# seeds); their files are ordinary rows of those tables, so the seeds also serve the tables.
CALIBRATION_ROWS = {"absolute-mlm": ("ablation-nsp", "DOC-SENTENCES"),
                    "disentangled-mlm": ("ablation-deberta", "DeBERTa"),
                    "electra-rtd": ("ablation-electra-efficiency", "ELECTRA"),
                    "debertav3-rtd": ("ablation-embedding-sharing", "GDES")}
# figures that are not measurements with a seed-to-seed spread (settings, counts, the corpus's count models)
NOT_NOISE = ("parameters", "peak_lr", "epochs", "heldout_masked_tokens", "unk_rate", "mlm_unigram_acc",
             "unigram_loss", "bigram_loss")


def paired_sd(values_by_row: dict[str, dict[str, list[float]]]) -> tuple[dict[str, float], dict[str, int]]:
    """Per metric: the SD of the difference between two independent pretraining seeds, sqrt(2) x the
    per-seed SD pooled over the calibration rows (each row's own mean removed), and its degrees of freedom."""
    pooled: dict[str, list[float]] = {}
    for values in values_by_row.values():
        for metric, seeds in values.items():
            if len(seeds) >= 2 and "@" not in metric and not metric.endswith(("_majority", "_ft_range")) \
                    and metric not in NOT_NOISE:
                pooled.setdefault(metric, []).extend(np.asarray(seeds, float) - np.mean(seeds))
    degrees = {m: sum(len(v[m]) - 1 for v in values_by_row.values() if len(v.get(m, [])) >= 2) for m in pooled}
    sd = {m: round(math.sqrt(2 * float(np.sum(np.square(r))) / degrees[m]), 5) for m, r in pooled.items() if degrees[m]}
    return sd, {m: degrees[m] for m in sd}


def calibration_entry(row: str, values: dict[str, list[float]], results: dict[int, dict], finetune_seeds: int,
                      commit: str, hardware: str, machine_kind: str = "", row_seconds: list[float] = ()) -> dict:
    """One kind's entry of calibration.json from its calibration row: `values` (metric -> one value per
    pretraining seed), its row files by seed (their seconds: what each part of a row cost) and each seed's whole
    time (experiments.running.hardware.row_seconds)."""
    import time

    sd, degrees = paired_sd({row: values})
    parts = ("pretraining", "word_order", "minimal_pairs", "probes")
    seconds = {part: [r.get("seconds", {}).get(part) for r in results.values()] for part in parts}
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "row": row, "pretraining_seeds": len(results),
            "finetune_seeds": finetune_seeds, "paired_sd": sd, "degrees_of_freedom": degrees, "hardware": hardware,
            "machine_kind": machine_kind,
            # every metric's value per seed: the SD of a quantity derived from several (a gap) comes from them
            "seed_values": {metric: [round(v, 6) for v in seeds] for metric, seeds in values.items()
                            if len(seeds) == len(results)},
            "row_seconds": list(row_seconds),
            "seconds": {part: times for part, times in seconds.items() if None not in times}}


def describe_calibration(preset: str, entries: dict[str, dict], path: Path = CALIBRATION_FILE) -> str:
    """Per kind just calibrated: each metric's paired SD and the minimum detectable effect at 1, 3 and 5
    pretraining seeds; which probe feature varied least between seeds; what the evaluations cost a row."""
    from experiments.evaluations.probes import FEATURES, PROBE_FEATURE

    calibration, lines = load_calibration(preset, path), []
    for kind, entry in entries.items():
        noise = calibration.kinds.get(kind)
        lines.append(f"{KINDS[kind]} ({entry['row']}, {entry['pretraining_seeds']} pretraining seeds x "
                     f"{entry['finetune_seeds']} fine-tuning seeds):")
        if noise is None:
            lines.append("  no metric varied between seeds")
            continue
        lines.append(f"  {'metric':30} {'paired SD':>10} {'df':>3}  minimum detectable effect (95%) at 1 / 3 / 5 seeds")
        for metric in sorted(noise.paired_sd):
            lines.append(f"  {metric:30} {noise.paired_sd[metric]:10.4f} {noise.degrees.get(metric, 0):3d}  "
                         + " / ".join(f"{detectable_effect(noise, metric, n):.4f}" for n in (1, 3, 5)))
        features = {f: noise.paired_sd[f"probe_avg_{f}"] for f in FEATURES if f"probe_avg_{f}" in noise.paired_sd}
        if features:
            lines.append("  linear-probe features, paired SD of probe_avg: "
                         + ", ".join(f"{f.replace('_', ' ')} {sd:.2f}" for f, sd in features.items())
                         + f"; steadiest: {min(features, key=features.get)} (the table uses {PROBE_FEATURE})")
        seconds = {part: float(np.mean(times)) for part, times in entry.get("seconds", {}).items()}
        if "pretraining" in seconds and len(seconds) > 1:
            extra = {part: t for part, t in seconds.items() if part != "pretraining"}
            lines.append("  evaluations per row: " + ", ".join(f"{part.replace('_', ' ')} {t:.0f} s" for part, t in extra.items())
                         + f": {100 * sum(extra.values()) / seconds['pretraining']:.1f}% of its pretraining "
                         f"({seconds['pretraining']:.0f} s)")
    return "\n".join(lines)


def save_calibration(preset: str, kinds: dict[str, dict], path: Path = CALIBRATION_FILE) -> None:
    """Store each kind's figures in the preset's entry, keeping the kinds calibrated before (an older single
    entry is replaced)."""
    from experiments.running.durable import write_atomically

    calibration = json.loads(path.read_text()) if path.exists() else {}
    entry = calibration.get(preset) or {}
    calibration[preset] = {"kinds": {**(entry.get("kinds") or {}), **kinds}}
    write_atomically(path, (json.dumps(calibration, indent=2, sort_keys=True) + "\n").encode())
