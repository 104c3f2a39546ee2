"""What every benchmark shares: the results table and rewriting its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"

Row = tuple[str, str, str, str, str, bool]  # measure, ours, baseline, ratio, target, met


def results_table(rows: list[Row]) -> list[str]:
    """Markdown lines of the standard table: measure, royalty, same-run baseline, ratio, target, met."""
    table = ["| Measure | royalty | Baseline (same run) | Ratio | Target | Met |", "|---|---|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} | {e} | {'yes' if ok else 'NO'} |" for a, b, c, d, e, ok in rows]
    return table


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the ``<!-- name:begin -->`` … ``<!-- name:end -->`` section of ``path`` (append it if absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def publish(name: str, title: str, command: str, rows: list[Row], notes: str, *, write: bool, setup: str = "") -> int:
    """Print a benchmark's section of docs/BENCHMARKS.md (and rewrite it there when ``write``); returns the exit
    code: 0 when every target was met, 1 otherwise."""
    machine = (
        f"Command: `{command}`. Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; run {time.strftime('%Y-%m-%d')}."
    )
    lines = [f"<!-- {name}:begin -->", f"## {title}", "", f"{machine} {setup}".rstrip(), "", *results_table(rows)]
    section = "\n".join([*lines, "", notes, f"<!-- {name}:end -->"])
    print("\n" + section)
    if write:
        write_section(DOCS, name, section)
    return 0 if all(ok for *_, ok in rows) else 1


def run_worker(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` (a benchmark calling itself with ``--worker ...``) in a fresh Python process and return the JSON
    object its last stdout line holds; exit with its stderr if it failed."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{Path(script).name} {' '.join(args[:2])} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
