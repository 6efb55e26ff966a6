"""A paper's claims as checks on measured numbers: one class per kind of claim.

Each claim reads some rows' metrics and reduces to one or more `Comparison`s: per pretraining seed, the value
of the quantity it compares (a difference between two rows, a gap between two metrics of one row, or the
difference between two rows' gaps), signed so that positive favours the claim, and the threshold the claim says
that quantity is above (or, for an equivalence, the margin it stays within). `experiments.verdicts.judging` judges each
comparison against measured noise; a claim of several comparisons (a ranking) holds when every one holds.

A margin is never silent: a claim with one names where it comes from (`margin_source`), the paper's own figures
or the suite's stated choice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

DOWNSTREAM_AVERAGE, PROBE_AVERAGE = "downstream_avg", "probe_avg"
HELDOUT_MLM, MINIMAL_PAIRS, ORDER_AVERAGE = "mlm_loss", "minimal_pairs", "order_avg"
DISCRIMINATOR_AUC = "disc_auc_bigram"  # experiments.evaluations.bigram_task_auc
# the paper's columns that are not downstream scores (they never enter the paper's downstream average)
NOT_DOWNSTREAM = ("ppl", "peak lr")


def lower_is_better(metric: str) -> bool:
    return metric.split("@")[0].endswith(("loss", "ppl"))


@dataclass(frozen=True)
class Quantity:
    """What a comparison's per-seed values are, so that the noise it is judged against is that of the same
    quantity: `metric` (less `minus`: a gap between two metrics of one row, with `from_init` its change since
    initialisation) of one row (`rows=1`), or the difference of that between two rows (`rows=2`)."""

    metric: str
    minus: str = ""
    rows: int = 2
    from_init: bool = False


@dataclass(frozen=True)
class Comparison:
    label: str  # e.g. "DOC-SENTENCES - FULL-SENTENCES"
    values: np.ndarray  # one per pretraining seed the rows share, positive = in the claim's favour
    quantity: Quantity
    threshold: float = 0.0  # the claim says the mean is at least this (-margin: "no worse than by margin")
    within: float | None = None  # an equivalence: the claim says |mean| <= within
    paper: float | None = None  # the paper's own value of this comparison, when it reports one on this scale


class Rows:
    """The measured rows a claim reads: per row, its seeds and per metric one value per seed (RowSummary)."""

    def __init__(self, rows: Mapping, order: list[str]):
        self.rows, self.order = rows, order

    def has(self, row: str, metric: str) -> bool:
        return row in self.rows and metric in self.rows[row].values

    def by_seed(self, row: str, metric: str) -> dict[int, float]:
        return dict(zip(self.rows[row].seeds, self.rows[row].values.get(metric, [])))

    def mean(self, row: str, metric: str) -> float:
        return float(np.mean(self.rows[row].values[metric]))


PaperValue = Callable[[str, str], "float | None"]  # (row, metric) -> the paper's figure on our metric's scale


def _signed(metric: str) -> float:
    return -1.0 if lower_is_better(metric) else 1.0


@dataclass(frozen=True)
class Claim:
    """What every claim has; the subclasses say which rows it reads and what it compares."""

    text: str
    metric: str
    source: str = "paper"  # paper: the paper states it about what it measured; proxy: the suite's stand-in
    margin: float = 0.0
    margin_source: str = ""  # where a non-zero margin comes from: the paper's figures, or the suite's choice
    measures: str = ""  # for a twin: what its metric measures, and how that differs from the paper's claim

    def needed(self, order: list[str]) -> list[tuple[str, str]]:
        """Every (row, metric) the claim reads."""
        raise NotImplementedError

    def comparisons(self, rows: Rows, paper: PaperValue) -> list[Comparison]:
        raise NotImplementedError

    def read_rows(self, order: list[str]) -> list[str]:
        return list(dict.fromkeys(row for row, _ in self.needed(order)))

    def on_metric(self, metric: str, text: str, measures: str) -> "Claim":
        """The same claim on another metric (a proxy twin); `metric` replaces the downstream average, an early
        point's suffix kept (downstream_avg@0.25 -> probe_avg@0.25)."""
        def swapped(name: str) -> str:
            return name.replace(DOWNSTREAM_AVERAGE, metric, 1) if name.startswith(DOWNSTREAM_AVERAGE) else name

        changes = {"text": text, "metric": swapped(self.metric), "source": "proxy", "measures": measures}
        if getattr(self, "metric_b", ""):
            changes["metric_b"] = swapped(self.metric_b)
        return dataclasses.replace(self, **changes)

    def _pair(self, rows: Rows, a: str, b: str, metric: str, metric_b: str, paper: PaperValue,
              threshold: float, within: float | None = None) -> Comparison:
        """Row a's `metric` less row b's `metric_b`, seed by seed, positive = a better."""
        va, vb = rows.by_seed(a, metric), rows.by_seed(b, metric_b)
        sign = _signed(metric)
        values = np.array([sign * (va[s] - vb[s]) for s in sorted(set(va) & set(vb))])
        pa, pb = paper(a, metric), paper(b, metric_b)
        return Comparison(f"{a} - {b}", values, Quantity(metric), threshold, within,
                          sign * (pa - pb) if pa is not None and pb is not None else None)


