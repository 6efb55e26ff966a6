"""The objectives' claims, one test each: where ES / NES / GDES gradients land, RTD labels, SiFT, learning."""
import math

import lightning as L
import pytest
import torch

from ablations.config import EncoderConfig
from ablations.sharing import GradientDisentangledEmbedding, average_cosine_similarity
from datamodules.corpus import CorpusConfig
from datamodules.downstream import load_sentiment
from datamodules.batching import FineTuneDataModule
from datamodules.masking import IGNORE_INDEX, MaskingConfig
from datamodules.pretraining import PretrainingDataConfig, PretrainingDataModule, collate
from datamodules.tokenization import TokenizerConfig
from lightning_modules.base import OptimConfig
from lightning_modules.finetune import FineTuneConfig, FineTuneModule
from lightning_modules.mlm import MLMModule
from lightning_modules.rtd import RTDConfig, RTDModule

ENCODER = EncoderConfig(vocab_size=1000, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_positions=64,
                        dropout=0.0, attention_dropout=0.0)
DATA = PretrainingDataConfig(corpus=CorpusConfig(max_documents=200), tokenizer=TokenizerConfig(vocab_size=1000),
                             block_size=64, tokens_per_batch=1024)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    module = PretrainingDataModule(DATA, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))
    module.setup()
    return module


@pytest.fixture(scope="module")
def batch(data):
    return collate([data.train_set[i] for i in range(8)])


def rtd_module(sharing, **changes):
    torch.manual_seed(0)
    config = RTDConfig(sharing=sharing, generator_width=0.5, **changes)
    return RTDModule(ENCODER.replace(vocab_size=1000), OptimConfig(), config)


def gradients_of(module, loss_name, batch):
    module.zero_grad()
    module.losses(batch)[loss_name].backward()
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_es_one_table_that_both_losses_update(batch):
    module = rtd_module("es")
    assert module.discriminator.embeddings.word.weight is module.generator.embeddings.word.weight
    assert module.discriminator.embeddings.position is module.generator.embeddings.position
    table = "generator.embeddings.word.weight"
    assert table in gradients_of(module, "generator_mlm_loss", batch)
    assert table in gradients_of(module, "disc_loss", batch)


@pytest.mark.parametrize("sharing", ["nes", "gdes"])
def test_nes_and_gdes_keep_rtd_off_the_generator_table_and_mlm_off_the_discriminator(sharing, batch):
    module = rtd_module(sharing)
    rtd = gradients_of(module, "disc_loss", batch)
    assert not any(name.startswith("generator.") for name in rtd)
    assert "generator.embeddings.word.weight" not in rtd
    mlm = gradients_of(module, "generator_mlm_loss", batch)
    assert "generator.embeddings.word.weight" in mlm
    assert not any(name.startswith(("discriminator.", "rtd_head.")) for name in mlm)


def test_gdes_delta_starts_at_zero_and_is_the_only_embedding_parameter_rtd_updates(batch):
    module = rtd_module("gdes")
    word = module.discriminator.embeddings.word
    assert isinstance(word, GradientDisentangledEmbedding) and word.source is module.generator.embeddings.word
    assert torch.count_nonzero(word.delta) == 0
    rtd = gradients_of(module, "disc_loss", batch)
    embedding_grads = {name for name in rtd if "embeddings.word" in name or "embeddings.position" in name}
    assert embedding_grads == {"discriminator.embeddings.word.delta", "discriminator.embeddings.position.delta"}


def test_saved_discriminator_embedding_is_generator_table_plus_delta(batch):
    module = rtd_module("gdes")
    with torch.no_grad():
        module.discriminator.embeddings.word.delta.normal_()
    state = module.encoder_state()
    expected = module.generator.embeddings.word.weight + module.discriminator.embeddings.word.delta
    assert torch.allclose(state["embeddings.word.weight"], expected)
    assert not any(key.endswith((".delta", ".source.weight")) for key in state)
    from ablations.encoder import Encoder

    plain = Encoder(module.discriminator_config())
    plain.load_state_dict(state)  # a plain encoder: what fine-tuning and export start from


