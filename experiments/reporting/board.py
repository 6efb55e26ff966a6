"""Reference results shipped with the suite, and one board of every claim, generated from them.

`python -m experiments publish --preset P` (`make publish`) copies the finished rows of every table in
`results/<table>/<P>/` that the current code would compute the same way (their config hash is the current plan's)
into `reference/<P>/<machine kind>/<table>/` (row files, and the logs their curves are drawn from), and builds each
table there: table.md / .csv / .json, curves.png, metrics.png. Rows of an older configuration are named and left
out. `python -m experiments board` (`make board`) then writes `reference/BOARD.md` from the row files alone: every
claim of every table, grouped by paper, with the paper's own effect beside ours, its verdict and whether the rows
learned what it is about, the counts at the top, and each table's time per row on the machine that ran it. The
README's results block is rewritten from the same numbers.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from experiments.verdicts.claims import paper_comparisons
from experiments.running.durable import write_atomically
from experiments.registry import EXPERIMENTS
from experiments.reporting.tables import build_table, claim_source, load_rows
from experiments.verdicts.judging import check_claim, signed
from experiments.running.runner import ROOT
from experiments.verdicts.noise import load_calibration

REFERENCE = ROOT / "reference"
BOARD = "BOARD.md"
VERDICTS = ("holds", "does not hold", "inconclusive", "not measured")
DECIDED = VERDICTS[:2]  # the verdicts that settle a claim
README_START, README_END = "<!-- board:start -->", "<!-- board:end -->"
# the README's "how long" block: the main job's time per row and per table from the board's time tables
TIME_START, TIME_END = "<!-- time:start -->", "<!-- time:end -->"
MAIN_JOB = "ablation-nsp"
# the README's results excerpt: some columns of one reference table, rebuilt from its table.json with the board
EXCERPT = re.compile(r"(<!-- excerpt:start (?P<folder>\S+) columns=(?P<columns>[^>]+?) -->\n).*?(<!-- excerpt:end -->)", re.S)


def publish(preset, results_dir: Path, reference: Path = REFERENCE, log=print) -> list[Path]:
    """Copy the current-configuration rows of every table at `preset` into the reference folders and build each
    table there; returns the tables built."""
    from experiments.running.runner import plan

    built = []
    for experiment in EXPERIMENTS.values():
        source = results_dir / experiment.id / preset.name
        current = {p.result_path.name: p.config.config_hash()
                   for p in plan(experiment, preset, _seeds_in(source), None, None, results_dir)}
        for path in sorted((source / "rows").glob("*.json")):
            record = json.loads(path.read_text())
            if current.get(path.name) != record.get("config_hash"):
                log(f"{experiment.id}/{path.name}: left out, trained with another configuration than the current "
                    f"code's (commit {record.get('git_commit', '?')[:8]})")
                continue
            machine = record.get("hardware", {}).get("machine_kind") or "unknown-machine"
            target = reference / preset.name / machine / experiment.id
            (target / "rows").mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / "rows" / path.name)
            for curve in sorted((source / record["curves"]).glob("log-*/metrics.csv")):
                copy = target / curve.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(curve, copy)
            if target not in built:
                built.append(target)
    for target in built:
        build_table(EXPERIMENTS[target.name], preset.name, target)
        log(f"built {target.relative_to(reference.parent) if reference.parent in target.parents else target}")
    return built


def _seeds_in(directory: Path) -> int:
    seeds = [int(m.group(1)) for p in (directory / "rows").glob("*.json") if (m := re.search(r"__seed(\d+)", p.name))]
    return max(seeds, default=0) + 1


def folders(reference: Path = REFERENCE) -> list[tuple[str, str, Path]]:
    """(preset, machine kind, folder) of every reference folder that holds a table."""
    return sorted((p.parent.name, p.name, p) for p in reference.glob("*/*") if p.is_dir()
                  and any((p / e).is_dir() for e in EXPERIMENTS))


def paper_name(experiment) -> str:
    """The paper a table reproduces, as its `paper` field names it in parentheses: RoBERTa, ELECTRA, ..."""
    found = re.search(r"\(([^)]+)\)", experiment.paper)
    return found.group(1) if found else experiment.paper.split(",")[0]


def board(reference: Path = REFERENCE) -> str:
    """BOARD.md, from the row files of the reference folders alone (no date, so that the same rows give the same
    board)."""
    sections, totals = [], Counter()
    for preset, machine, folder in folders(reference) or [("cpu", "no machine yet", reference / "cpu" / "-")]:
        lines, counts = _section(preset, machine, folder)
        sections.append(lines)
        totals += counts
    head = ["# Results board", "",
            "Every claim of every table, checked on the reference results that ship with the suite (`reference/`: "
            "one folder per preset and kind of machine, one per table, each with its row files, table and plots). "
            "Generated by `make board` from the row files; do not edit. How a verdict is decided: "
            "[docs/verdicts.md](../docs/verdicts.md).", "",
            "**" + ", ".join(f"{totals[v]} {v}" for v in VERDICTS) + f"** (of {sum(totals.values())} claims)", ""]
    return "\n".join(head + [line for section in sections for line in section]) + "\n"


def _section(preset: str, machine: str, folder: Path) -> tuple[list[str], Counter]:
    noise = load_calibration(preset)
    counts, by_paper, times, decided = Counter(), {}, [], []
    for experiment in EXPERIMENTS.values():
        order = [r.name for r in experiment.rows]
        rows = load_rows(experiment, folder / experiment.id) if (folder / experiment.id / "rows").is_dir() else {}
        for claim in experiment.checked_claims:
            result = check_claim(claim, rows, order, noise, experiment.paper_value)
            counts[result.verdict] += 1
            source = claim_source(claim, rows, order)
            line = _claim_line(experiment, claim, result, order, source)
            by_paper.setdefault(paper_name(experiment), []).append(line)
            if result.verdict in DECIDED:
                decided.append(f"- **{result.verdict}**: {paper_name(experiment)}, {experiment.id}: ({source}) "
                               f"{claim.text}: {_effects(result)}")
        times.append((experiment, rows, [s.machine_seconds() for s in rows.values()],
                      sum(s.copied_pretraining_seconds() for s in rows.values())))
    lines = [f"## `{preset}` on {machine}", "",
             "**" + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + f"** (of {sum(counts.values())} claims). "
             f"Noise: {noise.source}.", ""]
    if decided:  # the few claims these rows settle, before the many they leave open
        lines += ["What these rows decide, each claim with its effect, 95% interval and seeds (the rest below):", "",
                  *decided, ""]
    for paper, claim_lines in by_paper.items():
        lines += [f"### {paper}", "",
                  "| table | claim | paper's effect | ours: effect, 95% interval, seeds | verdict | rows learned it |",
                  "|---|---|---|---|---|---|", *claim_lines, ""]
    lines += [f"### Time at `{preset}` on {machine}", "",
              "| table | rows run | seeds a row | time per row (mean) | the table, one seed |", "|---|---|---|---|---|"]
    done = 0.0
    for experiment, rows, row_times, copied in times:
        if not rows:
            lines.append(f"| {experiment.id} | 0 of {len(experiment.rows)} | - | - | not run |")
            continue
        per_row = float(np.mean([seconds for seconds, _ in row_times]))
        whole = per_row * len(experiment.rows)
        done += whole - copied  # a pretraining two tables share, `make ablations` trains once
        seed_counts = sorted({len(s.seeds) for s in rows.values()})  # one number, or the least-most
        seeds = str(seed_counts[0]) if len(seed_counts) == 1 else f"{seed_counts[0]}-{seed_counts[-1]}"
        caveats = sum((row_caveats for _, row_caveats in row_times), Counter())
        caveat = f" ({', '.join(f'{n} {what}' for what, n in caveats.items() if n)})" if +caveats else ""
        lines.append(f"| {experiment.id} | {len(rows)} of {len(experiment.rows)} | {seeds} | "
                     f"{per_row / 60:.1f} min{caveat} | "
                     f"{whole / 3600:.2f} h{'' if len(rows) == len(experiment.rows) else ' (est.)'} |")
    missing = [e.id for e, rows, _, _ in times if not rows]
    lines += ["", f"`make ablations` at `{preset}` on {machine}: {'at least ' if missing else ''}{done / 3600:.1f} h "
              f"at one seed" + (f" ({len(missing)} table{'s' * (len(missing) != 1)} not run yet)" if missing else "")
              + ". A row's time is the mean of its seeds that ran alone (their load average at most the CPU count), "
              "a resumed seed's earlier sessions included; a table's with fewer rows run is estimated from the mean of "
              "those that ran. A row none of whose seeds ran alone is named beside the time: one that shared the "
              "machine took longer than this machine alone would; one without a load record was trained before rows "
              "recorded it, so whether other work ran beside it is unknown; a resumed one whose earlier sessions' time "
              "was not recorded shows its last session's alone. A row that copied another table's finished "
              "pretraining counts that pretraining's time, as its table run alone would spend it; `make ablations` "
              "trains it once, and its total counts it once.", ""]
    return lines, counts


def _effects(result) -> str:
    """Our side of a claim: each comparison's effect, 95% interval and seeds (or why there is none)."""
    if result.judgements and result.verdict != "not measured":
        return "; ".join(f"{j.comparison.label} {j.signed(j.mean)}" + (f" [{j.signed(j.low)}, {j.signed(j.high)}]"
                                                                       if j.low is not None else "")
                         + f", {j.n} seed{'s' * (j.n != 1)}" for j in result.judgements if j.mean is not None)
    return result.text() or "-"


