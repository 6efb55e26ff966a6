"""From the command line: any config field (--set), a corpus of one's own (--corpus), named tasks, progress
lines in a log, and a trained row exported to HuggingFace."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import refused_in_process
from datamodules.errors import UsageError
from experiments.running.overrides import parse_overrides

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=600):
    environment = os.environ | {"WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=timeout)


def test_set_parses_each_value_by_its_fields_type():
    overrides = parse_overrides(["optim.peak_lr=3e-4", "train_tokens=50_000", "encoder.pre_layer_norm=true",
                                 "data.corpus.max_documents=none", "evaluate_at=0.25,0.5", "encoder.p2c_index=code"])
    assert overrides == {"optim.peak_lr": 3e-4, "train_tokens": 50_000, "encoder.pre_layer_norm": True,
                         "data.corpus.max_documents": None, "evaluate_at": (0.25, 0.5), "encoder.p2c_index": "code"}
    assert parse_overrides([], "hub:wikitext:wikitext-103-raw-v1") == {
        "data.corpus.source": "hub", "data.corpus.hub_path": "wikitext", "data.corpus.hub_name": "wikitext-103-raw-v1"}
    with pytest.raises(UsageError) as error:
        parse_overrides(["optim.peak_lr=fast", "optim.nothing=1", "encoder=3", "train_tokens=1.5", "no-equals"])
    message = str(error.value)  # every problem at once
    assert all(part in message for part in ("optim.peak_lr=fast: expected a number", "has no field 'nothing'",
                                            "encoder: it is a group of settings", "train_tokens=1.5: expected a whole",
                                            "'no-equals': expected dotted.path=value"))
    with pytest.raises(UsageError, match="expected files:PATH"):
        parse_overrides([], "ftp:somewhere")


def test_tasks_go_by_readable_names():
    from datamodules.downstream import task_name
    from experiments.spec import RunConfig

    assert task_name("reviews=files:/a/train.csv,/b/dev.csv") == "reviews"
    assert task_name("files:/data/mine/train.csv,/data/mine/dev.csv") == "mine"  # the folder both are in
    assert task_name("files:/a/train.csv,/b/dev.csv") == "train" and task_name("glue-sst2") == "glue-sst2"
    with pytest.raises(UsageError, match="task name 'bad name'"):
        RunConfig(tasks=("bad name=files:a.csv,b.csv",)).validate()
    with pytest.raises(UsageError, match="two tasks share a name"):
        RunConfig(tasks=("files:/x/t/a.csv,/x/t/b.csv", "t=files:c.csv,d.csv")).validate()


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.peak_lr=fast", "--set", "encoder.nope=1"], "expected a number; --set encoder.nope"),
    (["--set", "objective=rtd"], "row 'SEGMENT-PAIR+NSP': invalid run config: NSP formats"),
    (["--set", "data.input_format=doc-sentences"], "the rows of this table vary data.input_format"),
])
def test_bad_overrides_exit_2_with_every_problem(args, message):
    code, stderr = refused_in_process("run", "ablation-nsp", "--preset", "smoke", *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr[-2000:]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """A folder of plain-text files (real news articles, blank-line separated) and a named sentence task in
    GLUE's CSV schema (real movie reviews)."""
    from datamodules.corpus import CorpusConfig, iter_documents
    from datamodules.downstream import load_sentiment

    folder = tmp_path_factory.mktemp("my-corpus")
    documents = list(iter_documents(CorpusConfig(max_documents=150)))
    for part in range(3):
        (folder / f"part{part}.txt").write_text("\n\n".join(documents[part::3]))
    task = tmp_path_factory.mktemp("reviews")
    sentiment = load_sentiment()
    for split, (texts, labels) in (("train", sentiment.train), ("dev", sentiment.validation)):
        with open(task / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "label"])
            writer.writerows([text[0], int(label)] for text, label in list(zip(texts, labels))[:256])
    return folder, task