def test_a_sampled_token_equal_to_the_original_is_labelled_original(batch):
    module = rtd_module("es")
    vocab = ENCODER.vocab_size
    labels = batch["mlm_labels"]
    # generator logits that put all mass on the original token at even positions, elsewhere on token 7
    logits = torch.full((len(labels), vocab), -1e4)
    target = torch.where(torch.arange(len(labels)) % 2 == 0, labels, torch.full_like(labels, 7))
    logits[torch.arange(len(labels)), target] = 1e4
    corrupted, original, replaced = module.corrupt(batch, logits)
    flat_replaced = replaced.reshape(-1)[batch["mlm_positions"]]
    assert not flat_replaced[0::2].any()
    assert flat_replaced[1::2].tolist() == (labels[1::2] != 7).tolist()
    assert (corrupted.reshape(-1)[batch["mlm_positions"]] == target).all()
    unmasked = batch["labels"] == IGNORE_INDEX
    assert (corrupted[unmasked] == batch["input_ids"][unmasked]).all() and not replaced[unmasked].any()


def test_mlm_head_only_computes_logits_at_masked_positions(batch):
    module = MLMModule(ENCODER, OptimConfig())
    seen = {}
    handle = module.mlm_head.register_forward_hook(lambda m, args, out: seen.update(shape=out.shape))
    module.losses(batch)
    handle.remove()
    assert seen["shape"] == (len(batch["mlm_positions"]), ENCODER.vocab_size)
    assert len(batch["mlm_positions"]) < 0.2 * batch["input_ids"].numel()


def test_average_cosine_similarity_is_exact():
    table = torch.randn(40, 8) + 0.5
    unit = torch.nn.functional.normalize(table[5:].double(), dim=-1)
    cosines = unit @ unit.T
    n = cosines.shape[0]
    brute = (cosines.sum() - cosines.diagonal().sum()) / (n * (n - 1))
    assert average_cosine_similarity(table, 5) == pytest.approx(float(brute), abs=1e-12)


def test_sift_perturbs_normalised_embeddings_and_changes_the_loss(batch):
    torch.manual_seed(0)
    sift = FineTuneModule(ENCODER, 2, "accuracy", FineTuneConfig(sift=True, sift_init_scale=0.5, sift_step=0.5), 10)
    with torch.no_grad():  # weights large enough that predictions depend on the input
        for parameter in sift.parameters():
            parameter.normal_(0, 0.3)
    plain = FineTuneModule(ENCODER, 2, "accuracy", FineTuneConfig(sift=False), max_steps=10)
    plain.load_state_dict(sift.state_dict())
    example = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")} | {"labels": torch.zeros(8, dtype=torch.long)}
    seen = []
    original = sift.encoder.embeddings.forward

    def spy(ids, types=None, noise=None):
        seen.append(noise)
        return original(ids, types, noise)

    sift.encoder.embeddings.forward = spy
    with_sift = sift.losses(example)
    without = plain.losses(example)
    noises = [n for n in seen if n is not None]
    assert len(noises) == 2 and noises[0].shape[-1] == ENCODER.embedding_dim
    assert with_sift["sift_loss"] > 1e-4 and with_sift["loss"] > without["loss"] + 1e-4
    assert torch.allclose(with_sift["task_loss"], without["task_loss"])
    # the perturbation is added after the embedding LayerNorm: the normalised embeddings move by exactly it
    embeddings = sift.encoder.embeddings
    ids = example["input_ids"]
    with torch.no_grad():
        clean = embeddings.norm(embeddings.word(ids) + embeddings.position.weight[: ids.shape[1]]
                                + embeddings.token_type(example["token_type_ids"]))
        assert torch.allclose(original(ids, example["token_type_ids"], noises[1]), clean + noises[1], atol=1e-5)


# -- short training runs on the offline corpus --------------------------------------------------------


def train(module, data, steps=40):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0, inference_mode=False)
    trainer.fit(module, data)
    return module


def first_and_last_loss(module, data, name, steps=40):
    batch = collate([data.train_set[i] for i in range(16)])
    torch.manual_seed(0)
    before = float(module.losses(batch)[name])
    train(module, data, steps)
    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        after = float(module.losses(batch)[name])
    return before, after


@pytest.mark.parametrize("make, name", [
    (lambda: MLMModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=40)), "loss"),
    (lambda: MLMModule(ENCODER.replace(attention="disentangled"), OptimConfig(peak_lr=2e-3, max_steps=40)), "loss"),
    (lambda: RTDModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=40), RTDConfig(sharing="gdes")), "loss"),
    (lambda: RTDModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=40), RTDConfig(variant="all-tokens-mlm")), "loss"),
    (lambda: RTDModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=40), RTDConfig(variant="replace-mlm")), "loss"),
], ids=["mlm", "mlm-deberta", "rtd-gdes", "all-tokens-mlm", "replace-mlm"])
@pytest.mark.slow(seconds=30)
def test_short_training_lowers_the_loss(make, name, data):
    torch.manual_seed(0)
    before, after = first_and_last_loss(make(), data, name)
    assert after < before - 0.3, (before, after)