@dataclass(frozen=True)
class _TwoRows(Claim):
    """A claim on row a's `metric` against row b's (`metric_b` if given), paired by seed."""

    a: str = ""
    b: str = ""
    metric_b: str = ""

    def needed(self, order):
        return [(self.a, self.metric), (self.b, self.metric_b or self.metric)]


@dataclass(frozen=True)
class AtLeast(_TwoRows):
    """Row a is no worse than row b by more than `margin` (0: at least as good)."""

    def comparisons(self, rows, paper):
        return [self._pair(rows, self.a, self.b, self.metric, self.metric_b or self.metric, paper, -self.margin)]


@dataclass(frozen=True)
class Close(_TwoRows):
    """An equivalence: |a - b| <= margin ("only slight differences", "adds little")."""

    def comparisons(self, rows, paper):
        return [self._pair(rows, self.a, self.b, self.metric, self.metric_b or self.metric, paper, 0.0, self.margin)]


@dataclass(frozen=True)
class Worst(Claim):
    """Row a is the worst among `among` (default: every row): every other row beats it."""

    a: str = ""
    among: tuple[str, ...] = ()

    def needed(self, order):
        return [(r, self.metric) for r in (self.among or order)]

    def comparisons(self, rows, paper):
        return [self._pair(rows, other, self.a, self.metric, self.metric, paper, -self.margin)
                for other in (self.among or rows.order) if other != self.a]


@dataclass(frozen=True)
class Best(Claim):
    """The best row among `among` (default: every row) is one of `winners`: the best winner beats every other row."""

    among: tuple[str, ...] = ()
    winners: tuple[str, ...] = ()

    def needed(self, order):
        return [(r, self.metric) for r in (self.among or order)]

    def comparisons(self, rows, paper):
        among = list(self.among or rows.order)
        top = max(self.winners, key=lambda r: _signed(self.metric) * rows.mean(r, self.metric))
        return [self._pair(rows, top, other, self.metric, self.metric, paper, -self.margin)
                for other in among if other not in self.winners]


@dataclass(frozen=True)
class Order(Claim):
    """Rows `among` are in non-increasing order of quality: each no worse than the next by more than `margin`."""

    among: tuple[str, ...] = ()

    def needed(self, order):
        return [(r, self.metric) for r in self.among]

    def comparisons(self, rows, paper):
        return [self._pair(rows, better, worse, self.metric, self.metric, paper, -self.margin)
                for better, worse in zip(self.among, self.among[1:])]


