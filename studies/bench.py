"""`make bench`: speed and memory, always as ratios against a baseline measured in the same run.

1. Preprocessing the offline corpus: cold (from nothing) and warm (cache), with peak memory; the corpus
   repeated 10x, to show memory stays bounded as the corpus grows.
2. Building and masking one batch vs one training step of a small model, in the precision a training run
   on this machine uses (`experiments.hardware.default_precision`).
3. Training steps of our encoders vs HuggingFace transformers at the same configuration and on the same
   batches, interleaved round by round, each model and precision in its own process (see `Worker`):
   MLM vs BertForMaskedLM, DeBERTa vs DebertaV2ForMaskedLM, RTD vs ELECTRA built from ElectraForMaskedLM +
   ElectraForPreTraining with shared embeddings; each in fp32, and in bf16 where the CPU has bf16.
   Tokens/s, model FLOPs per token, achieved FLOP/s and peak memory of each.
4. The default preset's own shape (the one `make ablation-*` trains when no PRESET is given), ours vs HF's
   MLM in the precision a training run uses: tokens/s, the ratio and what one row's pretraining costs.

bf16 rows run only where the runner would train in bf16 (`default_precision()`): on a CPU without bf16
instructions torch falls back to a reference GEMM that takes minutes per step, so those rows are skipped
with one line saying why. `--precision fp32` skips them anywhere (say a CPU lacks bf16, or emulate one
with ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS, which that test does not see).

`--device cuda` times parts 3 and 4 on the GPU (bf16 rows where it supports bf16, as a training run
there uses; peak memory is the GPU allocator's peak). `--preset` then picks a GPU-sized shape for part 4.

Writes results/bench.json. `--quick` runs fewer steps (for a fast look; the figures are noisier).
`--baseline DIR` times another checkout's models (say the commit before a change) in the same rounds as
ours and HF's, so a change's effect is a ratio measured side by side in one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch

from experiments import allocator

ROOT = Path(__file__).resolve().parent.parent
MODULE = "studies.bench"  # what `python -m` runs in this checkout's children


def bench_module(root: Path) -> str | None:
    """The bench's module in the checkout at `root`: `studies.bench`, or `experiments.bench` in a checkout from
    before the studies left `experiments/` (so that an older commit can still be a baseline); None if neither."""
    for module in (MODULE, "experiments.bench"):
        if (root / Path(*module.split("."))).with_suffix(".py").is_file():
            return module
    return None


@dataclass(frozen=True)
class Shape:
    """The encoder and the batches both contenders train on."""

    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_size: int
    vocab_size: int
    max_positions: int
    batch: int
    length: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    relative_bias: bool = False  # ours only (the cpu preset's departure; HF's BERT has none): priced, not compared

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.length

    def encoder(self, **changes):
        from ablations.config import EncoderConfig

        return EncoderConfig(num_layers=self.num_layers, hidden_size=self.hidden_size, num_heads=self.num_heads,
                             ffn_size=self.ffn_size, vocab_size=self.vocab_size, max_positions=self.max_positions,
                             dropout=self.dropout, attention_dropout=self.attention_dropout,
                             relative_bias=self.relative_bias).replace(**changes)

    def hf(self) -> dict:
        """The same sizes as HuggingFace config arguments."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads, intermediate_size=self.ffn_size,
                    max_position_embeddings=self.max_positions, hidden_dropout_prob=self.dropout,
                    attention_probs_dropout_prob=self.attention_dropout)

    def to_json(self) -> str:
        """The shape for a worker's command line: the fields without a default, and the others only where they
        differ from it, so that a --baseline checkout from before a field existed still reads the shape."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        return json.dumps({name: value for name, value in asdict(self).items()
                           if name not in defaults or value != defaults[name]})

    def describe(self) -> str:
        return (f"{self.num_layers} x {self.hidden_size} ({self.num_heads} heads, FFN {self.ffn_size}), "
                f"sequence {self.length}, batch {self.batch}, vocabulary {self.vocab_size:,}"
                + (", ours with the relative position bias" if self.relative_bias else ""))


# The comparisons' shape (MLM, DeBERTa, RTD): fixed, so their figures stay comparable as the presets change.
SMALL = Shape(num_layers=4, hidden_size=256, num_heads=4, ffn_size=1024, vocab_size=8192, max_positions=512,
              batch=32, length=128)


THREADS_VARIABLE = "BENCH_THREADS"  # set by --threads, read by every process the bench starts
DEVICE_VARIABLE = "BENCH_DEVICE"  # set by --device, read by every process the bench starts


def bench_device() -> torch.device:
    """Where the timed models train: the CPU unless --device says otherwise."""
    return torch.device(os.environ.get(DEVICE_VARIABLE, "cpu"))


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer reads finished steps (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_all_cores() -> None:
    """Every process of the bench (coordinator, timing workers, memory probes) runs on the same threads:
    all cores (up to 16), or --threads N (on a machine others share, 1 thread keeps ratios steadier)."""
    asked = int(os.environ.get(THREADS_VARIABLE, "0") or 0)
    torch.set_num_threads(asked if asked > 0 else max(1, min(os.cpu_count() or 1, 16)))


# ------------------------------------------------------------------------------------- preprocessing


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program. (ru_maxrss would also count the
    parent's pages that a forked child held before exec, so it reads the parent's size.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _preprocess_child(cache: str, repeat: int) -> None:
    """Run in a subprocess: build (or open) the corpus and tokens; print seconds and peak RSS."""
    from datamodules.corpus import CorpusConfig, load_corpus
    from datamodules.tokenization import TokenizerConfig, tokenize_corpus

    start = time.perf_counter()
    corpus = load_corpus(CorpusConfig(repeat=repeat), Path(cache))
    tokens = tokenize_corpus(corpus, TokenizerConfig(vocab_size=8192))
    seconds = time.perf_counter() - start
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the segmentation worker processes
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(peak_rss_mb(), workers), "tokens": tokens.train.stats()["tokens"]}))


def preprocess(cache: Path, repeat: int = 1) -> dict:
    done = subprocess.run([sys.executable, "-m", MODULE, "--preprocess-child", str(cache), str(repeat)],
                          capture_output=True, text=True, cwd=ROOT, env=os.environ | {"TOKENIZERS_PARALLELISM": "true"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_preprocessing(include_10x: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cold = preprocess(Path(cache))
        warm = preprocess(Path(cache))
        out = {"cold_s": round(cold["seconds"], 2), "warm_s": round(warm["seconds"], 2),
               "cold_peak_rss_mb": round(cold["peak_rss_mb"]), "tokens": cold["tokens"]}
        if include_10x:
            ten = preprocess(Path(cache), repeat=10)
            out |= {"corpus_10x_s": round(ten["seconds"], 1), "corpus_10x_peak_rss_mb": round(ten["peak_rss_mb"]),
                    "corpus_10x_tokens": ten["tokens"],
                    "peak_rss_growth_10x": round(ten["peak_rss_mb"] / cold["peak_rss_mb"] - 1, 3)}
    return out


# ----------------------------------------------------------------------------------------- precision


def bf16_rows(choice: str = "auto") -> tuple[bool, str]:
    """Whether the bf16 rows run, and the line to print about it. `auto` asks the runner's own test
    (`experiments.hardware.default_precision`, which picks the precision of every training run): bf16 rows
    run where a training run would use bf16. `fp32` says this CPU has no bf16 (or emulates one that has
    none); `bf16` runs them even where the runner's test says the CPU lacks bf16 (slow: a reference GEMM)."""
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r} (valid: {', '.join(PRECISIONS)})")
    if choice == "fp32":
        return False, "bf16 rows skipped: --precision fp32 says this CPU has no bf16"
    from experiments.hardware import default_precision

    if bench_device().type == "cuda" and not torch.cuda.is_bf16_supported():
        return False, "bf16 rows skipped: this GPU has no bf16"
    training = "bf16-mixed" if bench_device().type == "cuda" else default_precision()
    if training.startswith("bf16"):
        return True, f"bf16 rows run: a training run here uses {training} (experiments.hardware.default_precision)"
    if choice == "bf16":
        return True, (f"bf16 rows run because --precision bf16 asks, although a training run here uses {training}: "
                      "without bf16 instructions torch's fallback GEMM makes them very slow")
    return False, (f"bf16 rows skipped: this CPU has no bf16 instructions, so a training run here uses {training} "
                   "(experiments.hardware.default_precision) and a bf16 step would take minutes")


