"""The documentation's links and commands stay true: every relative link and image in README.md, CHANGELOG.md,
docs/ and the studies' pages points at a file that exists (and, for `page.md#heading`, at a heading of that
page), and every `make <target>` the pages name is a target of the Makefile. The README is a page of current
facts: at most 150 lines, no commit hash, no "since", and no date outside its results excerpt's header; docs/
has no dated file names (dated runs live with their study in studies/). Text only: no torch, runs in well under
a second."""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md")),
         *sorted((ROOT / "studies").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)  # fenced code blocks
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)  # inline code: `x`, ``x ` y``
# [text](target "title") and ![alt](target); the target may be <in angle brackets>
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+[\"'(][^)]*)?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)  # [label]: target
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
MAKE = re.compile(r"\bmake\s+(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*([a-z][a-z0-9_.-]*)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...
HEX_WORD = re.compile(r"\b[0-9a-f]{7,40}\b")  # a commit hash, short or full, when it mixes digits and letters
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
README_LINES = 150


def prose(text: str) -> str:
    """The text a reader sees as prose: code blocks and inline code removed (a link inside code is not a link)."""
    return CODE_SPAN.sub(" ", FENCE.sub("\n", text))


def code(text: str) -> list[str]:
    """The fenced code blocks and inline code spans: where a page names commands."""
    blocks = [match.group(0) for match in FENCE.finditer(text)]
    spans = [match.group(2) for match in CODE_SPAN.finditer(FENCE.sub("\n", text))]
    return blocks + spans


def link_targets(text: str) -> list[str]:
    text = prose(text)
    found = [m.group(1) for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_LINK) for m in pattern.finditer(text)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in found]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped, spaces as hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    heading = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("\n", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """What is wrong with the relative links of `page` (its text, or `text` as if it were there)."""
    problems = []
    text = page.read_text(encoding="utf-8") if text is None else text
    for target in link_targets(text):
        if EXTERNAL.match(target) or target.startswith("#") or target.startswith("//"):
            continue  # web links and anchors within the page are not checked
        path, _, anchor = target.partition("#")
        path = unquote(path.split("?", 1)[0])
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        resolved = resolved.resolve()
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file ({resolved.relative_to(ROOT)})")
        elif anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/-][A-Za-z0-9_.%/ \t-]*?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def named_make_targets(text: str) -> set[str]:
    return {match.group(1) for snippet in code(text) for match in MAKE.finditer(snippet)}


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_and_images_exist(page):
    problems = broken_links(page)
    assert not problems, f"{rel(page)} has broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_make_targets_named_in_the_docs_exist(page):
    missing = sorted(named_make_targets(page.read_text(encoding="utf-8")) - makefile_targets())
    assert not missing, f"{rel(page)} names make targets the Makefile lacks: {missing}"


def test_the_checks_see_what_they_check():
    """Guards against a pattern that silently matches nothing: the front page has links to the docs pages and
    names the tables' targets, and a made-up page with a broken link, a broken anchor and an unknown target is
    caught."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert sum(target.startswith("docs/") for target in link_targets(readme)) >= 5
    assert {"ablation-nsp", "test", "setup", "help"} <= named_make_targets(readme) <= makefile_targets()
    assert "ablation-nsp" in makefile_targets() and "PY" not in makefile_targets()

    page = ROOT / "docs" / "made-up.md"
    text = ("# A page\n\n[gone](missing.md) ![plot](img/none.png) [ok](../README.md) [web](https://x.org/a.md)\n"
            "[anchor](../README.md#no-such-heading) [here](#a-page) `[not a link](nowhere.md)`\n\n"
            "```bash\nmake no-such-target PRESET=small\n```\n")
    targets = link_targets(text)
    assert targets == ["missing.md", "img/none.png", "../README.md", "https://x.org/a.md",
                       "../README.md#no-such-heading", "#a-page"]
    assert named_make_targets(text) == {"no-such-target"}
    assert named_make_targets("`make PRESET=small calibrate`, we make do") == {"calibrate"}
    assert slug("Caution at `small`: rows that learn word order are noisier") == (
        "caution-at-small-rows-that-learn-word-order-are-noisier")
    assert slug("Does a row use word order?") == "does-a-row-use-word-order"

    problems = broken_links(page, text)
    assert [problem.split(":")[0] for problem in problems] == ["missing.md", "img/none.png",
                                                               "../README.md#no-such-heading"]


def hash_like_words(text: str) -> list[str]:
    return [word for word in HEX_WORD.findall(text) if re.search(r"\d", word) and re.search(r"[a-f]", word)]


def results_excerpt_header(text: str) -> int | None:
    """The line number of the results excerpt's header: the first line of the README's first blockquote (the
    excerpt is a blockquote: its header, the table, a claim). The only line where a date belongs."""
    for number, line in enumerate(text.splitlines()):
        if line.startswith(">"):
            return number
    return None


def dates_outside_the_excerpt_header(text: str) -> list[str]:
    """Dates the README states; a link's target is a file's name, not a statement (a run file may be dated)."""
    header = results_excerpt_header(text)
    return [f"line {number + 1}: {line.strip()}" for number, line in enumerate(text.splitlines())
            if number != header and DATE.search(LINK_TARGET.sub("]()", line))]


def dated_files(folder: Path) -> list[str]:
    return sorted(rel(path) for path in folder.rglob("*") if DATE.search(path.name))


def test_the_readme_is_a_page_of_current_facts():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines (at most {README_LINES}): history goes to CHANGELOG.md"
    assert not hash_like_words(text), f"README.md names commits: {hash_like_words(text)}"
    assert not re.search(r"\bsince\b", text, re.I), "README.md says 'since': history goes to CHANGELOG.md"
    assert results_excerpt_header(text) is not None, "README.md has no results excerpt (a blockquote)"
    assert DATE.search(lines[results_excerpt_header(text)]), "the results excerpt's header names its run's date"
    problems = dates_outside_the_excerpt_header(text)
    assert not problems, "README.md has dates outside the results excerpt's header:\n" + "\n".join(problems)


def test_docs_has_no_dated_file_names():
    """Dated runs are a study's (studies/<study>/runs/), not the docs' pages and images."""
    found = dated_files(ROOT / "docs")
    assert not found, "dated files in docs/ (a study's runs belong beside it in studies/):\n" + "\n".join(found)


def test_the_current_facts_checks_see_what_they_check():
    assert hash_like_words("see c34205b and 10629dd0, not deadbeef, 1234567 or decade") == ["c34205b", "10629dd0"]
    page = ("# T\n\nAs of 2026-12-04 it did.\n\n> Built 2026-12-04 08:27 UTC.\n>\n> | a |\n> | 2026-12-05 |\n"
            "[a run](runs/2026-12-05-x.json)\n")
    assert results_excerpt_header(page) == 4
    assert [problem.split(":")[0] for problem in dates_outside_the_excerpt_header(page)] == ["line 3", "line 8"]
    assert DATE.search("bench/2026-12-04-epyc.json") and not DATE.search("ablation-nsp-cpu-metrics.png")


PACKAGES = ("ablations", "datamodules", "lightning_modules", "experiments", "studies")
# Lower layers never import higher ones: the model and data, then what measures a trained encoder, then claims and
# their verdicts, then what trains rows, then what reports them (the command line and the tables sit on top).
# experiments.running.durable (atomic files, locks) is the one utility every layer may use.
LAYERS = [("ablations", "datamodules", "lightning_modules"), ("experiments.evaluations",), ("experiments.verdicts",),
          ("experiments.running",), ("experiments.reporting",)]
SHARED = ("experiments.running.durable",)
IMPORT = re.compile(r"^\s*(?:from|import)\s+((?:ablations|datamodules|lightning_modules|experiments)[\w.]*)", re.M)


def test_no_package_file_is_over_400_lines():
    long = [(rel(p), n) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if "runs" not in p.parts and (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long


def test_no_module_imports_a_layer_above_its_own():
    def layer(module: str) -> int | None:
        found = [i for i, names in enumerate(LAYERS) for name in names
                 if module == name or module.startswith(name + ".")]
        return found[-1] if found else None

    upward = []
    for name in (name for names in LAYERS for name in names):
        for path in (ROOT / name.replace(".", "/")).rglob("*.py"):
            for imported in IMPORT.findall(path.read_text(encoding="utf-8")):
                if imported not in SHARED and (above := layer(imported)) is not None and above > layer(name):
                    upward.append(f"{rel(path)} imports {imported}")
    assert not upward, upward
