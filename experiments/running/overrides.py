"""Any `RunConfig` field from the command line: `--set dotted.path=value`, `--corpus`, `--tasks`.

Values are parsed by the field's declared type (int, float, bool, str, optional, tuple), every problem is
reported at once, and the overrides become part of each row's config and hash. A table run with
overrides gets its own results directory (`<preset>+<hash of the overrides>`), so it never mixes with
the default table's rows, and its header lists them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError
from experiments.spec import RunConfig

NONE_WORDS = ("none", "null")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _field_type(path: str) -> Any:
    """The declared type of a dotted RunConfig field; UsageError naming the valid fields if there is none."""
    node: Any = RunConfig
    parts = path.split(".")
    for depth, name in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise UsageError(f"--set {path}: {'.'.join(parts[:depth])} is not a group of settings")
        hints = typing.get_type_hints(node)
        if name not in hints:
            where = ".".join(parts[:depth]) or "the run config"
            raise UsageError(f"--set {path}: {where} has no field {name!r} "
                             f"(its fields: {', '.join(f.name for f in dataclasses.fields(node))})")
        node = hints[name]
    if dataclasses.is_dataclass(node):
        raise UsageError(f"--set {path}: it is a group of settings; set one of its fields, e.g. "
                         f"{path}.{dataclasses.fields(node)[0].name}=...")
    return node


def _parse(text: str, kind: Any, path: str) -> Any:
    """`text` as a value of type `kind` (the subset of types RunConfig uses)."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        if text.strip().lower() in NONE_WORDS and type(None) in arguments:
            return None
        kind = next(a for a in arguments if a is not type(None))
        origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        item = arguments[0]
        return tuple(_parse(part.strip(), item, path) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise UsageError(f"--set {path}={text}: expected true or false")
    if kind is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise UsageError(f"--set {path}={text}: expected a whole number") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--set {path}={text}: expected a number") from None
    return text


def parse_overrides(assignments: list[str], corpus: str | None = None, tasks: tuple[str, ...] | None = None) -> dict:
    """{dotted path: typed value} from `--set` assignments, `--corpus` and `--tasks`; all problems in one error."""
    overrides, problems = {}, []
    if corpus:
        try:
            overrides |= corpus_overrides(corpus)
        except UsageError as error:
            problems.append(str(error))
    if tasks:
        overrides["tasks"] = tuple(tasks)
    for assignment in assignments:
        path, equals, text = assignment.partition("=")
        if not equals or not path.strip():
            problems.append(f"--set {assignment!r}: expected dotted.path=value, e.g. optim.peak_lr=3e-4")
            continue
        try:
            overrides[path.strip()] = _parse(text.strip(), _field_type(path.strip()), path.strip())
        except UsageError as error:
            problems.append(str(error))
    if problems:
        raise UsageError("; ".join(problems))
    return overrides


def split_tasks(text: str) -> list[str]:
    """Split on commas, keeping `files:train,validation` (and `NAME=files:train,validation`) together."""
    parts, out = text.split(","), []
    while parts:
        part = parts.pop(0).strip()
        out.append(f"{part},{parts.pop(0).strip()}" if "files:" in part and parts else part)
    return out


def corpus_overrides(text: str) -> dict:
    """`files:PATH[,PATH...]` (text files, folders, JSON lines) or `hub:NAME[:CONFIG]` as corpus fields."""
    kind, _, rest = text.partition(":")
    if kind == "files" and rest:
        return {"data.corpus.source": "files", "data.corpus.paths": tuple(p.strip() for p in rest.split(",") if p.strip())}
    if kind == "hub" and rest:
        name, _, config = rest.partition(":")
        return {"data.corpus.source": "hub", "data.corpus.hub_path": name, "data.corpus.hub_name": config or None}
    raise UsageError(f"--corpus {text!r}: expected files:PATH[,PATH...] (text files, a folder, JSON lines) "
                     f"or hub:NAME[:CONFIG] (e.g. hub:wikitext:wikitext-103-raw-v1)")


def conflicts(overrides: dict, row_changes: list[dict]) -> list[str]:
    """Overrides of a field the table's rows vary: the rows would silently undo them."""
    varied = {path for changes in row_changes for path in changes}
    return sorted(f"--set {path}: the rows of this table vary {other}, which is what the table compares"
                  for path in overrides for other in varied
                  if path == other or path.startswith(other + ".") or other.startswith(path + "."))


def directory_name(preset: str, overrides: dict) -> str:
    """`small` for the default table; `small+<hash>` for one run with overrides."""
    if not overrides:
        return preset
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{preset}+{digest}"


def as_text(overrides: dict) -> list[str]:
    return [f"{path}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
            for path, value in sorted(overrides.items())]


def save(directory: Path, overrides: dict) -> None:
    """Beside the table: what its rows were run with, read back when the table is built."""
    from experiments.running.durable import write_atomically

    write_atomically(directory / "overrides.json", json.dumps(as_text(overrides), indent=1).encode())
