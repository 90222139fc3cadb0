"""python/train.py end to end on tiny runs: every loss, resume equivalence, the CIFAR pickle loader on a fake
dataset, clear errors for a missing data dir and a corrupt checkpoint, and torchrun with 2 gloo processes."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import needs_torchrun, torchrun_two_gloo_processes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
pytest.importorskip("sklearn")

import lt_data  # noqa: E402
import run_utils  # noqa: E402
import train  # noqa: E402

TINY = ["--epochs", "2", "--batch-size", "32", "--queue-size", "48", "--warmup-epochs", "1", "--quiet"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(before)


@pytest.mark.parametrize("loss", train.LOSSES)
def test_every_loss_trains_and_writes_metrics(tmp_path, loss, one_thread):
    train.main(["--loss", loss, "--out", str(tmp_path), *TINY, *one_thread])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["loss"] == loss and metrics["epochs"] == 2
    assert all(np.isfinite(h["loss"]) for h in metrics["history"])
    test = metrics["test"]
    assert 0 <= test["overall"] <= 100 and len(test["per_class"]) == 10
    assert sum(test["classes"].values()) == 10  # every class in exactly one of many / medium / few
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize("loss", ["gpaco", "paco", "psc-hybrid"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, loss, one_thread):
    args = ["--loss", loss, "--epochs", "3", "--batch-size", "32", "--queue-size", "48", "--quiet", *one_thread]
    train.main([*args, "--out", str(tmp_path / "straight")])
    train.main([*args, "--out", str(tmp_path / "resumed"), "--stop-after-epoch", "1"])
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train.main([*args, "--out", str(tmp_path / "resumed"), "--resume"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "key_model", "queue", "psc"):
        if a[part] is not None:
            for name, tensor in a[part].items():
                assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    assert a["history"] == b["history"]


def _fake_cifar10(folder: Path, per_class_per_file: int = 3):
    rng = np.random.default_rng(0)
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", per_class_per_file * 10) for i in range(1, 6)), ("test_batch", 30)]:
        labels = [int(x) for x in np.arange(n) % 10]
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}
        with open(base / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_fake_cifar_loads_long_tailed_and_trains(tmp_path, one_thread):
    _fake_cifar10(tmp_path / "data")
    data = lt_data.load("cifar10-lt", str(tmp_path / "data"), 10.0)
    assert data.train.images.shape[1:] == (3, 32, 32) and data.test.images.shape[0] == 30
    # 15 images per class in the five batches: the head keeps 15, the tail 15 / 10.
    assert data.counts.tolist() == lt_data.long_tail_counts(15, 10, 10.0) and data.counts.tolist()[::9] == [15, 1]
    train.main(["--loss", "ce", "--dataset", "cifar10-lt", "--data-dir", str(tmp_path / "data"),
                "--imbalance-factor", "10", "--out", str(tmp_path / "run"), *TINY, *one_thread])  # fmt: skip
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"] == "cifar10-lt"


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar100-lt needs the CIFAR python-pickle files.*no --data-dir"):
        lt_data.load("cifar100-lt", None, 100.0)
    with pytest.raises(FileNotFoundError, match=r"missing: .*cifar-10-batches-py/data_batch_1"):
        lt_data.load("cifar10-lt", str(tmp_path), 100.0)


def test_corrupt_checkpoint_is_a_clear_error_and_is_not_overwritten(tmp_path, one_thread):
    args = ["--loss", "ce", "--out", str(tmp_path), *TINY, *one_thread]
    train.main([*args, "--stop-after-epoch", "1"])
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated
    truncated = checkpoint.read_bytes()
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        train.main([*args, "--resume"])
    assert checkpoint.read_bytes() == truncated
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main(["--loss", "ce", "--out", str(tmp_path / "empty"), "--resume", *TINY])


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_gloo_processes(tmp_path):
    args = ["--loss", "gpaco", "--out", str(tmp_path), "--threads", "1", *TINY]
    torchrun_two_gloo_processes(ROOT / "python" / "train.py", 29533, args)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2


def test_the_main_job_compares_each_loss_over_the_seeds(tmp_path, one_thread, capsys):
    train.main(["--losses", "ce", "gpaco", "--seeds", "0", "1", "--out", str(tmp_path), *TINY, *one_thread])
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert sorted(rows) == ["ce", "gpaco"] and all(len(reports) == 2 for reports in rows.values())
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        f"digits-lt-{loss}-seed{seed}" for loss in ("ce", "gpaco") for seed in (0, 1)
    ]
    table = capsys.readouterr().out
    assert "ce" in table and "gpaco" in table and "seeds" in table


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    run_utils.save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(3)}})
    good = path.read_bytes()

    def dies_mid_write(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")  # a few bytes, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(run_utils.torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        run_utils.save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == good
    assert run_utils.load_checkpoint(path, "train.py")["epoch"] == 1


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "model": {}, "payload": _RunsCode()}, path)
    with pytest.raises(RuntimeError, match="not loaded.*could run code"):
        run_utils.load_checkpoint(path, "train.py")


def test_the_default_main_job_is_one_seed_and_full_is_three():
    """make demo runs the quick main job (one seed, about 1.5 minutes on 2 cores); --full is the documented table."""
    assert train.parse_args([]).seeds == [0]
    assert train.parse_args(["--full"]).seeds == [0, 1, 2]
    assert train.parse_args(["--full", "--seeds", "4"]).seeds == [4]
