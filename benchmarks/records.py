"""The benchmark records: one JSON object per line in benchmarks/results/records.jsonl, appended by every run and
never rewritten. Two kinds: "gemm-peak" (one per run) and "point" (one per sweep x size x provider). Every record
carries its run id, the commit, the date, the machine (CPU model and flags, or GPU), the thread count and the dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

from .machine import ROOT, slug

RECORDS = ROOT / "benchmarks" / "results" / "records.jsonl"


def append(path: Path, records: list[dict]) -> None:
    with open(path, "a") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def load(path: Path = RECORDS) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machines(records: list[dict]) -> dict[str, dict]:
    """slug -> the machine facts of its latest record (full runs only)."""
    out = {}
    for r in sorted((r for r in records if not r["quick"]), key=lambda r: r["machine"]["date"]):
        out[slug(r["machine"])] = r["machine"]
    return out


def points(records: list[dict], machine: str, dtype: str) -> dict:
    """{sweep: {size: {provider: record}}} of one machine and dtype: for each (sweep, size), every provider's record
    from the latest full run that measured that point, so that the ratios in a row always come from one run."""
    latest = {}
    for r in records:
        if r["kind"] != "point" or r["quick"] or r["dtype"] != dtype or slug(r["machine"]) != machine:
            continue
        key = (r["sweep"], r["size"])
        if key not in latest or r["machine"]["date"] > latest[key]["machine"]["date"]:
            latest[key] = r
    out = {}
    for r in records:
        key = (r.get("sweep"), r.get("size"))
        if r["kind"] == "point" and key in latest and r["run"] == latest[key]["run"]:
            out.setdefault(r["sweep"], {}).setdefault(r["size"], {})[r["provider"]] = r
    return out


def peaks(records: list[dict]) -> dict[str, dict]:
    """run id -> its GEMM peak record."""
    return {r["run"]: r for r in records if r["kind"] == "gemm-peak"}
