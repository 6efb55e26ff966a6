"""Caches that know their own contents: each file's size and CRC-32, written when the cache is built and
checked when it is opened, so a truncated or damaged cache is rebuilt instead of read.

A `done` marker alone cannot tell a whole cache from one whose file was cut by a full disk or a
careless copy (a cut token array once trained a row on 938 tokens instead of 24,576 without a word).
CRC-32 streams at about a gigabyte a second, and each cache is checked once per process.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

MANIFEST = "manifest.json"
_checked: set[tuple[str, int]] = set()  # (directory, manifest mtime) already verified by this process


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _contents(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(directory: Path) -> None:
    """Record every file under `directory` (its relative path, size and CRC-32); call it last in a build."""
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "crc32": _crc32(p)} for p in _contents(directory)}
    (directory / MANIFEST).write_text(json.dumps(files, indent=1, sort_keys=True))


def damage(directory: Path) -> str | None:
    """None when every file recorded in the manifest is there with its size and CRC; else what is wrong.
    Files added later are not checked (a nested cache of its own, or `datasets`' cache files)."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return "it has no manifest (built by an older version, or its build was cut short)"
    key = (str(directory), manifest.stat().st_mtime_ns)
    if key in _checked:
        return None
    recorded = json.loads(manifest.read_text())
    for name, expected in recorded.items():
        path = directory / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size:,} bytes, {expected['size']:,} when built"
        if _crc32(path) != expected["crc32"]:
            return f"{name} does not match its checksum"
    _checked.add(key)
    return None