def _gaps(rows: Rows, row: str, metric: str, minus: str, from_init: bool) -> dict[int, float]:
    """Per seed: metric - minus in one row, less the same gap at initialisation for a `from_init` claim."""
    a, b = rows.by_seed(row, metric), rows.by_seed(row, minus)
    gaps = {s: a[s] - b[s] for s in a if s in b}
    if from_init:
        a0, b0 = rows.by_seed(row, f"{metric}@init"), rows.by_seed(row, f"{minus}@init")
        gaps = {s: g - (a0[s] - b0[s]) for s, g in gaps.items() if s in a0 and s in b0}
    return gaps


@dataclass(frozen=True)
class Gap(Claim):
    """In row a, `metric` - `metric_b` is above `margin` (its change since initialisation, `from_init`)."""

    a: str = ""
    metric_b: str = ""
    from_init: bool = False

    def needed(self, order):
        metrics = (self.metric, self.metric_b)
        return [(self.a, m) for m in metrics + (tuple(f"{m}@init" for m in metrics) if self.from_init else ())]

    def comparisons(self, rows, paper):
        gaps = _gaps(rows, self.a, self.metric, self.metric_b, self.from_init)
        quantity = Quantity(self.metric, self.metric_b, rows=1, from_init=self.from_init)
        what = f"{self.metric} - {self.metric_b}" + (", change since init" if self.from_init else "")
        return [Comparison(f"{self.a}: {what}", np.array([gaps[s] for s in sorted(gaps)]), quantity, self.margin)]


@dataclass(frozen=True)
class GapSmaller(Claim):
    """The gap `metric` - `metric_b` is smaller in row a than in row b, paired by seed."""

    a: str = ""
    b: str = ""
    metric_b: str = ""
    from_init: bool = False

    def needed(self, order):
        metrics = (self.metric, self.metric_b)
        metrics += tuple(f"{m}@init" for m in metrics) if self.from_init else ()
        return [(r, m) for r in (self.a, self.b) for m in metrics]

    def comparisons(self, rows, paper):
        gap_a = _gaps(rows, self.a, self.metric, self.metric_b, self.from_init)
        gap_b = _gaps(rows, self.b, self.metric, self.metric_b, self.from_init)
        values = np.array([gap_b[s] - gap_a[s] for s in sorted(set(gap_a) & set(gap_b))])
        what = f"{self.metric} - {self.metric_b}" + (", change since init" if self.from_init else "")
        quantity = Quantity(self.metric, self.metric_b, rows=2, from_init=self.from_init)
        return [Comparison(f"gap {self.b} - gap {self.a} ({what})", values, quantity, self.margin)]


# --------------------------------------------------------------------------- the twins of a downstream claim

PROBE_MEASURES = ("the frozen encoder's features read by a linear probe on the same tasks: no fine-tuning, so "
                  "the pretraining seed's noise alone; the paper fine-tunes")
MINIMAL_PAIRS_MEASURES = ("whether the encoder prefers held-out sentences to their variants with two adjacent "
                          "words swapped or a word replaced (x100): word order and word choice, not a downstream "
                          "task")
ORDER_MEASURES = ("fine-tuned tasks that a bag of words cannot pass, the mean of part-of-speech tagging on the "
                  "Brown corpus's ambiguous words (`pos_ambiguous`) and SentEval's bigram shift: the nearest the "
                  "offline tasks come to the paper's GLUE and SQuAD, which need word order too")
HELDOUT_MLM_MEASURES = ("the pretraining objective on the same held-out blocks for every row: how well the rows "
                        "model text, not how well they transfer to tasks")
DISCRIMINATOR_MEASURES = ("the discriminator's AUC at telling held-out tokens from replacements drawn by one fixed "
                          "bigram model, the same corruptions for every row: RTD's own task, measured on the "
                          "model the claim fine-tunes, with no fine-tuning noise; not a downstream task")


