"""Every precision the suite picks, on whatever CPU runs the tests: the choice per kind of machine (faked), the
clipped update under each, a smoke row of each objective forced to bf16-mixed and to 32-true, and the one-line
error when training fails for its precision. docs/tests.md lists the hardware paths and the test of each."""
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from conftest import refused_in_process
from experiments.running import hardware
from lightning_modules.base import ObjectiveModule, OptimConfig
from test_experiments import cli


@pytest.mark.parametrize("cuda, cuda_bf16, cpu_bf16, expected", [
    (False, False, False, "32-true"),     # AVX2 CPU (AMD Zen 3, Intel before Cooper Lake)
    (False, False, True, "bf16-mixed"),   # CPU with AVX-512 bf16 (AMD Zen 4/5, Intel Xeon since Cooper Lake)
    (True, True, False, "bf16-mixed"),    # GPU with bf16 (Ampere and later)
    (True, False, True, "16-mixed"),      # GPU without bf16 (Volta, Turing): the GPU decides, not the CPU
])
def test_default_precision_for_each_kind_of_machine(cuda, cuda_bf16, cpu_bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: cuda_bf16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    assert hardware.default_precision() == expected


class _FixedGradient(ObjectiveModule):
    """One parameter whose gradient is `direction` exactly under any autocast (an elementwise product stays
    fp32), with a norm of 50, so clipping to 1.0 scales it by 1/50."""

    def __init__(self):
        super().__init__(OptimConfig(peak_lr=1e-2, warmup_fraction=0.0, max_steps=10))
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, 12).view(3, 4))
        self.direction = torch.arange(1.0, 13.0).view(3, 4) * (50 / torch.arange(1.0, 13.0).norm())

    def losses(self, batch):
        return {"loss": (self.weight * self.direction).sum() + 0 * batch["input_ids"].float().sum()}

    def train_dataloader(self):
        batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "num_tokens": 4}
        return torch.utils.data.DataLoader([batch], batch_size=None)


