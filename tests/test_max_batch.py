"""benchmarks.max_batch: reading budgets, the doubling-then-bisection search, and real tries under RLIMIT_AS."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import max_batch


def test_budgets_are_read_in_binary_and_decimal_units():
    assert max_batch.parse_bytes("2GiB") == 2 * 2**30
    assert max_batch.parse_bytes("512MiB") == 512 * 2**20
    assert max_batch.parse_bytes("1GB") == 10**9
    assert max_batch.parse_bytes("300000") == 300000
    with pytest.raises(argparse.ArgumentTypeError, match="--budget.*'two gigs'"):
        max_batch.parse_bytes("two gigs")


def _args(**kw):
    base = dict(start=256, max_size=1 << 20, resolution=1.1, time_limit=10.0, budget=2**30, device="cpu",
                dtype="float32")  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_search_doubles_then_bisects_to_the_resolution(monkeypatch):
    seen = []

    def fake(workload, size, provider, args):
        seen.append(size)
        return dict(size=size, status="ok" if size <= 3000 else "oom")

    monkeypatch.setattr(max_batch, "run_try", fake)
    found = max_batch.search("supcon", "dense", _args(), log=lambda *_: None)
    assert seen[:5] == [256, 512, 1024, 2048, 4096]
    assert found["stopped_by"] == "oom" and 3000 / 1.1 <= found["largest"] <= 3000


def test_after_a_time_out_one_more_try_at_the_size_the_time_predicts(monkeypatch):
    def fake(workload, size, provider, args):  # a step of the pixel loss grows as size^2: 4 s at 2048
        if size > 3000:
            return dict(size=size, status="timeout")
        seconds = (size / 1024) ** 2
        return dict(size=size, status="ok", seconds=seconds, wall_s=seconds + 2.0)

    monkeypatch.setattr(max_batch, "run_try", fake)
    found = max_batch.search("pixel", "cpu", _args(start=1024), log=lambda *_: None)
    # 2048 ok (4 s + 2 s start-up), 4096 over the 10 s limit; then 2048 * sqrt((8 - 2) / 4) -> 2496 (a multiple of 64)
    assert [t["size"] for t in found["tries"]] == [1024, 2048, 4096, 2496]
    assert found["largest"] == 2496 and found["stopped_by"] == "timeout"


def test_search_reports_none_when_the_first_size_fails(monkeypatch):
    monkeypatch.setattr(max_batch, "run_try", lambda w, size, p, a: dict(size=size, status="oom"))
    assert max_batch.search("pixel", "dense", _args(), log=lambda *_: None)["largest"] is None


@pytest.mark.slow
def test_real_tries_under_the_address_space_limit():
    args = _args(budget=64 * 2**20, time_limit=120.0)
    dense = max_batch.run_try("supcon", 2048, "dense", args)  # 4096 x 4096 float32 matrices: 64 MB each
    fused = max_batch.run_try("supcon", 2048, "cpu", args)
    assert dense["status"] == "oom", dense
    assert fused["status"] == "ok" and fused["peak_mb"] < 64, fused