@pytest.fixture(scope="module")
def own_table(own_data, tmp_path_factory):
    """DeBERTa's table, two rows (absolute and disentangled attention), on the folder, with the named task."""
    folder, task = own_data
    results = tmp_path_factory.mktemp("results")
    args = ("--preset", "smoke", "--rows", "RoBERTa-ReImp,DeBERTa", "--corpus", f"files:{folder}",
            "--set", "encoder.p2c_index=code", "--set", "finetune.seeds=2", "--tasks", f"reviews=files:{task / 'train.csv'},{task / 'dev.csv'}",
            "--results-dir", str(results))
    done = cli("run", "ablation-deberta", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return results, args, done.stdout


@pytest.mark.slow(seconds=60)
@pytest.mark.xdist_group("own-table")
def test_a_table_on_my_own_corpus_and_task_names_both_and_keeps_its_own_directory(own_table, own_data):
    results, _, output = own_table
    folder, _ = own_data
    directories = [p.name for p in (results / "ablation-deberta").iterdir()]
    assert len(directories) == 1 and directories[0].startswith("smoke+")  # never mixed with the default table
    table = (results / "ablation-deberta" / directories[0] / "table.md").read_text()
    assert f"Pretraining corpus: files {folder}, first 300 documents" in table
    assert "`encoder.p2c_index=code`" in table and "`data.corpus.source=files`" in table
    header = json.loads((results / "ablation-deberta" / directories[0] / "table.json").read_text())["header"]
    assert "reviews" in header and "sentiment" not in header and "topic" not in header
    assert "Majority-class baselines: reviews " in table
    row = json.loads(next((results / "ablation-deberta" / directories[0] / "rows").glob("deberta__*.json")).read_text())
    assert row["metrics"]["downstream_avg"] == row["metrics"]["reviews"]  # the average of the tasks that ran
    runs = [row["metrics"]["reviews@ft0"], row["metrics"]["reviews@ft1"]]  # two fine-tuning seeds: their median
    assert row["metrics"]["reviews"] == pytest.approx(np.median(runs))
    assert row["metrics"]["reviews_ft_range"] == pytest.approx(max(runs) - min(runs))
    assert "spread (max - min): RoBERTa-ReImp: reviews" in table
    # not a terminal: plain progress lines with the step, loss, throughput and ETA
    assert "pretraining DeBERTa: step 12/24 (50%), loss " in output and "tokens/s" in output and "ETA" in output
    assert "fine-tuning on reviews: step" in output and "(row 2 of 2, ETA for the table" in output


@pytest.mark.slow(seconds=30)
@pytest.mark.xdist_group("own-table")
@pytest.mark.parametrize("row", ["RoBERTa-ReImp", "DeBERTa"])
def test_an_exported_row_loads_in_transformers_with_the_same_hidden_states(row, own_table, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from ablations.encoder import Encoder
    from experiments.presets import PRESETS
    from experiments.registry import EXPERIMENTS
    from experiments.running.runner import build_module, plan

    results, args, _ = own_table
    done = cli("export", "ablation-deberta", "--row", row, *[a for a in args if a not in ("--rows", "RoBERTa-ReImp,DeBERTa")],
               "--to", str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-3000:]
    model, tokenizer = AutoModel.from_pretrained(tmp_path / "hf").eval(), AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == ("BertModel" if row == "RoBERTa-ReImp" else "DebertaV2Model")
    # ours, from the row's own checkpoint
    overrides = parse_overrides(["encoder.p2c_index=code", "finetune.seeds=2"], args[args.index("--corpus") + 1],
                                (args[args.index("--tasks") + 1],))
    p = plan(EXPERIMENTS["ablation-deberta"], PRESETS["smoke"], 1, [row], overrides, results)[0]
    state = torch.load(p.work_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module = build_module(p.config, len(tokenizer))
    module.load_state_dict(state["state_dict"])
    ours = Encoder(module.encoder.config.replace(emd=False)).eval()
    ours.load_state_dict(module.encoder_state(), strict=False)
    batch = tokenizer(["Shares rose on Monday after the report.", "A quiet film, and a fine one."],
                      padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    types = batch.get("token_type_ids") if ours.config.type_vocab_size > 1 else None
    with torch.no_grad():
        theirs = model(**batch).last_hidden_state
        mine = ours(batch["input_ids"], mask, types)
    assert np.abs(theirs[mask].numpy() - mine[mask].numpy()).max() < 1e-5


@pytest.mark.slow(seconds=10)
@pytest.mark.xdist_group("own-table")
def test_export_explains_a_row_it_cannot_export(own_table, tmp_path):
    results, _, _ = own_table
    done = cli("export", "ablation-deberta", "--row", "DeBERTa", "--preset", "smoke", "--results-dir", str(results),
               "--to", str(tmp_path / "hf"))  # the default table's row was never trained here
    assert done.returncode == 2 and "has no pretrained checkpoint" in done.stderr and "make ablation-deberta" in done.stderr


@pytest.mark.slow(seconds=10)
@pytest.mark.xdist_group("own-table")
def test_word_order_reports_both_rows_and_explains_an_untrained_one(own_table, capsys):
    from experiments.__main__ import main

    results, args, _ = own_table
    common = [a for a in args if a not in ("--rows", "RoBERTa-ReImp,DeBERTa")]
    for row in ("RoBERTa-ReImp", "DeBERTa"):
        main(["word-order", "ablation-deberta", "--row", row, *common])
        printed = capsys.readouterr().out
        written = Path(printed.split("written: ")[1].strip())
        report = json.loads(written.read_text())
        entropy = report["heldout_cross_entropy"]
        assert entropy["left_bigram"] < entropy["unigram"]
        row_file = json.loads((written.parent.parent / "rows" / written.name).read_text())
        assert entropy["mlm"] == pytest.approx(row_file["metrics"]["mlm_loss"], rel=1e-4)  # the row's own figure
        assert len(report["layers"]) == 2 and all(0 < layer["entropy_share"] <= 1 for layer in report["layers"])
        assert f"{row} (seed 0, preset smoke): " in printed and "adjacent tokens vs uniform" in printed
    code, stderr = refused_in_process("word-order", "ablation-deberta", "--row", "DeBERTa", "--preset", "smoke",
                                      "--results-dir", str(results))  # the default table's row: never trained
    assert code == 2 and "has no pretrained checkpoint" in stderr


@pytest.mark.slow(seconds=15)
@pytest.mark.xdist_group("own-table")
def test_the_fine_tuning_spread_study_reruns_a_trained_rows_fine_tuning_and_reports_it(own_table, tmp_path):
    """`python -m studies.finetune_spread`: a trained row (named by its table's overrides) fine-tuned twice per
    task with a changed setting, its runs written and reported; a non-fine-tuning --set is refused."""
    from studies.finetune_spread import main

    results, args, _ = own_table
    table = dict(zip(args[::2], args[1::2]))
    study = ["--experiment", "ablation-deberta", "--row", "DeBERTa", "--preset", "smoke", "--results-dir", str(results),
             "--corpus", table["--corpus"], "--tasks", table["--tasks"], "--table-set", "encoder.p2c_index=code",
             "--table-set", "finetune.seeds=2", "--dir", str(tmp_path)]
    main(["run", "low-lr", "--runs", "2", "--set", "finetune.peak_lr=5e-4", *study])
    written = json.loads((tmp_path / "runs" / "low-lr.json").read_text())
    assert written["finetune"]["peak_lr"] == 5e-4 and written["finetune"]["seeds"] == 2
    assert list(written["runs"]) == ["reviews"] and len(written["runs"]["reviews"]) == 2
    assert all(0 <= score <= 100 for score in written["runs"]["reviews"])
    main(["report", "--dir", str(tmp_path)])
    assert "| low-lr | DeBERTa seed 0 (smoke) | `finetune.peak_lr=0.0005` | reviews | 2 |" in (tmp_path / "README.md").read_text()
    with pytest.raises(SystemExit) as refused:
        main(["run", "wrong", "--set", "optim.peak_lr=1e-3", *study])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:  # --only names a task the row does not have
        main(["run", "wrong", "--only", "bigram_shift", *study])
    assert refused.value.code == 2
    main(["run", "only", "--runs", "2", "--set", "finetune.peak_lr=5e-4", "--only", "reviews", *study])
    only = json.loads((tmp_path / "runs" / "only.json").read_text())
    assert only["runs"] == written["runs"] and only["command"].endswith("--only reviews")  # the same runs, reused


def test_calibrate_refuses_one_seed_and_reports_what_the_fine_tuning_seeds_cost():
    from experiments.__main__ import finetune_cost

    code, stderr = refused_in_process("calibrate", "--preset", "smoke", "--seeds", "1")
    assert code == 2 and "calibrate needs --seeds >= 2" in stderr
    row = {"wall_time_s": 800.0, "seconds": {"pretraining": 200.0, "fine-tuning": {"a": [100.0, 90.0, 110.0],
                                                                                     "b": [80.0, 70.0, 60.0]}}}
    cost = finetune_cost(row)  # with one run per task: 800 - (90 + 110) - (70 + 60) = 470 s
    assert cost["ratio"] == round(800 / 470, 3) and cost["row_s"] == 800.0 and cost["pretraining_s"] == 200.0
    assert finetune_cost({"wall_time_s": 5.0}) is None  # a row written before rows recorded their seconds
