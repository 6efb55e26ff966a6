"""The shipped reference results, the board of claims generated from them, and the planner."""
import json
import os

import pytest

from experiments.reporting import board
from experiments.presets import PRESETS
from experiments.registry import EXPERIMENTS
from experiments.running.runner import ROOT
from test_experiments import cli


def test_the_committed_board_is_what_the_committed_row_files_give():
    """Rebuilt from the reference rows alone, the board (and the README's counts) equal the committed ones: no
    figure on it is typed by hand, and a row file changed without `make board` fails here."""
    text = board.board(board.REFERENCE)
    assert text == (board.REFERENCE / board.BOARD).read_text()
    readme = (ROOT / "README.md").read_text()
    assert board.readme_with_results(readme, text) == readme and board.README_START in readme
    assert board.TIME_START in readme, "the README's time for the main job is rebuilt from the board"
    assert board.EXCERPT.search(readme), "the README's results excerpt is rebuilt from a reference table"


def test_the_readme_reads_the_main_jobs_time_from_each_machines_time_table():
    text = "\n".join(["**1 holds** (of 1 claims)", "### Time at `cpu` on cpu-x", "",
                      "| table | rows run | seeds a row | time per row (mean) | the table, one seed |",
                      "|---|---|---|---|---|",
                      "| ablation-masking | 2 of 2 | 1 | 9.0 min | 0.30 h |",
                      "| ablation-nsp | 4 of 4 | 3 | 15.0 min (1 shared the machine) | 1.00 h |", "",
                      "`make ablations` at `cpu` on cpu-x: 12.0 h at one seed. A row's time is ..."])
    assert board.main_job_times(text) == [
        "- `cpu` on cpu-x: `make ablation-nsp` 15.0 min (1 shared the machine) a row, 1.00 h the table at one seed "
        f"([the board's times](reference/BOARD.md#time-at-cpu-on-cpu-x)); all {len(EXPERIMENTS)} tables, `make "
        "ablations`: 12.0 h at one seed."]
    readme = f"a\n{board.TIME_START}\nold\n{board.TIME_END}\nb"
    block = f"{board.TIME_START}\n{board.main_job_times(text)[0]}\n{board.TIME_END}"
    assert board.readme_with_results(readme, text) == f"a\n{block}\nb"


def test_the_board_lists_every_claim_of_every_table_once_per_reference_folder():
    text = board.board(board.REFERENCE)
    claims = sum(len(e.checked_claims) for e in EXPERIMENTS.values())
    sections = max(1, len(board.folders(board.REFERENCE)))
    lines = [line for line in text.splitlines() if line.startswith("| ablation-")]
    claim_lines = [line for line in lines if "**" in line]  # the time tables have no verdict
    assert len(claim_lines) == claims * sections
    for experiment in EXPERIMENTS.values():
        for claim in experiment.checked_claims:  # a paper's claim is the suite's proxy where the rows depart
            assert sum(any(f"({source}) {claim.text.replace('|', chr(92) + '|')} |" in line
                           for source in {claim.source, "proxy"}) for line in claim_lines) == sections, claim.text
    # the board marks each claim as its table does
    for _, _, folder in board.folders(board.REFERENCE):
        for table in folder.glob("*/table.json"):
            for claim in json.loads(table.read_text())["claims"]:
                said = claim["claim"].replace("|", chr(92) + "|")
                assert any(f"| {table.parent.name} | ({claim['source']}) {said} |" in line for line in claim_lines)
    # the claims the rows settle are listed first, one line each
    decided = [line for line in text.splitlines() if line.startswith(("- **holds**", "- **does not hold**"))]
    assert len(decided) == sum(line.endswith(("| **holds** | yes |", "| **does not hold** | yes |")) for line in claim_lines)
    first = next(line for line in text.splitlines() if line.startswith("**"))
    assert first.endswith(f"(of {claims * sections} claims)")
    assert sum(int(part.split()[0]) for part in first.strip("*").split("**")[0].split(", ")) == claims * sections


