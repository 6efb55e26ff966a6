"""A paper table as data: a base run config, rows as small diffs from it, metrics, paper numbers, claims.

Nothing here trains; `experiments.running.runner` turns an `Experiment` into numbers. A row's changes are
dotted paths into `RunConfig` ("data.input_format", "rtd.sharing"); a value may be a function of the
preset's config (e.g. "8x the preset's batch"), so one table scales from smoke to paper size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ablations.config import EncoderConfig
from ablations.flops import mlm_training_flops_per_token, rtd_training_flops_per_token
from datamodules.downstream import task_name
from datamodules.errors import UsageError, require
from datamodules.pretraining import PretrainingDataConfig
from lightning_modules.base import OptimConfig
from lightning_modules.finetune import FineTuneConfig
from lightning_modules.rtd import BINARY_HEAD_VARIANTS, RTDConfig, generator_config
from experiments.verdicts.claims import Claim, paper_value, twins

OBJECTIVES = ("mlm", "rtd")
BUDGET_RULES = ("tokens", "flops")
EARLY_POINTS = ("own-schedule", "mid-run")


@dataclass(frozen=True)
class RunConfig:
    """Everything that changes a row's result. Speed-only settings (precision, devices, workers) live in
    `experiments.running.hardware.Hardware` and stay out of this config and its hash."""

    objective: str = "mlm"  # mlm (MLM, MLM+NSP when the format has NSP) | rtd (ELECTRA / DeBERTaV3)
    data: PretrainingDataConfig = field(default_factory=PretrainingDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rtd: RTDConfig = field(default_factory=RTDConfig)  # used when objective == "rtd"
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    # downstream tasks, fine-tuned and probed after pretraining: two a bag of words passes, two that need word order
    tasks: tuple[str, ...] = ("sentiment", "topic", "pos", "bigram_shift")
    train_tokens: int = 2_000_000  # the row's budget in (padded) training tokens, before the budget rule
    gradient_accumulation: int = 1  # micro-batches per optimizer step (large batches on any machine)
    evaluate_at: tuple[float, ...] = ()  # extra fine-tuning evaluations at these fractions of training
    # how those points are trained: own-schedule (ELECTRA Table 1: a shorter run with its own warm-up and decay)
    # | mid-run (checkpoints of this run, whose learning rate has not decayed; cheaper)
    early_points: str = "own-schedule"

    def validate(self) -> None:
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(f"unknown objective {self.objective!r} (valid: {', '.join(OBJECTIVES)})")
        if self.objective == "rtd" and self.data.has_nsp:
            problems.append("NSP formats (segment-pair, sentence-pair) only go with the mlm objective")
        if self.finetune.seeds < 1:
            problems.append("finetune.seeds must be >= 1")
        if self.finetune.max_length < 4:
            problems.append("finetune.max_length must be >= 4 (room for [CLS], a [SEP] after each of two segments, and a token)")
        if self.gradient_accumulation < 1:
            problems.append("gradient_accumulation must be >= 1")
        if any(not 0 < f < 1 for f in self.evaluate_at):
            problems.append("evaluate_at fractions must be in (0, 1)")
        if self.early_points not in EARLY_POINTS:
            problems.append(f"unknown early_points {self.early_points!r} (valid: {', '.join(EARLY_POINTS)})")
        try:
            names = [task_name(spec) for spec in self.tasks]
            if len(set(names)) < len(names):
                problems.append(f"two tasks share a name ({', '.join(names)}): name them, e.g. mine=files:train.csv,dev.csv")
        except UsageError as error:
            problems.append(str(error))
        require(problems, "run config")
        self.data.validate(max_positions=self.encoder.max_positions)
        self.encoder.validate()
        if self.objective == "rtd":
            self.rtd.validate()

    @property
    def tokens_per_step(self) -> int:
        return self.data.tokens_per_batch * self.gradient_accumulation

    def training_flops_per_token(self) -> float:
        """Model FLOPs per training token (see ablations.flops)."""
        length = self.data.block_size
        mask = self.data.masking.probability
        if self.objective == "mlm":
            return mlm_training_flops_per_token(self.encoder, length, mask)
        discriminator = self.encoder.replace(emd=False)
        generator = self.encoder.replace(emd=False) if self.rtd.sharing == "all" else generator_config(self.encoder, self.rtd)
        return rtd_training_flops_per_token(discriminator, generator, length, mask, self.rtd.variant)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        return _hash(self.to_dict())

    def pretraining_hash(self) -> str:
        """Hash of what decides the pretrained weights: rows that differ only in fine-tuning share them."""
        fields = self.to_dict()
        for name in ("finetune", "tasks"):
            fields.pop(name)
        return _hash(fields)


# The papers' departures that are switches (each off by default; docs/faithfulness.md says why each exists).
# Those marked True change how every row learns (the regime), so every claim of a table whose rows use one is
# the suite's proxy for the paper's; the others touch a single mechanism and their tables' notes say so.
DEPARTURES = {
    "data.warmup_block_size": True, "data.warmup_block_epochs": True, "optim.position_lr_scale": True,
    "encoder.pre_layer_norm": True, "encoder.relative_bias": True, "encoder.p2c_index": False, "rtd.head_bias_prior": False,
    "rtd.discriminator_lr_scale": True,
}


def departures(config: dict) -> dict[str, object]:
    """The departure switches a row's config (RunConfig.to_dict()) turns on: {dotted field: value}. A switch
    counts only for a row it acts on: an `rtd.` switch for an RTD row (an MLM row in an RTD table carries the
    table's rtd config unused), `rtd.head_bias_prior` for a variant with a binary head (not Replace MLM)."""
    default = RunConfig().to_dict()

    def value(tree: dict, path: str):
        for part in path.split("."):
            tree = tree.get(part, {}) if isinstance(tree, dict) else {}
        return tree

    return {path: value(config, path) for path in DEPARTURES
            if value(config, path) != {} and value(config, path) != value(default, path)
            and (not path.startswith("rtd.") or config.get("objective") == "rtd")
            and (path != "rtd.head_bias_prior" or config.get("rtd", {}).get("variant") in BINARY_HEAD_VARIANTS)}


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def apply_changes(config: Any, changes: dict[str, Any]) -> Any:
    """A copy of a (nested, frozen) dataclass with dotted-path fields replaced; a callable value is
    called with the config being changed (so a row can say 'twice the preset's batch')."""
    for path, value in changes.items():
        config = _replace_path(config, path.split("."), value(config) if callable(value) else value, path)
    return config


def _replace_path(node: Any, parts: list[str], value: Any, full_path: str) -> Any:
    names = {f.name for f in dataclasses.fields(node)}
    if parts[0] not in names:
        raise UsageError(f"unknown config field {full_path!r}: {type(node).__name__} has {', '.join(sorted(names))}")
    if len(parts) == 1:
        return dataclasses.replace(node, **{parts[0]: value})
    child = _replace_path(getattr(node, parts[0]), parts[1:], value, full_path)
    return dataclasses.replace(node, **{parts[0]: child})


@dataclass(frozen=True)
class Row:
    name: str  # as the paper names it
    changes: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)  # the paper's published numbers for this row
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    id: str  # also the make target
    title: str
    paper: str  # which paper and table
    base: RunConfig
    rows: tuple[Row, ...]
    metrics: tuple[str, ...]  # columns we measure, in order
    paper_columns: tuple[str, ...]  # the paper's columns, in order
    claims: tuple[Claim, ...] = ()
    budget: str = "tokens"  # rows get equal training tokens, or equal training FLOPs
    main_metric: str = "downstream_avg"  # the bar chart's metric
    notes: str = ""

    @property
    def checked_claims(self) -> tuple[Claim, ...]:
        """The claims a table checks: the declared ones, and for each claim on the downstream average its
        `(proxy)` twins on the measures precise enough to decide something at small scale (experiments.verdicts.claims.
        twins: the linear probes, the word-order tasks, for MLM rows the minimal pairs and the held-out MLM loss, for
        ELECTRA discriminators their AUC on one corruption task); none for a claim whose rows share
        their pretraining (SiFT's rows differ in fine-tuning only, so their frozen encoders are the same), and
        none that repeats a declared claim."""
        declared = {(type(c), _measure(c.metric), tuple(c.read_rows([r.name for r in self.rows]))) for c in self.claims}
        found = []
        for claim in self.claims:
            names = claim.read_rows([r.name for r in self.rows])
            if not self._pretrained_apart(names):
                continue
            for twin in twins(claim, mlm_rows=self._mlm_rows(names), mlm_twin=self._mlm_comparable(names),
                              discriminator_rows=self._discriminator_rows(names)):
                if (type(twin), _measure(twin.metric), tuple(twin.read_rows([r.name for r in self.rows]))) not in declared:
                    found.append(twin)
        return self.claims + tuple(found)

    def _pretrained_apart(self, names: list[str]) -> bool:
        pretraining = {json.dumps({k: v for k, v in self.row(name).changes.items()
                                   if not k.startswith(("finetune.", "tasks"))}, sort_keys=True, default=str)
                       for name in names}
        return len(pretraining) > 1

    def _mlm_rows(self, names: list[str]) -> bool:
        """Every row is an MLM row scored by the same kind of head: the model that scores the minimal pairs and the
        held-out MLM is the encoder the rows fine-tune, not an RTD row's generator, and not an Enhanced Mask
        Decoder that one row has and another lacks (DeBERTa against -EMD: the EMD's extra layer would win there by
        construction, and fine-tuning drops it)."""
        return (all(self.row(name).changes.get("objective", self.base.objective) == "mlm" for name in names)
                and len({self._decodes_with_emd(name) for name in names}) == 1)

    def _discriminator_rows(self, names: list[str]) -> bool:
        """Every row is a full ELECTRA discriminator (RTD on every token; ELECTRA 15%'s learns at the masked
        positions only, and the AUC reads every token, so it would lose by construction) trained against
        generators of one width (a discriminator trained against a weaker generator meets replacements more like
        the bigram model's, so across widths the measure would favour the smaller generator)."""
        def setting(name: str, key: str):
            return self.row(name).changes.get(f"rtd.{key}", getattr(self.base.rtd, key))
        return (all(self.row(name).changes.get("objective", self.base.objective) == "rtd"
                    and setting(name, "variant") == "electra" for name in names)
                and len({setting(name, "generator_width") for name in names}) == 1)

    def _decodes_with_emd(self, name: str) -> bool:
        changes, encoder = self.row(name).changes, self.base.encoder
        return (changes.get("encoder.attention", encoder.attention) == "disentangled"
                and changes.get("encoder.emd", encoder.emd))  # EncoderConfig.uses_emd

    def _mlm_comparable(self, names: list[str]) -> bool:
        """Every row is an MLM row with the table's tokenizer: their held-out MLM losses are on one scale."""
        return self._mlm_rows(names) and not any(k.startswith("data.tokenizer") for name in names
                                                 for k in self.row(name).changes)

    def paper_value(self, row: str, metric: str) -> float | None:
        """The paper's figure for `row` on the scale of `metric`, where it reports one (experiments.verdicts.claims)."""
        return paper_value(self.row(row).paper, metric)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise UsageError(f"unknown row {name!r} of {self.id} (valid: {', '.join(r.name for r in self.rows)})")


def _measure(metric: str) -> str:
    """A claim on the held-out perplexity and one on the loss measure the same thing."""
    return "mlm_loss" if metric == "mlm_ppl" else metric


def steps_for(config: RunConfig, budget: str, reference: RunConfig) -> int:
    """Optimizer steps that give `config` the table's budget: its tokens, or the reference's training FLOPs."""
    tokens = config.train_tokens
    if budget == "flops":
        tokens = tokens * reference.training_flops_per_token() / config.training_flops_per_token()
    return max(1, math.ceil(tokens / config.tokens_per_step))


def budget_of(config: RunConfig, steps: int, budget: str) -> float:
    """What the budget rule holds equal: padded training tokens, or training FLOPs."""
    tokens = steps * config.tokens_per_step
    return tokens * config.training_flops_per_token() if budget == "flops" else tokens

