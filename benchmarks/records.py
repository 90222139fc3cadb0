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


def variant(record: dict, records: list[dict]) -> str:
    """How half-precision inputs were multiplied in the record's run ('mkl', 'float32'; '' for other dtypes). Runs
    from before the field existed are told by their GEMM peak's routine."""
    if "variant" in record:
        return record["variant"]
    if record["dtype"] not in ("bfloat16", "float16") or record["machine"].get("device") != "cpu":
        return ""
    peak = peaks(records).get(record["run"])
    return "mkl" if peak and peak["routine"].startswith("MKL") else "float32"


def configs(records: list[dict], machine: str) -> list[tuple[str, str]]:
    """The (dtype, variant) pairs with full-run points on a machine, float32 first."""
    found = {(r["dtype"], variant(r, records)) for r in records if r["kind"] == "point" and not r["quick"]
             and slug(r["machine"]) == machine}  # fmt: skip
    order = {"float32": 0, "bfloat16": 1, "float16": 2}
    return sorted(found, key=lambda c: (order.get(c[0], 9), c[1]))


def label(config: tuple[str, str]) -> str:
    dtype, how = config
    return {"mkl": f"{dtype}, MKL {dtype} products", "float32": f"{dtype}, upcast to float32 products"}.get(how, dtype)


def points(records: list[dict], machine: str, config: tuple[str, str]) -> dict:
    """{sweep: {size: {provider: record}}} of one machine and (dtype, variant): for each (sweep, size), every
    provider's record from the latest full run that measured that point, so that a row's ratios come from one run."""
    latest = {}
    for r in records:
        if r["kind"] != "point" or r["quick"] or slug(r["machine"]) != machine:
            continue
        if (r["dtype"], variant(r, records)) != tuple(config):
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