def _claim_line(experiment, claim, result, order: list[str], source: str) -> str:
    paper = "; ".join(f"{c.label} {signed(c.paper, c.quantity.metric)}"
                      for c in paper_comparisons(claim, experiment.paper_value, order) if c.paper is not None) or "-"
    ours = _effects(result)
    learned = "-" if result.verdict == "not measured" else "yes" if result.learned else "no: " + result.note
    text = claim.text.replace("|", "\\|")
    return (f"| {experiment.id} | ({source}) {text} | {paper} | {ours.replace('|', '/')} | "
            f"**{result.verdict}** | {learned.replace('|', '/')} |")


def write_board(reference: Path = REFERENCE, readme: Path = ROOT / "README.md") -> Path:
    """Write BOARD.md and the README's results block."""
    text = board(reference)
    path = reference / BOARD
    reference.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())
    if readme.exists():
        write_atomically(readme, readme_with_results(readme.read_text(), text, readme.parent).encode())
    return path


def excerpt(folder: Path, columns: list[str]) -> str:
    """Some columns of a built table (its table.json), as a Markdown blockquote: its title, preset, build time
    and machine, then the rows."""
    payload = json.loads((folder / "table.json").read_text())
    header = payload["header"]
    if missing := [c for c in columns if c not in header]:
        raise ValueError(f"the README's excerpt of {folder} asks for columns the table lacks: {', '.join(missing)}")
    at = [header.index(c) for c in columns]
    lines = [f"> {payload['title']}. Preset `{payload['preset']}`, built {payload['built']}, machine "
             f"{', '.join(payload['machines'])}, precision {', '.join(payload.get('precisions', []))}.", ">",
             "> | " + " | ".join(columns) + " |", "> |" + "---|" * len(columns)]
    lines += ["> | " + " | ".join(row[i] for i in at) + " |" for row in payload["rows"]]
    return "\n".join(lines) + "\n"