def test_a_resumed_run_counts_the_training_time_of_its_earlier_sessions(data, tmp_path):
    """A row killed and resumed reports its whole pretraining time: the checkpoint carries the seconds spent
    before it, and the resumed module adds its own session's to them."""
    def trainer(steps):
        return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         limit_val_batches=0)
    first = MLMModule(ENCODER, OptimConfig(max_steps=6))
    interrupted = trainer(3)
    interrupted.fit(first, data)
    interrupted.save_checkpoint(tmp_path / "step3.ckpt")
    checkpoint = torch.load(tmp_path / "step3.ckpt", weights_only=False)
    assert checkpoint["fit_seconds"] > 0
    saved = checkpoint["fit_seconds"] = 1000.0  # a marker: the resumed run must start from it, not from 0
    torch.save(checkpoint, tmp_path / "step3.ckpt")
    resumed = MLMModule(ENCODER, OptimConfig(max_steps=6))
    resumed_trainer = trainer(6)
    resumed_trainer.fit(resumed, data, ckpt_path=str(tmp_path / "step3.ckpt"), weights_only=False)
    assert saved < resumed.fit_seconds < saved + 600
    assert resumed.resumed_fit_seconds == saved  # what the row adds to its last session's time
    resumed_trainer.save_checkpoint(tmp_path / "step6.ckpt")
    assert torch.load(tmp_path / "step6.ckpt", weights_only=False)["fit_seconds"] == resumed.fit_seconds  # stopped


def test_mlm_nsp_training_lowers_both_losses(tmp_path):
    nsp_data = PretrainingDataModule(DATA.__class__(**(DATA.__dict__ | {"input_format": "segment-pair"})), seed=0,
                                     cache_dir=tmp_path)
    nsp_data.setup()
    torch.manual_seed(0)
    module = MLMModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=40), nsp=True)
    before, after = first_and_last_loss(module, nsp_data, "mlm_loss")
    assert after < before - 0.3


@pytest.mark.slow(seconds=60)
def test_fine_tuning_a_pretrained_checkpoint_beats_the_majority_class(data):
    torch.manual_seed(0)
    encoder = ENCODER.replace(hidden_size=64, num_heads=4, ffn_size=256)
    pretrained = train(MLMModule(encoder, OptimConfig(peak_lr=2e-3, max_steps=300)), data, 300)
    task = load_sentiment()
    config = FineTuneConfig(peak_lr=1e-3, epochs=4, batch_size=32, max_length=64)
    finetune_data = FineTuneDataModule(task, data.tokenized.tokenizer, "bpe", 64, 32, seed=0,
                                       max_train_examples=4000, max_validation_examples=800)
    steps = math.ceil(4000 / 32 * 4)
    module = FineTuneModule(encoder, 2, "accuracy", config, steps, pretrained.encoder_state())
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                        val_check_interval=steps, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    trainer.fit(module, finetune_data)
    accuracy = float(trainer.callback_metrics["val/score"])
    assert accuracy > task.majority_score() + 2, (accuracy, task.majority_score())


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_position_lr_scale_gives_only_the_absolute_position_tables_a_scaled_rate(objective):
    def groups(scale):
        optim = OptimConfig(peak_lr=1e-3, max_steps=100, position_lr_scale=scale)
        module = MLMModule(ENCODER, optim) if objective == "mlm" else RTDModule(ENCODER, optim, RTDConfig(sharing="nes"))
        optimizer = module.configure_optimizers()["optimizer"]
        names = {id(p): n for n, p in module.named_parameters()}
        return [(group["initial_lr"], sorted(names[id(p)] for p in group["params"])) for group in optimizer.param_groups]

    scaled = groups(10.0)
    assert scaled[-1][0] == pytest.approx(1e-2) and scaled[0][0] == scaled[1][0] == pytest.approx(1e-3)
    assert scaled[-1][1] and all(name.endswith("embeddings.position.weight") for name in scaled[-1][1])
    assert len(scaled[-1][1]) == (1 if objective == "mlm" else 2)  # an RTD row: generator and discriminator
    assert len(groups(1.0)) == 2  # off by default: RoBERTa's one rate for every parameter


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_discriminator_lr_scale_moves_what_only_the_discriminator_owns(sharing):
    module = RTDModule(ENCODER, OptimConfig(peak_lr=1e-3, max_steps=100, position_lr_scale=10.0),
                       RTDConfig(sharing=sharing, discriminator_lr_scale=3.0))
    names = {id(p): n for n, p in module.named_parameters()}
    rate = {names[id(p)]: group["initial_lr"] for group in module.configure_optimizers()["optimizer"].param_groups
            for p in group["params"]}
    assert len(rate) == len(names)  # every trained parameter is in exactly one group
    for name, lr in rate.items():
        discriminators = name.startswith(("discriminator.", "rtd_head."))
        position = 10.0 if name.endswith("embeddings.position.weight") else 1.0
        assert lr == pytest.approx(1e-3 * position * (3.0 if discriminators else 1.0)), name
    # ES: D reads G's word table, which keeps G's rate; NES: D has its own; GDES: D's own part is the delta
    assert rate["generator.embeddings.word.weight"] == pytest.approx(1e-3)
    assert ("discriminator.embeddings.word.weight" in rate) == (sharing == "nes")
    assert (rate.get("discriminator.embeddings.word.delta") == pytest.approx(3e-3)) == (sharing == "gdes")


