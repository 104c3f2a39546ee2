"""What every benchmark shares: the results table and rewriting its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

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
