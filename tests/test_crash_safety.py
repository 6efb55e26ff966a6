"""A sweep survives kills, damaged files, signals and a second sweep beside it, with nothing lost.

The end-to-end tests run a two-row smoke sweep (FULL-SENTENCES and DOC-SENTENCES, sentiment only) and
compare every interrupted sweep's table, metric for metric, with an uninterrupted one.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.errors import UsageError
from experiments.running.durable import resumable_checkpoint
from experiments.running.overrides import directory_name, parse_overrides

ROOT = Path(__file__).resolve().parent.parent
# Fine-tuning runs 8 epochs (64 steps, several seconds) instead of smoke's one (8 steps, under a second): the kill
# meant for fine-tuning comes up to 1.5 s after it starts, and with one epoch it could land after the row was
# written on a fast machine, leaving no row for the row-file crash that follows (it then exited 0, unkilled).
FINETUNE = "finetune.epochs=8"
SWEEP = ("run", "ablation-nsp", "--preset", "smoke", "--rows", "FULL-SENTENCES,DOC-SENTENCES", "--tasks", "sentiment",
         "--set", FINETUNE)
ROWS = ("full-sentences__seed0.json", "doc-sentences__seed0.json")
TABLE = Path("ablation-nsp", directory_name("smoke", parse_overrides([FINETUNE], tasks=("sentiment",))))  # a table of its own


# `python -m experiments`, but the sweep's process kills itself with SIGKILL halfway through the n-th write of <what>
# ("checkpoint" or "row-file"): the test wraps the suite's one atomic write (experiments.running.durable.write_atomically,
# which checkpoints and row files go through) in the child before the sweep starts, so that production code
# carries no hook for it. The half is written where the real write puts its temporary file.
CRASHING_SWEEP = """
import os, runpy, signal, sys
from experiments.running import durable
what, n = sys.argv.pop(1).split(":")
seen, write = [0], durable.write_atomically
def write_or_die_halfway(path, data, kind="file"):
    seen[0] += kind == what
    if kind == what and seen[0] == int(n):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f"{path.name}.tmp{os.getpid()}"), "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data, kind)
durable.write_atomically = write_or_die_halfway
runpy.run_module("experiments", run_name="__main__", alter_sys=True)
"""


def start(results: Path, log: Path, crash_at: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """The sweep in its own process (and process group); `crash_at` "<what>:<n>" makes it die halfway through the
    n-th write of <what>; `env` adds to its environment."""
    environment = os.environ | {"WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"} | (env or {})
    command = ["-c", CRASHING_SWEEP, crash_at] if crash_at else ["-m", "experiments"]
    return subprocess.Popen([sys.executable, *command, *SWEEP, "--results-dir", str(results)], cwd=ROOT,
                            env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, timeout=600) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def last_phase(output: str) -> str:
    """What the run was doing when it stopped, from its last progress line."""
    markers = {"pretraining": " steps, ", "fine-tuning": "fine-tuning on", "writing the row": "finished in"}
    position, phase = max((output.rfind(marker), phase) for phase, marker in markers.items())
    return phase if position >= 0 else "start-up"


def table_of(results: Path) -> dict:
    directory = results / TABLE
    payload = json.loads((directory / "table.json").read_text())
    metrics = {name: json.loads((directory / "rows" / name).read_text())["metrics"] for name in ROWS}
    return {"rows": payload["rows"], "claims": payload["claims"], "metrics": metrics}


def row_files(results: Path) -> dict:
    directory = results / TABLE / "rows"
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("*.json")} if directory.exists() else {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep: its table, how long it took, and its results directory."""
    results = tmp_path_factory.mktemp("reference")
    began = time.time()
    code = finish(start(results, results / "log.txt"))
    seconds = time.time() - began
    assert code == 0, (results / "log.txt").read_text()[-3000:]
    directory = results / TABLE  # a table of two of its four rows: the others shown as unmeasured
    assert "DOC-SENTENCES | 1 |" in (directory / "table.md").read_text()
    assert "SEGMENT-PAIR+NSP | 0 |" in (directory / "table.md").read_text()
    assert (directory / "curves.png").stat().st_size > 1000 and (directory / "metrics.png").stat().st_size > 1000
    assert len((directory / "table.csv").read_text().splitlines()) == 5  # header and the four rows
    return table_of(results), seconds, results