@pytest.mark.parametrize("replaced, logged", [([1, 1, 1, 1], {"val/replaced_fraction_masked": 1.0}),
                                              ([1, 0, 1, 1], {"val/replaced_fraction_masked": 0.75,
                                                              "val/disc_auc_masked": 2 / 3})])
def test_electra_15_logs_its_masked_auc_only_where_both_classes_occur(replaced, logged):
    """At a smoke budget every masked token is replaced (torchmetrics then returns an AUC of 0): no AUC, the share."""
    module = rtd_module("nes", variant="electra-15")
    seen = {}
    module.log = lambda name, value, **_: seen.__setitem__(name, float(value))
    module.val_auc_masked.update(torch.tensor([0.4, 0.3, 0.1, 0.9]), torch.tensor(replaced))
    module.val_masked_replaced.update(torch.tensor(replaced, dtype=torch.float))
    module._log_masked_auc()
    assert seen == pytest.approx(logged)
    assert not module.val_auc_masked.update_count  # reset for the next validation pass


def test_invalid_rtd_configs():
    from datamodules.errors import UsageError

    with pytest.raises(UsageError, match="cannot be larger"):
        RTDConfig(generator_width=2.0).validate()
    with pytest.raises(UsageError, match="unknown sharing"):
        RTDConfig(sharing="half").validate()
    with pytest.raises(UsageError, match="must be the discriminator's size"):
        RTDConfig(sharing="all", generator_width=0.5).validate()
    with pytest.raises(UsageError, match="cannot have a learning rate of its own"):
        RTDConfig(sharing="all", discriminator_lr_scale=2.0).validate()
    with pytest.raises(UsageError, match="discriminator_lr_scale must be > 0"):
        RTDConfig(discriminator_lr_scale=0.0).validate()
    assert MaskingConfig(replacement="electra").mix == (0.85, 0.15, 0.0)


@pytest.mark.slow(seconds=55)
def test_the_discriminator_learns_to_tell_replaced_from_original(data):
    """A control for the RTD plumbing (inputs, labels, head, loss): when every replacement is one fixed
    token, the discriminator must find them all, and only them. (Real, weak generators at small scale
    draw plausible tokens, and then it stays near the base rate of its labels for a long time.)"""
    torch.manual_seed(0)
    module = RTDModule(ENCODER, OptimConfig(peak_lr=2e-3, max_steps=80), RTDConfig(sharing="nes"))
    corrupt = module.corrupt

    def always_token_7(batch, logits, sampler=None):
        return corrupt(batch, torch.full_like(logits, -1e4).index_fill(1, torch.tensor([7]), 0.0), sampler)

    module.corrupt = always_token_7
    train(module, data, steps=80)
    module.eval()
    batch = collate([data.train_set[i] for i in range(32)])
    with torch.no_grad():
        out = module.losses(batch)
    assert float(out["replaced_fraction"]) > 0.9  # nearly every masked position now holds token 7
    assert float(out["recall"]) > 0.9 and float(out["precision"]) > 0.9, out
    assert float(out["disc_loss"]) < 0.1


