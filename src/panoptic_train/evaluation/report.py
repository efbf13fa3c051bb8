"""Terminal tables for PQ results: the All/Things/Stuff summary and the per-class breakdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_GROUPS = ("All", "Things", "Stuff")


def format_summary(results: Mapping[str, Any]) -> str:
    """panopticapi's summary table, in percent: PQ, SQ, RQ and the number of classes counted."""
    lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 38]
    for group in _GROUPS:
        row = results[group]
        lines.append(
            f"{group:10s}| {100 * row['pq']:6.1f} {100 * row['sq']:6.1f} "
            f"{100 * row['rq']:6.1f} {row['n']:5d}"
        )
    return "\n".join(lines)


def format_per_class(results: Mapping[str, Any]) -> str:
    """One row per class that has any TP, FP or FN, best PQ first; the others are counted."""
    counted = [
        (class_id, entry)
        for class_id, entry in results["per_class"].items()
        if entry["tp"] + entry["fp"] + entry["fn"] > 0
    ]
    counted.sort(key=lambda item: -item[1]["pq"])
    width = max([len("class"), *(len(str(entry["name"])) for _, entry in counted)])
    header = (
        f"{'id':>6s}  {'class':<{width}s}  {'kind':<5s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} "
        f"{'TP':>7s} {'FP':>7s} {'FN':>7s}"
    )
    lines = [header, "-" * len(header)]
    for class_id, entry in counted:
        kind = "thing" if entry["isthing"] else "stuff"
        lines.append(
            f"{class_id!s:>6s}  {entry['name']!s:<{width}s}  {kind:<5s} "
            f"{100 * entry['pq']:6.1f} {100 * entry['sq']:6.1f} {100 * entry['rq']:6.1f} "
            f"{entry['tp']:7d} {entry['fp']:7d} {entry['fn']:7d}"
        )
    left_out = len(results["per_class"]) - len(counted)
    if left_out:
        lines.append(
            f"({left_out} class(es) with no segment in ground truth or predictions are left out "
            "of the table and of the averages.)"
        )
    return "\n".join(lines)


def format_report(results: Mapping[str, Any]) -> str:
    """The summary table followed by the per-class table."""
    return f"{format_summary(results)}\n\n{format_per_class(results)}"