PRECISIONS = ("auto", "fp32", "bf16")
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine() -> dict:
    """What the figures were measured on, including any instruction-set cap in the environment (then the
    figures are of an emulated CPU: this one with its newer instructions switched off, not a real older one)."""
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    caps = {variable: os.environ[variable] for variable in ISA_CAPS if variable in os.environ}
    return {"cpu": name, "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "date": time.strftime("%Y-%m-%d"), **({"emulated_isa_caps": caps} if caps else {}),
            **({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
               if bench_device().type == "cuda" else {})}


# -------------------------------------------------------------------------------------- the models


def random_batch(generator: torch.Generator, shape: Shape) -> dict:
    """A batch like the collator's: 15% of positions masked, with their flat indices listed."""
    batch, length = shape.batch, shape.length
    ids = torch.randint(5, shape.vocab_size, (batch, length), generator=generator)
    chosen = torch.rand(batch, length, generator=generator) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, 4), ids)
    positions = torch.nonzero(chosen.reshape(-1)).squeeze(1)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "token_type_ids": torch.zeros_like(ids), "labels": labels, "mlm_positions": positions,
            "mlm_labels": ids.reshape(-1)[positions], "nsp_labels": torch.zeros(batch, dtype=torch.long),
            "num_tokens": batch * length}


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