# -- fault injection -------------------------------------------------------------------------------------


@pytest.mark.slow(seconds=250)
@pytest.mark.xdist_group("crash-safety-reference")
@pytest.mark.timeout(900)
def test_sweep_killed_again_and_again_gives_the_uninterrupted_table(reference, tmp_path):
    """SIGKILL at seeded random moments in pretraining and fine-tuning, halfway through a checkpoint write and a
    row-file write, a truncated last.ckpt (its lock from a host silent past the lease), and a graceful SIGTERM;
    then the table equals the uninterrupted one."""
    expected, reference_seconds, _ = reference
    rng = np.random.default_rng(2026)
    results = tmp_path / "results"
    work = results / TABLE / "work"

    def checkpoint_exists(_log):
        return any(work.glob("*/checkpoints/*.ckpt"))

    def pretraining_after_a_checkpoint(log):
        return last_phase(log) == "pretraining" and checkpoint_exists(log)

    plan = [  # (what it interrupts, crash_at, trigger on the run's output or files, seconds after the trigger, signal)
        ("pretraining", None, checkpoint_exists, rng.uniform(0.0, 1.0), signal.SIGKILL),
        # second, while the first row surely has pretraining left (later kills may leave none)
        ("pretraining, gracefully", None, pretraining_after_a_checkpoint, rng.uniform(0.0, 0.5), signal.SIGTERM),
        ("a checkpoint write", f"checkpoint:{rng.integers(1, 4)}", None, 0, None),
        ("fine-tuning", None, lambda log: "fine-tuning on" in log, rng.uniform(0.0, 1.5), signal.SIGKILL),
        ("a row-file write", "row-file:1", None, 0, None),
        ("a random moment", None, lambda log: True, rng.uniform(2.0, 12.0), signal.SIGKILL),
    ]
    report, finished_before, spent = [], {}, 0.0
    for number, (what, crash_at, trigger, delay, signum) in enumerate(plan):
        log = tmp_path / f"run-{number}.txt"
        began = time.time()
        process = start(results, log, crash_at)
        while trigger is not None and process.poll() is None and not trigger(log.read_text()):
            time.sleep(0.05)
        sent = False  # a sweep that finished before its kill's moment came (the last, random one can) was not killed
        if trigger is not None:
            time.sleep(delay)
            if process.poll() is None:
                os.killpg(process.pid, signum)
                sent = True
        code = finish(process)
        text = log.read_text()
        seconds = time.time() - began
        spent += seconds
        how = f"{signal.Signals(signum).name} during {last_phase(text)}" if signum else "SIGKILL by itself, halfway through the write"
        report.append(f"kill {number + 1}: {what}: {how}, {seconds:.1f} s into the run, exit {code}")
        if signum == signal.SIGTERM:  # graceful: a checkpoint, a message, exit 128 + 15
            assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in text, text[-2000:]
        elif signum is None or sent:
            assert code == -signal.SIGKILL, text[-2000:]
            if what == "fine-tuning":  # the kill hit what it was meant for, so a row is left for the row-file crash
                assert last_phase(text) == "fine-tuning", text[-2000:]
        else:
            assert code == 0 and number == len(plan) - 1, f"kill {number + 1} came after the sweep ended: {text[-2000:]}"
        if number == 0:  # what a kill during a checkpoint write on an older version left: a cut last.ckpt
            for last in work.glob("*/checkpoints/last.ckpt"):
                last.write_bytes(last.read_bytes()[:1000])
            for lock in (results / TABLE).glob("*/*.lock"):  # and as if the sweep's host had died two hours ago
                lock.write_text(json.dumps({"host": "another-machine", "pid": 4242, "heartbeat": time.time() - 7200}))
        now = row_files(results)
        assert all(now.get(name) == stamp for name, stamp in finished_before.items()), "a finished row file was rewritten"
        finished_before = now
    began = time.time()
    log = tmp_path / "final.txt"
    assert finish(start(results, log)) == 0, log.read_text()[-3000:]
    assert any("does not load" in (tmp_path / f"run-{n}.txt").read_text() for n in range(1, len(plan)))
    assert "warning: taking over" in (tmp_path / "run-1.txt").read_text()  # after the lease, with the cut last.ckpt
    assert all(row_files(results).get(name) == stamp for name, stamp in finished_before.items())
    assert table_of(results) == expected
    spent += time.time() - began
    print("\n".join(report + [f"final run {time.time() - began:.1f} s; all {len(plan) + 1} runs {spent:.1f} s against "
                              f"{reference_seconds:.1f} s uninterrupted: {(spent - reference_seconds) / len(plan):.1f} s "
                              f"lost per kill, start-up included"]))