@pytest.mark.slow(seconds=25)
def test_publish_copies_the_current_rows_into_one_folder_per_preset_and_machine_and_builds_each_table(tmp_path):
    results, reference = tmp_path / "results", tmp_path / "reference"
    done = cli("run", "ablation-nsp", "--preset", "smoke", "--rows", "DOC-SENTENCES", "--results-dir", str(results))
    assert done.returncode == 0, done.stderr[-3000:]
    stale = results / "ablation-nsp" / "smoke" / "rows" / "full-sentences__seed0.json"
    record = json.loads((results / "ablation-nsp" / "smoke" / "rows" / "doc-sentences__seed0.json").read_text())
    stale.write_text(json.dumps(record | {"row": "FULL-SENTENCES", "config_hash": "an-older-one"}))
    said = []
    built = board.publish(PRESETS["smoke"], results, reference, log=said.append)
    machine = record["hardware"]["machine_kind"]
    table = reference / "smoke" / machine / "ablation-nsp"
    assert built == [table]
    assert {p.name for p in table.iterdir()} >= {"table.md", "table.csv", "table.json", "curves.png", "metrics.png", "rows"}
    assert [p.name for p in (table / "rows").iterdir()] == ["doc-sentences__seed0.json"]  # the stale row left out
    assert any("full-sentences__seed0.json: left out" in line for line in said)
    assert list(table.glob("work/*/log-*/metrics.csv"))  # the curves' source travels with the row
    header = (table / "table.md").read_text().splitlines()[2]
    assert machine in header and record["git_commit"][:8] in header and record["hardware"]["precision"] in header
    text = board.board(reference)
    assert f"## `smoke` on {machine}" in text and "| ablation-nsp | 1 of 4 | 1 |" in text
    assert "| ablation-nsp | (paper) DOC-SENTENCES >= FULL-SENTENCES on the downstream average | DOC-SENTENCES - " \
           "FULL-SENTENCES +0.36 | missing rows: FULL-SENTENCES | **not measured** | - |" in text
    # the row recorded the machine's load while it ran; one that shared the machine is named beside its time
    assert set(record["load"]) == {"mean", "max", "cpus"} and record["load"]["cpus"] == os.cpu_count()
    assert "shared the machine)" not in text or record["load"]["mean"] > os.cpu_count() + 0.5
    row = table / "rows" / "doc-sentences__seed0.json"
    row.write_text(json.dumps(record | {"load": {"mean": os.cpu_count() + 2.0, "max": 9.0, "cpus": os.cpu_count()}}))
    assert "min (1 shared the machine) |" in board.board(reference)
    row.write_text(json.dumps(record | {"load": {"mean": os.cpu_count() - 0.5, "max": 3.0, "cpus": os.cpu_count()}}))
    assert "shared the machine) |" not in board.board(reference)
    row.write_text(json.dumps({k: v for k, v in record.items() if k != "load"}))  # trained before rows recorded it
    assert "min (1 without a load record) |" in board.board(reference)
    # a resumed row's time counts its earlier sessions' pretraining
    alone = {"mean": os.cpu_count() - 0.5, "max": 3.0, "cpus": os.cpu_count()}
    row.write_text(json.dumps(record | {"load": alone, "wall_time_s": 600.0, "resumed_pretraining_s": 300.0}))
    assert "| ablation-nsp | 1 of 4 | 1 | 15.0 min | 1.00 h (est.) |" in board.board(reference)
    # a row that copied another table's pretraining is named: its time counts that pretraining, as its table run
    # alone would, and `make ablations` counts it once (the table that trained it is not run here: 40 - 8 min)
    row.write_text(json.dumps(record | {"load": alone, "wall_time_s": 120.0, "resumed_pretraining_s": 480.0,
                                        "pretraining_borrowed_from": {"experiment": "ablation-sift"}}))
    text = board.board(reference)
    assert "| ablation-nsp | 1 of 4 | 1 | 10.0 min (1 copied another table's pretraining) | 0.67 h (est.) |" in text
    assert "`make ablations` at `smoke` on " + machine + ": at least 0.5 h at one seed" in text
    row.write_text(json.dumps(record | {"load": alone, "wall_time_s": 600.0, "resumed_pretraining_s": 300.0}))
    # publishing again keeps a table's build time while its rows give the same table, and renews it when they do not
    payload = json.loads((table / "table.json").read_text())
    (table / "table.json").write_text(json.dumps(payload | {"built": "2000-01-01 00:00 UTC"}))
    board.publish(PRESETS["smoke"], results, reference, log=said.append)
    assert "built 2000-01-01 00:00 UTC" in (table / "table.md").read_text()
    source_row = results / "ablation-nsp" / "smoke" / "rows" / "doc-sentences__seed0.json"
    source_row.write_text(json.dumps(record | {"git_commit": "0123456789abcdef"}))  # now from another commit
    board.publish(PRESETS["smoke"], results, reference, log=said.append)
    assert "built 2000-01-01" not in (table / "table.md").read_text()


def test_the_planner_says_plainly_when_a_preset_has_no_calibration(tmp_path):
    from experiments.reporting.planner import plan_table

    said = []
    plan_table(EXPERIMENTS["ablation-masking"], PRESETS["smoke"], 1.0, None, 1.0, tmp_path,
               tmp_path / "none.json", log=said.append)
    assert any("`smoke` has no calibration, so no claim's seeds can be named" in line for line in said)
    assert any(line.strip().startswith("the table, one seed:") for line in said)
    assert any("not measured on that machine" in line for line in said)  # --tflops: the rest of a row is a guess
    assert not any("every row trains with" in line for line in said)
    # cpu's rows carry the relative bias, a departure in how every row learns: its claims are proxies
    said = []
    plan_table(EXPERIMENTS["ablation-masking"], PRESETS["cpu"], 1.0, None, 1.0, tmp_path, tmp_path / "none.json",
               log=said.append)
    assert any("every row trains with encoder.relative_bias" in line for line in said)