class Contender:
    """One model's training step: forward, backward, AdamW, as a training loop would run it."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn, flops_per_token: float):
        self.device = bench_device()
        self.name, self.model, self.loss_fn, self.flops_per_token = name, model.to(self.device).train(), loss_fn, \
            flops_per_token
        # fused, as our training runs it (lightning_modules/base.py) and as HF's Trainer does by default
        # (`optim="adamw_torch_fused"`)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=self.device.type in ("cpu", "cuda"))

    def step(self, batch: dict, bf16: bool) -> None:
        context = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with context:
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


KINDS = ("mlm", "deberta", "rtd", "default")


def contenders(kind: str, shape: Shape = SMALL, only: int | None = None) -> tuple[Contender | None, Contender | None]:
    """(ours, HF's) for `kind` at `shape`; with `only`, build just that one (the memory probe measures one)."""
    factories = _factories(kind, shape)
    return tuple(factory() if only in (None, i) else None for i, factory in enumerate(factories))


def _factories(kind: str, shape: Shape):
    import transformers

    from ablations.flops import mlm_training_flops_per_token, rtd_training_flops_per_token
    from lightning_modules.base import OptimConfig
    from lightning_modules.mlm import MLMModule
    from lightning_modules.rtd import RTDConfig, RTDModule, generator_config

    if kind not in KINDS:
        raise ValueError(f"unknown comparison {kind!r} (valid: {', '.join(KINDS)})")
    torch.manual_seed(0)
    common = shape.hf()
    if kind in ("mlm", "default"):
        ours_config = shape.encoder()
        flops = mlm_training_flops_per_token(ours_config, shape.length)
        return (lambda: Contender("ours MLM", MLMModule(ours_config, OptimConfig()), _our_loss, flops),
                lambda: Contender("HF BertForMaskedLM", transformers.BertForMaskedLM(
                    transformers.BertConfig(**common, attn_implementation="sdpa")), _hf_mlm_loss, flops))
    if kind == "deberta":
        ours_config = shape.encoder(attention="disentangled", relative_span=128, emd=False, type_vocab_size=0,
                                    relative_bias=False)
        hf_config = transformers.DebertaV2Config(
            **common, relative_attention=True, max_relative_positions=128, position_buckets=-1,
            pos_att_type=["c2p", "p2c"], position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm")
        flops = mlm_training_flops_per_token(ours_config, shape.length)
        return (lambda: Contender("ours DeBERTa MLM", MLMModule(ours_config, OptimConfig()), _our_loss, flops),
                lambda: Contender("HF DebertaV2ForMaskedLM", transformers.DebertaV2ForMaskedLM(hf_config),
                                  _hf_mlm_loss, flops))
    rtd = RTDConfig(sharing="es", generator_width=0.25)
    ours_config = shape.encoder()
    flops = rtd_training_flops_per_token(ours_config, generator_config(ours_config, rtd), shape.length)
    return (lambda: Contender("ours RTD (ELECTRA, ES)", RTDModule(ours_config, OptimConfig(), rtd), _our_loss, flops),
            lambda: Contender("HF ELECTRA (shared embeddings)", HFElectra(common, 0.25), lambda m, b: m(b), flops))


def _our_loss(module, batch):
    return module.losses(batch)["loss"]


def _hf_mlm_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


class HFElectra(torch.nn.Module):
    """ELECTRA from HF parts as its authors' recipe builds it: a 1/4-width generator and the discriminator
    sharing token and position embeddings, samples without gradient, loss = MLM + 50 * RTD."""

    def __init__(self, common: dict, width: float):
        super().__init__()
        import transformers

        generator_common = common | {"hidden_size": int(common["hidden_size"] * width),
                                     "num_attention_heads": max(1, int(common["num_attention_heads"] * width)),
                                     "intermediate_size": int(common["intermediate_size"] * width)}
        self.generator = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
            **generator_common, embedding_size=common["hidden_size"]))
        self.discriminator = transformers.ElectraForPreTraining(transformers.ElectraConfig(
            **common, embedding_size=common["hidden_size"]))
        self.generator.electra.embeddings = self.discriminator.electra.embeddings  # ELECTRA's tied embeddings

    def forward(self, batch):
        out = self.generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        positions = batch["mlm_positions"]
        with torch.no_grad():  # Gumbel-max at the masked positions only, as ELECTRA's code samples
            logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, positions).float()
            noise = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)))
            sampled = (logits + noise).argmax(-1)
        masked = batch["labels"] != -100
        original = torch.where(masked, batch["labels"], batch["input_ids"])
        corrupted = batch["input_ids"].reshape(-1).index_copy(0, positions, sampled).view_as(batch["input_ids"])
        replaced = (corrupted != original).float()
        disc = self.discriminator(input_ids=corrupted, attention_mask=batch["attention_mask"], labels=replaced)
        return out.loss + 50.0 * disc.loss