@pytest.mark.slow(seconds=50)
@pytest.mark.xdist_group("crash-safety-reference")
def test_two_sweeps_side_by_side_train_each_row_once(reference, tmp_path):
    expected = reference[0]
    first, second = start(tmp_path, tmp_path / "a.txt"), start(tmp_path, tmp_path / "b.txt")
    assert finish(first) == 0 and finish(second) == 0
    trained = [re.findall(r"\] (\S+) seed 0: \d+ steps", (tmp_path / f"{n}.txt").read_text()) for n in "ab"]
    assert sorted(trained[0] + trained[1]) == ["DOC-SENTENCES", "FULL-SENTENCES"], trained
    sessions = [len(list(w.glob("log-*"))) for w in (tmp_path / TABLE / "work").glob("pretrain-*")]
    assert sessions == [1, 1]  # each pretraining ran once, never resumed by the other sweep
    assert table_of(tmp_path)["metrics"] == expected["metrics"]
    assert not list(tmp_path.rglob("*.lock"))  # both released their locks


@pytest.mark.slow(seconds=30)
@pytest.mark.xdist_group("crash-safety-reference")
def test_a_row_stopped_in_fine_tuning_reruns_only_the_runs_it_had_not_finished(reference, tmp_path):
    import shutil

    shutil.copytree(reference[2], tmp_path / "results")
    directory = tmp_path / "results" / TABLE
    work = directory / json.loads((directory / "rows" / ROWS[1]).read_text())["curves"]
    (directory / "rows" / ROWS[1]).unlink()  # DOC-SENTENCES stopped after its pretraining and one fine-tuning run
    [record] = work.glob("finetune-*/sentiment@ft0.json")
    record.write_text(json.dumps({"score": 42.0, "seconds": 1.0}))  # a marker: this run must not be redone
    log = tmp_path / "rerun.txt"
    assert finish(start(tmp_path / "results", log)) == 0, log.read_text()[-3000:]
    assert "fine-tuning on sentiment" not in log.read_text()
    row = json.loads((directory / "rows" / ROWS[1]).read_text())
    assert row["metrics"]["sentiment"] == 42.0 and row["seconds"]["fine-tuning"] == {"sentiment": [1.0]}


@pytest.mark.slow(seconds=70)
@pytest.mark.xdist_group("crash-safety-reference")
def test_a_sweep_killed_mid_row_is_finished_by_the_next_without_waiting_for_the_lease(reference, tmp_path):
    """SIGKILL a sweep in its first row's pretraining: its lock files stay behind, naming it, but the kernel freed
    their flocks, so the next sweep on this machine takes the row over at once (the lease, an hour here, is not
    waited for), resumes its pretraining, and gives the uninterrupted table. The second row's lock names another
    host, silent for two hours: taken over with a one-line warning naming host, pid and age."""
    expected, hour = reference[0], {"ABLATIONS_LOCK_LEASE": "3600"}
    directory = tmp_path / TABLE
    first = start(tmp_path, tmp_path / "first.txt", env=hour)
    while first.poll() is None and not any(directory.glob("work/*/checkpoints/*.ckpt")):
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    assert finish(first) == -signal.SIGKILL, (tmp_path / "first.txt").read_text()[-3000:]
    left = sorted(directory.glob("*/*.lock"))  # the row's, and its pretraining work directory's
    assert [p.parent.name for p in left] == ["rows", "work"], left
    assert all(json.loads(p.read_text())["pid"] == first.pid for p in left)
    elsewhere = directory / "rows" / ROWS[1].replace(".json", ".lock")
    # two hours before this point: the sweep reaches the row a minute or more later on a loaded machine
    elsewhere.write_text(json.dumps({"host": "another-machine", "pid": 4242, "started": "earlier",
                                     "heartbeat": time.time() - 7200}))
    log = tmp_path / "second.txt"
    assert finish(start(tmp_path, log, env=hour)) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "being trained by another sweep" not in text, text[-3000:]
    [warning] = [line for line in text.splitlines() if "warning: taking over" in line]
    assert re.fullmatch(rf"warning: taking over {re.escape(str(elsewhere))} from another-machine pid 4242: its last "
                        rf"heartbeat was 1[23]\d\.\d min ago \(lease 60\.0 min\); its row resumes here", warning), warning
    work = {name: directory / json.loads((directory / "rows" / name).read_text())["curves"] for name in ROWS}
    assert [len(list(work[name].glob("log-*"))) for name in ROWS] == [2, 1]  # the killed row resumed its work
    # and its time counts the pretraining of the session killed, up to its checkpoint
    resumed = [json.loads((directory / "rows" / name).read_text())["resumed_pretraining_s"] for name in ROWS]
    assert resumed[0] > 0 and resumed[1] == 0, resumed
    assert table_of(tmp_path) == expected
    assert not list(directory.rglob("*.lock"))