@pytest.mark.slow(seconds=15)
def test_the_planner_times_the_rows_here_and_names_the_seeds_each_claim_needs(tmp_path):
    """At smoke, with a calibration file of the test's: each row timed on this machine, each paper claim's seeds at
    the paper's effect from the t formula, and what an hour buys."""
    from experiments.reporting.planner import plan_table

    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"smoke": {"kinds": {"absolute-mlm": {
        "date": "test", "paired_sd": {"downstream_avg": 0.2, "probe_avg": 0.2}, "degrees_of_freedom":
            {"downstream_avg": 4, "probe_avg": 4}, "row_seconds": [30.0], "seconds": {"pretraining": [10.0]}}}}}))
    said = []
    found = plan_table(EXPERIMENTS["ablation-masking"], PRESETS["smoke"], 1.0, None, None, tmp_path, calibration,
                       log=said.append)
    assert [row["name"] for row in found["rows"]] == ["static", "dynamic"]
    assert all(row["step_s"] > 0 and row["overhead"] == pytest.approx(2.0) for row in found["rows"])
    paper = found["claims"][0]  # dynamic >= static - 0.5: the paper's +0.17 is 0.67 from the threshold
    # SD 0.2 on 4 df: t(0.975, 4 + n - 1) * 0.2 / sqrt(n) <= 0.67 first at n = 1 (2.776 * 0.2 = 0.56)
    assert paper["paper"][0] == 1 and paper["paper"][1] >= paper["paper"][0]
    assert any(line.strip().startswith("1 h give") for line in said)
    assert [claim["source"] for claim in found["claims"]] == [c.source for c in EXPERIMENTS["ablation-masking"].checked_claims]
    assert any("timed steps only" in line for line in said)

    # a finished row here whose pretraining took 10 s a step: every row's step is priced at that row's ratio
    from experiments.running.hardware import default_precision, machine_kind
    from experiments.running.runner import plan

    p = plan(EXPERIMENTS["ablation-masking"], PRESETS["smoke"], 1, ["static"], None, tmp_path)[0]
    p.result_path.parent.mkdir(parents=True)
    p.result_path.write_text(json.dumps({
        "config_hash": p.config.config_hash(), "config": {"evaluate_at": []}, "steps": p.steps, "wall_time_s": 20.0 * p.steps,
        "seconds": {"pretraining": 10.0 * p.steps}, "hardware": {"machine_kind": machine_kind(default_precision())}}))
    said = []
    again = plan_table(EXPERIMENTS["ablation-masking"], PRESETS["smoke"], 1.0, None, None, tmp_path, calibration,
                       log=said.append)
    static, dynamic = again["rows"]
    assert static["step_s"] == pytest.approx(10.0) and dynamic["step_s"] > 1.0  # both at the finished row's ratio
    assert any("finished row of this table on this kind of machine" in line for line in said)


def test_the_planner_prices_the_rest_of_a_row_from_the_tables_own_finished_rows(tmp_path):
    """A finished row's evaluations and fine-tuning took (wall - pretraining) / pretraining of it: that share, not
    the calibration's (measured before the table's tasks were what they are), prices the rest of its kind's rows."""
    from experiments.reporting.planner import measured_overheads

    rows = tmp_path / "rows"
    rows.mkdir()
    config = {"objective": "mlm", "encoder": {"attention": "absolute"}, "evaluate_at": []}
    for name, wall in (("a", 700.0), ("b", 800.0)):
        (rows / f"{name}__seed0.json").write_text(json.dumps({"config": config, "wall_time_s": wall,
                                                               "seconds": {"pretraining": 400.0}}))
    early = {**config, "evaluate_at": [0.25]}  # its time holds its early points' pretraining: left out
    (rows / "c__seed0.json").write_text(json.dumps({"config": early, "wall_time_s": 2000.0,
                                                     "seconds": {"pretraining": 400.0}}))
    assert measured_overheads(tmp_path) == {"absolute-mlm": pytest.approx((0.75 + 1.0) / 2)}


def test_a_pretraining_two_rows_of_a_table_share_counts_in_the_time_of_the_row_that_trained_it():
    """ELECTRA sharing's "tie token embeddings" and "generator 1 width" are one pretraining, one work directory: the
    row that finds it finished resumes it and trains nothing, so its time leaves that pretraining to the other."""
    from experiments.running.hardware import copied_pretraining_seconds, shared_pretraining_seconds

    def row(name, seed, pretraining, resumed, **more):
        return {"row": name, "seed": seed, "curves": f"work/pretrain-abc__seed{seed}", "resumed_pretraining_s": resumed,
                "seconds": {"pretraining": pretraining}} | more

    trained, shared, other_seed = row("tie", 0, 600.0, 0.0), row("generator 1", 0, 2.0, 600.0), row("tie", 1, 5.0, 600.0)
    table = [trained, shared, other_seed]
    assert [shared_pretraining_seconds(r, table) for r in table] == [0.0, 600.0, 0.0]
    # a pretraining copied from another table stays in the row's time (its table alone trains it), named apart
    copied = row("ES", 0, 1.0, 900.0, pretraining_borrowed_from={"experiment": "ablation-electra-efficiency"})
    assert shared_pretraining_seconds(copied, [copied]) == 0.0 and copied_pretraining_seconds(copied) == 900.0