def _expected_update() -> torch.Tensor:
    """torch's AdamW after clipping the gradient to global norm 1.0, by hand, with the module's recipe."""
    module = _FixedGradient()
    weight = module.weight.detach().clone().requires_grad_()
    weight.grad = module.direction.clone()
    torch.nn.utils.clip_grad_norm_([weight], 1.0)
    o = module.optim
    torch.optim.AdamW([weight], lr=o.peak_lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
                      foreach=False).step()
    return weight.detach()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_the_clipped_update_is_the_same_under_every_precision(precision):
    """One training step through Lightning under each precision, with the fused AdamW the suite trains with:
    the same clipped update as clipping and stepping by hand. Lightning refuses to clip for a fused optimizer
    under mixed precision (the default job crashed on bf16 CPUs and GPUs); fp16's loss scaler must be undone
    before clipping. 16-mixed is a GPU precision: here its plugin (fp16 autocast and scaler) runs on the CPU."""
    kwargs = ({"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))]}
              if precision == "16-mixed" else {"precision": precision})
    module = _FixedGradient()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    trainer.fit(module)
    assert trainer.optimizers[0].defaults["fused"]  # the fast optimizer, not a fallback
    assert torch.equal(module.weight.detach(), _expected_update())


def _trained_row(directory, experiment, row) -> dict:
    from experiments.running.runner import slug

    return json.loads((directory / experiment / "smoke" / "rows" / f"{slug(row)}__seed0.json").read_text())


@pytest.mark.slow(seconds=50)
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_a_smoke_row_of_each_objective_trains_evaluates_and_fine_tunes_under_a_forced_precision(precision, tmp_path):
    """MLM, MLM+NSP and RTD with GDES, each pretrained, evaluated and fine-tuned under `precision` whatever this
    CPU would pick (bf16 runs emulated, slowly, on a CPU without bf16 instructions: the rows are tiny)."""
    rows = {"ablation-nsp": ["DOC-SENTENCES", "SEGMENT-PAIR+NSP"], "ablation-embedding-sharing": ["GDES"]}
    for experiment, names in rows.items():
        done = cli("run", experiment, "--preset", "smoke", "--rows", ",".join(names), "--precision", precision,
                   "--results-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr[-3000:]
        for name in names:
            result = _trained_row(tmp_path, experiment, name)
            metrics = result["metrics"]
            assert result["hardware"]["precision"] == precision
            # every stage ran: held-out MLM, word order, minimal pairs, probes, fine-tuning
            mlm = "generator_mlm_loss" if name == "GDES" else "mlm_loss"
            for key in (mlm, "adjacent_attention", "minimal_pairs", "sentiment_probe", "downstream_avg"):
                assert torch.isfinite(torch.tensor(metrics[key])), (name, key, metrics.get(key))
            if name == "SEGMENT-PAIR+NSP":
                assert "nsp_acc" in metrics
            if name == "GDES":
                assert {"disc_auc", "disc_auc_bigram", "cosine_generator", "cosine_discriminator"} <= set(metrics)


@pytest.mark.slow(seconds=20)
def test_a_training_failure_under_a_precision_is_one_message_naming_it_and_the_other(monkeypatch, tmp_path):
    """Lightning's own clipping, restored, refuses the fused AdamW under bf16-mixed (the crash this suite had):
    the user reads one line that names the precision and suggests 32-true, with exit code 2."""
    monkeypatch.setattr(ObjectiveModule, "configure_gradient_clipping", L.LightningModule.configure_gradient_clipping)
    code, stderr = refused_in_process("run", "ablation-nsp", "--preset", "smoke", "--rows", "DOC-SENTENCES",
                                      "--precision", "bf16-mixed", "--results-dir", str(tmp_path))
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "pretraining DOC-SENTENCES failed under precision bf16-mixed" in stderr
    assert "--precision 32-true" in stderr and "gradient clipping" in stderr
    assert not list(tmp_path.rglob("rows/*.json"))  # no row file for a row that did not train


@pytest.mark.parametrize("args, message", [
    (("--precision", "fp8"), "unknown --precision 'fp8'"),
    (("--precision", "16-mixed"), "--precision 16-mixed needs a CUDA GPU"),
    (("--strategy", "fsdp", "--devices", "2"), "--strategy fsdp needs GPUs"),
])
def test_a_setting_this_machine_cannot_train_with_is_refused_before_training(args, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, stderr = refused_in_process("run", "ablation-nsp", "--preset", "smoke", *args)
    assert code == 2 and message in stderr


def test_running_out_of_memory_is_named_as_memory_not_precision():
    from datamodules.errors import UsageError
    from experiments.running.hardware import Hardware

    with pytest.raises(UsageError, match="does not fit in this device's memory: lower data.tokens_per_batch"):
        with Hardware(precision="bf16-mixed").training("pretraining X"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(UsageError, match="pretraining X failed under precision bf16-mixed.*--precision 32-true"):
        with Hardware(precision="bf16-mixed").training("pretraining X"):
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")


def test_the_precision_study_sets_one_row_under_each_precision_beside_the_seed_noise(tmp_path, monkeypatch):
    from studies import precision

    monkeypatch.setattr(precision, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(precision, "STUDY_DIR", tmp_path)
    (tmp_path / "runs").mkdir()
    config = {"objective": "mlm", "encoder": {"attention": "absolute"}}
    for name, precision_name, loss in (("a", "bf16-mixed", 4.41), ("b", "32-true", 4.45)):
        (tmp_path / "runs" / f"{name}.json").write_text(json.dumps({
            "experiment": "ablation-nsp", "row": "DOC-SENTENCES", "seed": 0, "preset": "cpu", "config": config,
            "metrics": {"mlm_loss": loss, "minimal_pairs": 86.0}, "seconds": {"pretraining": 400.0},
            "wall_time_s": 500.0, "git_commit": "0" * 40,
            "hardware": {"precision": precision_name, "machine_kind": "cpu-avx512-x"}}))
    text = precision.report().read_text()
    line = next(line for line in text.splitlines() if line.startswith("| mlm_loss"))
    # 32-true before bf16-mixed (sorted by name), the difference first minus last, beside the calibrated SD
    assert line.startswith("| mlm_loss | 4.450 | 4.410 | +0.040 | ") and not line.endswith("| - |")
    assert "`runs/a.json` (commit 00000000)" in text