def held_out_after_60_steps(rtd: RTDConfig, data) -> dict[str, float]:
    """Train an RTD module 60 steps on the `small` schedule (peak 1e-3, 60 warm-up steps); its held-out metrics."""
    torch.manual_seed(0)
    module = RTDModule(ENCODER, OptimConfig(peak_lr=1e-3, max_steps=1000), rtd)
    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0, inference_mode=False, gradient_clip_val=1.0)
    trainer.fit(module, data)
    trainer.limit_val_batches = 4
    trainer.validate(module, data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.slow(seconds=35)
@pytest.mark.parametrize("prior", [False, True], ids=["bias-at-zero", "bias-at-prior"])
def test_discriminator_collapse_is_reported_and_the_base_rate_bias_prevents_it(prior, data, capsys):
    """ELECTRA's zero-initialised output bias on the `small` schedule (peak 1e-3, 60 warm-up steps): within
    60 steps every held-out token gets the same state and the same logit, and the learning check says so
    in one line. Starting the bias at the base rate (`head_bias_prior`) keeps the states apart and the
    logits spread, and the AUC rises."""
    metrics = held_out_after_60_steps(RTDConfig(sharing="es", generator_width=0.5, head_bias_prior=prior), data)
    warned = "discriminator has collapsed" in capsys.readouterr().err
    if prior:
        assert metrics["val/disc_token_cosine"] < 0.5 and metrics["val/disc_logit_std"] > 0.1, metrics
        assert metrics["val/disc_auc"] > 0.65 and not warned, metrics
    else:
        assert metrics["val/disc_token_cosine"] > 0.95 and metrics["val/disc_logit_std"] < 0.02, metrics
        assert warned


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("prior", [False, True], ids=["gate-at-zero", "gate-at-prior"])
def test_all_tokens_mlm_copy_gate_at_zero_collapses_its_discriminator_as_the_rtd_head_did(prior, data, capsys):
    """All-Tokens MLM's copy gate has the RTD head's imbalance the other way (about 85% of tokens are copies):
    at a bias of 0 the discriminator's held-out token states are one vector within 60 steps (at cpu its row's
    were from the first validation, step 261); at the copied share's log-odds they stay apart."""
    rtd = RTDConfig(sharing="es", generator_width=0.5, variant="all-tokens-mlm", head_bias_prior=prior)
    cosine = held_out_after_60_steps(rtd, data)["val/disc_token_cosine"]
    warned = "discriminator has collapsed" in capsys.readouterr().err
    assert (cosine < 0.85 and not warned) if prior else (cosine > 0.95 and warned), cosine


def test_base_rate_bias_is_the_log_odds_of_the_replaced_share():
    from lightning_modules.rtd import replaced_share_at_init

    module = RTDModule(ENCODER, OptimConfig(), RTDConfig(head_bias_prior=True), masking_probability=0.15)
    share = 0.15 * (1 - 1 / (1000 - 5))
    assert math.isclose(float(module.rtd_head.out.bias), math.log(share / (1 - share)), rel_tol=1e-6)
    assert float(rtd_module("es").rtd_head.out.bias) == 0.0  # the reference code's zero, by default
    assert replaced_share_at_init(0.15, 1000, "electra-15") > 0.99  # ELECTRA 15%: only selected tokens count
    # All-Tokens MLM's copy gate: its positive class is "copy", the tokens not replaced (it collapsed at 0, at cpu)
    gate = RTDModule(ENCODER, OptimConfig(), RTDConfig(head_bias_prior=True, variant="all-tokens-mlm"),
                     masking_probability=0.15)
    assert math.isclose(float(gate.rtd_head.out.bias), math.log((1 - share) / share), rel_tol=1e-6)


def test_the_generators_samples_follow_its_softmax_at_the_temperature():
    from lightning_modules.rtd import sample_from_softmax

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, -1e4]]).repeat(100_000, 1)
    for temperature in (1.0, 2.0):
        samples = sample_from_softmax(logits, temperature, torch.Generator().manual_seed(0))
        frequencies = torch.bincount(samples, minlength=5).double() / len(samples)
        expected = torch.softmax(logits[0].double() / temperature, -1)
        # 5 standard errors of a binomial share at n = 100,000: at most 0.008
        assert torch.allclose(frequencies, expected, atol=0.008), (frequencies, expected)
        assert frequencies[4] == 0  # a token of probability 0 (in fp32) is never drawn
    # the sampler's generator makes it reproducible
    first, again = (sample_from_softmax(logits[:50], 1.0, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, again)