class Worker:
    """One contender at one precision in its own process, stepping on command, as a user's training run
    would be. In a shared process the models' allocations interact: the allocator state each model leaves
    moved the other's speed by 5-20% either way; switching precision within one process does the same.
    Every worker, ours, HF's and a baseline checkout's alike, starts with the malloc thresholds our training
    runs set (experiments.allocator): with glibc's defaults HF's step took 140-150k page faults and ran 15-20%
    slower, ours 5-11k and 3-5% slower, and HF's speed moved by up to 15% between runs."""

    def __init__(self, kind: str, which: int, bf16: bool, steps: int, shape: Shape = SMALL, root: Path = ROOT):
        """`root`: the checkout whose code the worker runs (`python -m` imports from its working directory
        first), this one unless a --baseline checkout is timed."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", bench_module(root), "--worker", kind, str(which), str(int(bf16)), str(steps),
             shape.to_json()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
            env=os.environ | allocator.environment())
        hello = self._reply()
        self.name, self.flops_per_token = hello["name"], hello["flops_per_token"]

    def seconds_per_step(self, steps: int) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self._reply()["seconds_per_step"]

    def _reply(self) -> dict:
        for line in self.process.stdout:  # anything else a library prints is skipped
            if line.startswith(WORKER_REPLY):
                return json.loads(line[len(WORKER_REPLY):])
        raise RuntimeError(f"bench worker exited with code {self.process.wait()}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


WORKER_REPLY = "BENCH-WORKER "


def _worker(kind: str, which: int, bf16: bool, steps: int, shape: Shape) -> None:
    """The worker's side: build the model and the batches (seeded: both workers train on the same ones),
    then time `count` training steps per request."""
    use_all_cores()
    contender = contenders(kind, shape, only=which)[which]
    generator = torch.Generator().manual_seed(0)
    batches = [to_device(random_batch(generator, shape), contender.device) for _ in range(steps)]
    print(WORKER_REPLY + json.dumps({"name": contender.name, "flops_per_token": contender.flops_per_token}), flush=True)
    for request in sys.stdin:
        count = int(request)
        synchronize(contender.device)
        start = time.perf_counter()
        for batch in batches[:count]:
            contender.step(batch, bf16)
        synchronize(contender.device)
        print(WORKER_REPLY + json.dumps({"seconds_per_step": (time.perf_counter() - start) / count}), flush=True)


def measure(kind: str, precisions: list[bool], steps: int, rounds: int, shape: Shape = SMALL,
            bf16: tuple[bool, str] | None = None, baseline: Path | None = None) -> list[dict]:
    """Per precision, ours and HF's, each in its worker, interleaved round by round on the same batches;
    the median step time of each. `bf16` is `bf16_rows()`'s answer (asked here when not given): where it
    says no, a bf16 precision becomes one skipped row, with the reason, and no worker is started for it.
    `baseline`: another checkout of the suite whose model is timed in the same rounds, a third row, and
    ours gains `speedup_vs_baseline` (a change's before and after, side by side in one run)."""
    if bf16 is None:
        bf16 = bf16_rows() if True in precisions else (False, "")
    runs_bf16, reason = bf16
    rows = []
    for use_bf16 in precisions:
        if use_bf16 and not runs_bf16:
            rows.append({"kind": kind, "precision": "bf16", "skipped": reason})
            continue
        workers = [Worker(kind, 0, use_bf16, steps, shape), Worker(kind, 1, use_bf16, steps, shape)]
        if baseline is not None:
            workers.append(Worker(kind, 0, use_bf16, steps, shape, root=baseline))
            workers[-1].name = f"baseline {workers[-1].name} ({baseline})"
        try:
            for worker in workers:  # warm-up: first calls allocate and pick kernels
                worker.seconds_per_step(2)
            times = [[] for _ in workers]
            for _ in range(rounds):
                for worker, seconds in zip(workers, times):
                    seconds.append(worker.seconds_per_step(steps))
        finally:
            for worker in workers:
                worker.close()
        medians = [statistics.median(seconds) for seconds in times]
        first = len(rows)
        for worker, seconds in zip(workers, medians):
            tokens_per_s = shape.tokens_per_step / seconds
            rows.append({"model": worker.name, "precision": "bf16" if use_bf16 else "fp32",
                         "step_s": round(seconds, 4), "tokens_per_s": round(tokens_per_s),
                         "model_flops_per_token": f"{worker.flops_per_token:.3e}",
                         "achieved_gflops": round(worker.flops_per_token * tokens_per_s / 1e9, 1)})
        rows[first]["speedup_vs_hf"] = round(medians[1] / medians[0], 2)
        if baseline is not None:
            rows[first]["speedup_vs_baseline"] = round(medians[2] / medians[0], 3)
            rows[first + 2]["speedup_vs_hf"] = round(medians[1] / medians[2], 2)
    return rows


def peak_memory_mb(kind: str, which: int, bf16: bool, shape: Shape = SMALL) -> float:
    """Peak RSS of a fresh process running 3 steps of one model (CPU has no allocator counter); on a GPU,
    the allocator's peak."""
    done = subprocess.run([sys.executable, "-m", MODULE, "--memory-child", kind, str(which), str(int(bf16)),
                           shape.to_json()], capture_output=True, text=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else float("nan")


def _memory_child(kind: str, which: int, bf16: bool, shape: Shape) -> None:
    use_all_cores()
    contender = contenders(kind, shape, only=which)[which]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        contender.step(to_device(random_batch(generator, shape), contender.device), bf16)
    print(torch.cuda.max_memory_allocated() / 2**20 if contender.device.type == "cuda" else peak_rss_mb())


# ----------------------------------------------------------------------------- the default preset


def default_preset() -> str:
    """The preset a table trains at when none is named. Read when the bench runs, as presets.py and the
    Makefile stand then: presets.py's own default where it names one (a `default_preset()` function or a
    module-level DEFAULT_PRESET / DEFAULT), else the Makefile's `PRESET ?= ...`."""
    from experiments import presets

    named = presets.default_preset() if callable(getattr(presets, "default_preset", None)) else None
    for attribute in ("DEFAULT_PRESET", "DEFAULT"):
        if named is None:
            named = getattr(presets, attribute, None)
    if named is not None:
        return named.name if isinstance(named, presets.Preset) else str(named)
    makefile = ROOT / "Makefile"
    found = re.search(r"^PRESET\s*\?=\s*(\S+)", makefile.read_text(), re.MULTILINE) if makefile.exists() else None
    if found is None:
        raise RuntimeError("no default preset: experiments/presets.py names none and the Makefile has no 'PRESET ?='")
    return found.group(1)


def preset_shape(name: str) -> tuple[Shape, int]:
    """The shape an MLM row trains at under preset `name` (its sizes, sequence, batch and vocabulary, as
    experiments.presets.configure makes them) and the row's pretraining budget in tokens."""
    from experiments.presets import configure, get_preset
    from experiments.spec import RunConfig

    config = configure(RunConfig(), get_preset(name), {})
    encoder, data = config.encoder, config.data
    shape = Shape(num_layers=encoder.num_layers, hidden_size=encoder.hidden_size, num_heads=encoder.num_heads,
                  ffn_size=encoder.ffn_size, vocab_size=data.tokenizer.vocab_size, max_positions=encoder.max_positions,
                  batch=max(1, config.tokens_per_step // data.block_size), length=data.block_size,
                  dropout=encoder.dropout, attention_dropout=encoder.attention_dropout,
                  relative_bias=encoder.relative_bias)
    return shape, config.train_tokens


def bench_default_preset(name: str, bf16: bool, steps: int, rounds: int) -> dict:
    """Ours vs HF's MLM at the preset's shape, in the precision a training run uses, and what a row's
    pretraining (train_tokens, no evaluation or fine-tuning) then takes with each. Every token is priced
    at the preset's block size, also those of a sequence-length warm-up (shorter blocks: a little cheaper)."""
    from experiments.presets import configure, get_preset
    from experiments.spec import RunConfig

    shape, train_tokens = preset_shape(name)
    rows = measure("default", [bf16], steps, rounds, shape, bf16=(True, ""))
    for row in rows:
        row["pretraining_minutes"] = round(train_tokens / row["tokens_per_s"] / 60, 2)
    data = configure(RunConfig(), get_preset(name), {}).data
    warmup = {"warmup_block_size": data.warmup_block_size, "warmup_block_epochs": data.warmup_block_epochs} \
        if data.warmup_block_epochs else {}
    return {"preset": name, "shape": asdict(shape), "train_tokens": train_tokens, **warmup, "rows": rows}


# ------------------------------------------------------------------------------------ data vs step


def bench_batch_building(steps: int, bf16: bool) -> dict:
    from datamodules.pretraining import PretrainingDataConfig, PretrainingDataModule, TokenBudgetBatches, collate
    from lightning_modules.base import OptimConfig
    from lightning_modules.mlm import MLMModule

    data = PretrainingDataModule(PretrainingDataConfig(block_size=SMALL.length, tokens_per_batch=SMALL.tokens_per_step),
                                 seed=0)
    data.setup()
    batches = TokenBudgetBatches(data.train_set, SMALL.tokens_per_step, seed=0, shuffle=True)._all_batches()[:steps]
    start = time.perf_counter()
    built = [collate([data.train_set[i] for i in batch]) for batch in batches]
    build_s = (time.perf_counter() - start) / len(batches)
    shape = dataclasses.replace(SMALL, vocab_size=data.vocab_size)
    model = Contender("ours MLM", MLMModule(shape.encoder(), OptimConfig()), _our_loss, 0.0)
    model.step(built[0], bf16)
    start = time.perf_counter()
    for batch in built:
        model.step(batch, bf16)
    step_s = (time.perf_counter() - start) / len(built)
    return {"precision": "bf16" if bf16 else "fp32", "build_and_mask_batch_ms": round(build_s * 1000, 2),
            "train_step_ms": round(step_s * 1000, 1), "batch_share_of_step": round(build_s / step_s, 4)}


def _print_rows(kind: str, rows: list[dict]) -> None:
    for row in rows:
        if "skipped" in row:
            continue
        print(f"{kind:8} {row['model']:32} {row['precision']:5} {row['tokens_per_s']:>8,} tokens/s  "
              f"{row['achieved_gflops']:>6} GFLOP/s  peak {row.get('peak_rss_mb', row.get('peak_gpu_mb', '-')):>5} MB"
              + (f"  speedup x{row['speedup_vs_hf']}" if "speedup_vs_hf" in row else "")
              + (f" (x{row['speedup_vs_baseline']} the baseline's)" if "speedup_vs_baseline" in row else "")
              + (f"  pretraining {row['pretraining_minutes']} min" if "pretraining_minutes" in row else ""))


def _add_peak_memory(kind: str, rows: list[dict], shape: Shape) -> None:
    for row in rows:
        if "skipped" in row or row["model"].startswith("baseline"):  # a baseline's memory is its checkout's
            continue
        which = 0 if row["model"].startswith("ours") else 1
        key = "peak_gpu_mb" if bench_device().type == "cuda" else "peak_rss_mb"
        row[key] = round(peak_memory_mb(kind, which, row["precision"] == "bf16", shape))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps, no 10x corpus")
    parser.add_argument("--only", default="preprocess,batch,mlm,deberta,rtd,default",
                        help="comma-separated parts (default: all of them)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 rows where a training run here uses bf16 (experiments.hardware.default_precision); "
                             "fp32: this CPU has no bf16 (skip them); bf16: run them anyway")
    parser.add_argument("--preset", default=None, help="whose shape the 'default' part times (default: the default preset)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of every timed process (default: all cores, up to 16)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of this suite (e.g. `git worktree add /tmp/before HEAD~1`): its training "
                             "steps are timed in the same rounds as ours and HF's, for a change's before and after")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the training-step comparisons (parts 3 and 4) run")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--preprocess-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preprocess_child:
        return _preprocess_child(args.preprocess_child[0], int(args.preprocess_child[1]))
    if args.worker:
        kind, which, bf16, steps, shape = args.worker
        return _worker(kind, int(which), bool(int(bf16)), int(steps), Shape(**json.loads(shape)))
    if args.memory_child:
        kind, which, bf16, shape = args.memory_child
        return _memory_child(kind, int(which), bool(int(bf16)), Shape(**json.loads(shape)))
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        os.environ[THREADS_VARIABLE] = str(args.threads)  # inherited by the workers and probes
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False)")
    os.environ[DEVICE_VARIABLE] = args.device  # inherited by the workers and probes
    if args.baseline is not None and bench_module(args.baseline) is None:
        parser.error(f"--baseline {args.baseline}: not a checkout of this suite (no studies/bench.py or "
                     "experiments/bench.py there)")
    use_all_cores()
    parts = args.only.split(",")
    unknown = set(parts) - {"preprocess", "batch", *KINDS}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))} (valid: preprocess, batch, {', '.join(KINDS)})")
    steps, rounds = (3, 2) if args.quick else (5, 4)
    report = {"machine": machine()}
    caps = report["machine"].get("emulated_isa_caps")
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, torch {torch.__version__} "
          f"({report['machine']['torch_cpu_capability']} kernels)"
          + (f"; instruction sets capped by {', '.join(f'{k}={v}' for k, v in caps.items())}: the figures are of "
             "an emulated CPU, not a real one" if caps else "")
          + (f"; timing on {report['machine']['gpu']}" if "gpu" in report["machine"] else ""))
    runs_bf16, reason = bf16_rows(args.precision)
    report["machine"]["bf16_rows"] = reason
    print(reason + ("; the caps do not change that test (it reads the CPU): --precision fp32 emulates a CPU without bf16"
                    if caps and runs_bf16 else ""))
    if "preprocess" in parts:
        report["preprocessing"] = bench_preprocessing(include_10x=not args.quick)
        print("preprocessing:", json.dumps(report["preprocessing"]))
    if "batch" in parts:
        report["batch_vs_step"] = bench_batch_building(steps=10 if args.quick else 30, bf16=runs_bf16)
        print("batch vs step:", json.dumps(report["batch_vs_step"]))
    for kind, precisions in (("mlm", [False, True]), ("deberta", [False, True]), ("rtd", [False, True])):
        if kind not in parts:
            continue
        rows = measure(kind, precisions, steps, rounds, bf16=(runs_bf16, reason), baseline=args.baseline)
        _add_peak_memory(kind, rows, SMALL)
        _print_rows(kind, rows)
        report[kind] = rows
    if "default" in parts:
        name = args.preset or default_preset()
        result = bench_default_preset(name, runs_bf16, steps, rounds)
        shape = Shape(**result["shape"])
        _add_peak_memory("default", result["rows"], shape)
        warmup = (f" (its first {result['warmup_block_epochs']} pass(es) in {result['warmup_block_size']}-token blocks "
                  "priced at the full length)") if "warmup_block_size" in result else ""
        print(f"preset {name} ({'default' if args.preset is None else 'asked for'}): {shape.describe()}; "
              f"a row pretrains on {result['train_tokens']:,} tokens{warmup}")
        _print_rows("default", result["rows"])
        report["default_preset"] = result
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