# -- one fault at a time ------------------------------------------------------------------------------------


def save(path: Path, step: int) -> None:
    torch.save({"global_step": step, "state_dict": {"w": torch.arange(1000.0)}}, path)


def test_truncated_last_checkpoint_falls_back_to_the_older_one_and_none_restarts(tmp_path):
    save(tmp_path / "epoch=0-step=12.ckpt", 12)
    save(tmp_path / "epoch=0-step=24.ckpt", 24)
    save(tmp_path / "last.ckpt", 24)
    (tmp_path / "last.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:500])
    (tmp_path / "last.ckpt.tmp999").write_bytes(b"half")  # a killed write
    damaged = bytearray((tmp_path / "epoch=0-step=24.ckpt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte inside a tensor: only the zip CRC sees it
    (tmp_path / "epoch=0-step=24.ckpt").write_bytes(bytes(damaged))
    lines = []
    assert resumable_checkpoint(tmp_path, lines.append) == tmp_path / "epoch=0-step=12.ckpt"
    assert len(lines) == 2 and all("does not load" in line for line in lines)
    assert sorted(p.name.split(".damaged")[0] for p in tmp_path.glob("*.damaged-*")) == ["epoch=0-step=24.ckpt", "last.ckpt"]
    assert not list(tmp_path.glob("*.tmp*"))
    (tmp_path / "epoch=0-step=12.ckpt").write_bytes(b"not a checkpoint")
    lines.clear()
    assert resumable_checkpoint(tmp_path, lines.append) is None
    assert "starts again from step 0" in lines[-1]


def test_a_stale_last_checkpoint_gives_way_to_a_newer_periodic_one(tmp_path):
    """A kill while last.ckpt was being rewritten at step 24 leaves the step-13 one beside epoch=0-step=24.ckpt:
    the run resumes from step 24, and a row whose pretraining finished counts as finished."""
    save(tmp_path / "epoch=0-step=12.ckpt", 12)
    save(tmp_path / "epoch=0-step=24.ckpt", 24)
    save(tmp_path / "last.ckpt", 13)
    assert resumable_checkpoint(tmp_path, print) == tmp_path / "epoch=0-step=24.ckpt"
    save(tmp_path / "last.ckpt", 24)  # a tie: last.ckpt
    assert resumable_checkpoint(tmp_path, print) == tmp_path / "last.ckpt"


@pytest.mark.slow(seconds=40)
@pytest.mark.xdist_group("crash-safety-reference")
def test_a_stop_at_the_first_step_after_a_resume_resumes_where_it_stopped(reference, tmp_path):
    """SIGTERM before the first step of a resumed run: the run stops after that step with a checkpoint of it, and
    the row ends as the uninterrupted one did. (Lightning's end-of-training hooks used to rewrite that checkpoint
    as if the epoch had ended, and the resumed run then trained on the next epoch's batches.)"""
    results, work = tmp_path / "results", tmp_path / "results" / TABLE / "work"
    first = start(results, tmp_path / "a.txt")
    while first.poll() is None and not any(path.suffix == ".ckpt" for path in work.glob("*/checkpoints/epoch=*")):
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    finish(first)
    second = start(results, tmp_path / "b.txt")
    while second.poll() is None and " steps, " not in (tmp_path / "b.txt").read_text():  # its row has begun
        time.sleep(0.02)
    os.killpg(second.pid, signal.SIGTERM)
    assert finish(second) == 128 + signal.SIGTERM, (tmp_path / "b.txt").read_text()[-2000:]
    [last] = work.glob("*/checkpoints/last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["PretrainingDataModule"]["epoch"] == 0  # mid-epoch, where it stopped
    assert state["PretrainingDataModule"]["batches_done"] == state["global_step"]
    assert finish(start(results, tmp_path / "c.txt")) == 0, (tmp_path / "c.txt").read_text()[-2000:]
    assert table_of(results)["metrics"][ROWS[0]] == reference[0]["metrics"][ROWS[0]]


def test_damaged_token_array_is_rebuilt_with_a_warning_and_the_same_tokens(tmp_path, capsys):
    from datamodules import manifest
    from datamodules.corpus import CorpusConfig, load_corpus
    from datamodules.tokenization import TokenizerConfig, tokenize_corpus

    config = CorpusConfig(max_documents=40)
    tokenized = tokenize_corpus(load_corpus(config, tmp_path), TokenizerConfig(vocab_size=500))
    tokens, documents = np.array(tokenized.train.tokens), tokenized.train.document_sentences.copy()
    directory = tokenized.directory

    def reopen():
        manifest._checked.clear()  # a process checks each cache once; these reopen within one process
        return tokenize_corpus(load_corpus(config, tmp_path), TokenizerConfig(vocab_size=500))

    (directory / "train" / "tokens.bin").write_bytes((directory / "train" / "tokens.bin").read_bytes()[:100])
    assert np.array_equal(np.array(reopen().train.tokens), tokens)
    out = capsys.readouterr().out
    assert "token cache" in out and "tokens.bin has 100 bytes" in out and "rebuilding" in out
    sizes = directory / "train" / "document_sentences.bin"
    flipped = bytearray(sizes.read_bytes())
    flipped[0] ^= 0x01  # same size, different content: the checksum sees it
    sizes.write_bytes(bytes(flipped))
    assert np.array_equal(reopen().train.document_sentences, documents)
    assert "document_sentences.bin does not match its checksum" in capsys.readouterr().out
    corpus_file = next((load_corpus(config, tmp_path).directory / "train").glob("*.arrow"))
    corpus_file.write_bytes(corpus_file.read_bytes()[:-10])
    assert np.array_equal(np.array(reopen().train.tokens), tokens)
    assert "corpus cache" in capsys.readouterr().out


def test_a_row_that_trained_far_fewer_tokens_than_planned_writes_no_result():
    from experiments.running.runner import check_budget

    check_budget(SimpleNamespace(padded_tokens_seen=24_300), 24_576, "row")  # a partial batch per epoch: fine
    with pytest.raises(UsageError, match="938 padded tokens of its planned 24,576"):
        check_budget(SimpleNamespace(padded_tokens_seen=938), 24_576, "row")


@pytest.mark.parametrize("value", ["null", "5"])
def test_jsonl_text_that_is_not_a_string_is_a_clear_error_or_skipped_and_counted(value, tmp_path, capsys):
    from datamodules.corpus import CorpusConfig, iter_documents

    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "A first document. It has two sentences."}\n' + f'{{"text": {value}}}\n')
    with pytest.raises(UsageError, match=rf"docs.jsonl line 2: the 'text' field is {value}, not text"):
        list(iter_documents(CorpusConfig(source="files", paths=(str(path),))))
    documents = list(iter_documents(CorpusConfig(source="files", paths=(str(path),), skip_non_text=True)))
    assert documents == ["A first document. It has two sentences."]
    assert "skipped 1 line(s)" in capsys.readouterr().out


def test_resumed_epoch_skips_the_batches_already_trained():
    from datamodules.pretraining import TokenBudgetBatches

    dataset = SimpleNamespace(lengths=np.random.default_rng(0).integers(10, 120, 500), set_epoch=lambda epoch: None)
    sampler = TokenBudgetBatches(dataset, 1024, seed=3, shuffle=True)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.resume_at(2, 7)
    assert list(sampler) == whole[7:] and len(sampler) == len(whole)
    assert list(sampler) == whole  # the skip applies to the resumed epoch's first pass only