def twins(claim: Claim, mlm_rows: bool, mlm_twin: bool, discriminator_rows: bool = False) -> list[Claim]:
    """The proxy twins of a claim on the downstream average: on the fine-tuned tasks that need word order
    (`order_avg`; the offline downstream average's sentiment and topic are passed by a bag of words), and on the
    measures precise enough at small scale to decide something: the linear probes' average, and where every row
    it reads is an MLM row (`mlm_rows`) the minimal pairs and (`mlm_twin`: with the same tokenizer, so their
    losses are on one scale) the held-out MLM loss. An RTD row scores minimal pairs and held-out MLM through its
    generator, a smaller model than the discriminator the claim is about, so on those two measures an RTD row
    would lose to an MLM row, or a larger generator win, by construction; the same holds for rows of which one
    decodes with DeBERTa's Enhanced Mask Decoder and the other does not. Where every row is a full ELECTRA
    discriminator trained against generators of one size (`discriminator_rows`), the discriminators' AUC on one
    fixed corruption task stands in for those two, measured on the model the claim is about; it has no
    equivalence twin (the paper gives no margin on its scale). An early point's claim (downstream_avg@0.25) has a
    probe twin only."""
    if not claim.metric.startswith(DOWNSTREAM_AVERAGE):
        return []
    def text(measure: str) -> str:
        replaced = claim.text.replace("downstream average", measure)
        return replaced if replaced != claim.text else f"{claim.text} ({measure})"

    found = [claim.on_metric(PROBE_AVERAGE, text("linear-probe average"), PROBE_MEASURES)]
    if "@" not in claim.metric:
        found.append(claim.on_metric(ORDER_AVERAGE, text("word-order tasks' average"), ORDER_MEASURES))
        if mlm_rows:
            found.append(claim.on_metric(MINIMAL_PAIRS, text("minimal pairs"), MINIMAL_PAIRS_MEASURES))
        if mlm_rows and mlm_twin:
            # a loss has its own scale: a margin in downstream points means nothing there
            loss = text("held-out MLM loss") + (", without the margin" if claim.margin else "")
            found.append(dataclasses.replace(claim.on_metric(HELDOUT_MLM, loss, HELDOUT_MLM_MEASURES), margin=0.0,
                                             margin_source=""))
        if discriminator_rows and not isinstance(claim, Close):
            auc = text("discriminator's AUC on bigram corruptions") + (", without the margin" if claim.margin else "")
            found.append(dataclasses.replace(claim.on_metric(DISCRIMINATOR_AUC, auc, DISCRIMINATOR_MEASURES),
                                             margin=0.0, margin_source=""))
    return found


def paper_value(paper: Mapping[str, float], metric: str) -> float | None:
    """A row's published figure on the scale of our `metric`, where the paper reports one: its downstream average
    (the mean of its downstream columns), its score at an early point (ELECTRA's "GLUE @25%"), its perplexity."""
    base, _, point = metric.partition("@")
    if base == "mlm_ppl":
        return paper.get("ppl")
    if base != DOWNSTREAM_AVERAGE:
        return None
    if point:
        return paper.get(f"GLUE @{100 * float(point):g}%")
    scores = [value for column, value in paper.items() if column not in NOT_DOWNSTREAM and "@" not in column]
    return float(np.mean(scores)) if scores else None


class _PaperRow:
    """A stand-in row of one seed valued at the paper's figures (0 where it has none)."""

    def __init__(self):
        self.seeds, self.values = [0], {}


def paper_comparisons(claim: Claim, paper: PaperValue, order: list[str]) -> list[Comparison]:
    """The claim's comparisons as the paper's own figures make them (`Comparison.paper`; None where the paper
    reports nothing on the claim's scale): what the board shows beside ours, and what the planner sizes seeds for."""
    stand_in: dict[str, _PaperRow] = {}
    for row, metric in claim.needed(order):
        value = paper(row, metric)
        stand_in.setdefault(row, _PaperRow()).values[metric] = [value if value is not None else 0.0]
    return claim.comparisons(Rows(stand_in, order), paper)