def readme_with_results(readme: str, board_text: str, root: Path = ROOT) -> str:
    """The README with its results excerpt rebuilt from its table, then its counts and time blocks from the
    board."""
    readme = EXCERPT.sub(lambda m: m.group(1) + excerpt(root / m.group("folder"), m.group("columns").split(","))
                         + m.group(4), readme)
    counts = next(line for line in board_text.splitlines() if line.startswith("**"))
    readme = _replace_block(readme, README_START, README_END,
                            f"{counts}: the [results board](reference/BOARD.md) lists first the claims the reference "
                            f"rows decide, then every claim with the paper's effect beside ours.")
    return _replace_block(readme, TIME_START, TIME_END, "\n".join(main_job_times(board_text)))


def main_job_times(board_text: str) -> list[str]:
    """One line per machine section of the board: the main job's time per row and per table at one seed, and
    all the tables', read from that section's time table (so the README and the board cannot disagree)."""
    lines, heading = [], None
    for line in board_text.splitlines():
        if line.startswith("### Time at "):
            heading = line.removeprefix("### Time at ")
        elif heading and line.startswith(f"| {MAIN_JOB} |"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            anchor = re.sub(r"[^\w\- ]", "", f"time at {heading}".lower()).replace(" ", "-")  # GitHub's heading ids
            lines.append(f"- {heading}: `make {MAIN_JOB}` {cells[3]} a row, {cells[4]} the table at one seed "
                         f"([the board's times](reference/BOARD.md#{anchor}))")
        elif heading and line.startswith("`make ablations`") and lines:
            total = line.split(": ", 1)[1].split(". ", 1)[0]
            lines[-1] += f"; all {len(EXPERIMENTS)} tables, `make ablations`: {total}"
    return [line + "." for line in lines] or ["- no reference rows yet."]


def _replace_block(readme: str, start: str, end: str, content: str) -> str:
    """The README with the text between a pair of markers replaced (unchanged where it has no such markers)."""
    if start not in readme:
        return readme
    before, rest = readme.split(start, 1)
    return before + f"{start}\n{content}\n{end}" + rest.split(end, 1)[1]
