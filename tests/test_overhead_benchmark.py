"""benchmarks.overhead: a tiny run gives one record per provider with the trace's counts, and the README table is
drawn from such records (the bare step's ratio, the interpreter's untimed triton)."""

from __future__ import annotations

import json

from benchmarks import overhead, report

from helpers import need_backend


def test_a_quick_run_records_every_provider_with_its_counts(tmp_path, capsys):
    need_backend("triton")
    out = tmp_path / "records.jsonl"
    args = ["--repeats", "2", "--workloads", "gpaco-lt", "--backends", "torch", "triton", "--records", str(out)]
    assert overhead.main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["provider"] for r in records] == [overhead.BARE, "torch", "triton"]
    assert all(r["kind"] == "overhead" and r["quick"] and r["machine"]["cpu_flags"] is not None for r in records)
    by = {r["provider"]: r for r in records}
    assert by["torch"]["host_us"] > 0 and by[overhead.BARE]["host_us"] > 0
    assert by["triton"]["interpreted"] and "host_us" not in by["triton"]  # the interpreter is not timed
    assert by["triton"]["host_reads"] == 0 and 0 < by["triton"]["launches"] <= 8
    assert "gpaco-lt" in capsys.readouterr().out


def test_the_readme_table_is_drawn_from_the_latest_full_run():
    machine = dict(date="2026-12-03T00:00:00+00:00", commit="abc1234", device="cpu", cpu="Some CPU",
                   cpu_flags=["avx2", "avx512f"], threads=2, torch="2.13.0")  # fmt: skip

    def record(run, provider, host_us, date=None):
        m = dict(machine, date=date or machine["date"])
        r = dict(kind="overhead", run=run, machine=m, quick=False, repeats=300, workload="gpaco-lt",
                 provider=provider, launches=6, host_reads=0)  # fmt: skip
        if host_us is not None:
            r["host_us"] = host_us
        return r

    old = [record("old", overhead.BARE, 100.0, "2026-12-01T00:00:00+00:00"), record("old", "cpu", 900.0)]
    old[1]["machine"]["date"] = "2026-12-01T00:00:00+00:00"
    new = [record("new", overhead.BARE, 200.0), record("new", "cpu", 300.0), record("new", "triton", None)]
    table = report.overhead_section(old + new)
    assert "run `new`" in table and "`old`" not in table
    assert "| gpaco-lt | cpu | 300 | 1.50x | 6 | 0 |" in table
    assert "| gpaco-lt | triton | interpreter, not timed |  | 6 | 0 |" in table
    assert report.overhead_section([]).startswith("(no record yet")
