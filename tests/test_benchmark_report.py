"""The benchmark records and the report drawn from them: appended records are read back, each table row comes from
one run (the latest that measured the point), the ratios are computed from the records, and --check notices any
difference between what is committed and what the records give."""

from __future__ import annotations

import json

import pytest

from benchmarks import records as rec
from benchmarks import report
from benchmarks.machine import slug

MACHINE = dict(cpu="Test CPU @ 1GHz", cpu_flags=["avx2", "avx512f"], threads=2, torch="x", commit="abc", device="cpu")


def _point(run, date, provider, median, sweep="lt-queue", size=8192, dtype="float32", memory=None):
    machine = dict(MACHINE, date=date)
    time = dict(status="ok", median_s=median, p20_s=median, p80_s=median, n=3)
    out = dict(run=run, quick=False, dtype=dtype, machine=machine, kind="point", fused="cpu", sweep=sweep)
    out.update(size=size, provider=provider, tight_flops=2 * 256 * 128 * (2 * 8448 + 256), time=time)
    if memory is not None:
        out["memory"] = dict(status="ok", peak_mb=memory, cold_s=1.0)
    return out


def _peak(run, date, tflops):
    machine = dict(MACHINE, date=date)
    return dict(run=run, quick=False, dtype="float32", machine=machine, kind="gemm-peak", routine="float32 matmul",
                shape=[2048, 2048, 2048], seconds=1.0, tflops=tflops)  # fmt: skip


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "records.jsonl"
    rec.append(path, [_peak("old", "2026-01-01", 0.1), _point("old", "2026-01-01", "cpu", 0.020)])
    rec.append(path, [_point("old", "2026-01-01", "tight-floor", 0.010)])
    new = [_peak("new", "2026-02-01", 0.2), _point("new", "2026-02-01", "cpu", 0.012, memory=9.0)]
    new += [_point("new", "2026-02-01", "tight-floor", 0.008), _point("new", "2026-02-01", "dense", 0.060)]
    rec.append(path, new)
    return path


def test_records_are_appended_one_json_object_per_line(records):
    lines = records.read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(line)["run"] in ("old", "new") for line in lines)
    assert len(rec.load(records)) == 7


def test_rows_come_from_the_latest_run_of_each_point(records):
    loaded = rec.load(records)
    name = slug(dict(MACHINE, date="x"))
    point = rec.points(loaded, name, ("float32", ""))["lt-queue"][8192]
    assert {r["run"] for r in point.values()} == {"new"} and set(point) == {"cpu", "tight-floor", "dense"}


def test_tables_show_the_ratios_the_records_give(records):
    loaded = rec.load(records)
    table = report.headline_table(loaded)
    # cpu 12 ms over a tight floor of 8 ms, dense 60 ms over cpu 12 ms, FLOPs over 12 ms against a 0.2 TFLOP/s peak.
    flops = 2 * 256 * 128 * (2 * 8448 + 256)
    share = f"{flops / 0.012 / 1e12 / 0.2 * 100:.0f}%"
    row = next(line for line in table.splitlines() if "lt-queue 8192" in line)
    assert "| 12 | 8 | 1.50x |" in row and "| 5.00x |" in row and share in row and "`new`" in row
    name = slug(dict(MACHINE, date="x"))
    md = report.machine_markdown(loaded, name, rec.machines(loaded)[name])
    assert "1.50x" in md and "GEMM peak 0.200 TFLOP/s" in md and "`old`" in md  # both runs listed


def test_quick_runs_never_reach_the_tables(records):
    rows = [dict(r, quick=True, run="quick", machine=dict(r["machine"], date="2027-01-01")) for r in rec.load(records)]
    rec.append(records, rows)
    loaded = rec.load(records)
    name = slug(dict(MACHINE, date="x"))
    assert {r["run"] for r in rec.points(loaded, name, ("float32", ""))["lt-queue"][8192].values()} == {"new"}


def test_half_precision_paths_are_separate_rows(records):
    """bfloat16 runs with MKL's half GEMMs and with upcast products are different configurations, never one row."""
    extra = [_point("mkl", "2026-03-01", "cpu", 0.005, dtype="bfloat16"), _point("up", "2026-03-02", "cpu", 0.009,
             dtype="bfloat16")]  # fmt: skip
    extra[0]["variant"], extra[1]["variant"] = "mkl", "float32"
    rec.append(records, extra)
    loaded = rec.load(records)
    name = slug(dict(MACHINE, date="x"))
    assert rec.configs(loaded, name) == [("float32", ""), ("bfloat16", "float32"), ("bfloat16", "mkl")]
    assert rec.points(loaded, name, ("bfloat16", "mkl"))["lt-queue"][8192]["cpu"]["run"] == "mkl"
    assert "bfloat16, MKL bfloat16 products" in report.headline_table(loaded)


def test_check_reports_a_difference_and_writes_nothing(records, monkeypatch, tmp_path, capsys):
    target = tmp_path / "out.md"
    target.write_text("old")
    monkeypatch.setattr(report, "outputs", lambda path: {target: b"new"})
    assert report.regenerate(records, check=True) == 1
    assert target.read_text() == "old" and "would change" in capsys.readouterr().out
    assert report.regenerate(records, check=False) == 0 and target.read_text() == "new"
    assert report.regenerate(records, check=True) == 0


def test_pml_table_shows_the_latest_run_and_its_ratios():
    def run(name, date, size, pml_mb, fused_mb):
        results = {p: dict(status="ok", provider=p, memory_size=size, peak_mb=mb, seconds=0.5, loss=1.0)
                   for p, mb in (("pml", pml_mb), ("fused", fused_mb))}  # fmt: skip
        return dict(kind="pml-memory", run=name, machine=dict(MACHINE, date=date), batch=256, dim=128,
                    memory_size=size, quick=False, results=results)  # fmt: skip

    table = report.pml_section([run("old", "2026-01-01", 4096, 50.0, 5.0), run("new", "2026-02-01", 4096, 40.0, 4.0),
                                run("new", "2026-02-01", 65536, 640.0, 20.0)])  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| Test CPU")]
    assert len(rows) == 2 and all("`new`" in line for line in rows)
    assert "| 40 | 4 | 10.0x |" in rows[0] and "| 640 | 20 | 32.0x |" in rows[1]


def test_pml_benchmark_step_runs_both_and_they_agree():
    """The benchmark's step (in this process: the peak figures are meaningless here, the losses are not)."""
    from benchmarks.pml import step_here

    pml, fused = (step_here(p, 96, 16, 8, "cpu") for p in ("pml", "fused"))
    assert pml["loss"] == pytest.approx(fused["loss"], rel=1e-5) and pml["loss"] > 0
