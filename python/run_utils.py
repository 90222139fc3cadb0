"""What the training drivers (train.py, train_seg.py) share: processes under torchrun, atomic checkpoints, and the
mean-and-spread table over seeds."""

from __future__ import annotations

import os
import pickle
import statistics
from pathlib import Path

import torch
import torch.distributed as dist


def setup_distributed():
    """(rank, world size, group): torchrun sets WORLD_SIZE; gloo on CPU, nccl when CUDA is there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, dist.group.WORLD


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file in the same folder, then rename over the old one: a crash mid-write leaves the
    previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, writer: str) -> dict:
    """The checkpoint `writer` (train.py, train_seg.py) saved at path, with a clear error when it is missing, cut
    short or someone else's."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        # weights_only: tensors, numbers, strings, lists and dicts only (all a checkpoint of these drivers holds), so
        # a checkpoint from elsewhere cannot run code when it is loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(
            f"checkpoint {path} holds objects other than tensors, numbers, strings, lists and dicts, which are not "
            f"loaded (loading them could run code): {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated and cannot be loaded ({exc})") from exc
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise RuntimeError(f"checkpoint {path} is not a {writer} checkpoint (keys: {keys})")
    return state


def print_table(rows: dict, keys, note: str, extra=()) -> None:
    """rows: method -> list of reports over seeds. Prints mean +- std of each key, then the extra keys' means."""
    print(note)
    print(f"{'method':<22}" + "".join(f"{k:>14}" for k in keys) + "".join(f"{k:>16}" for k in extra) + "   seeds")
    for method, reports in rows.items():
        cells = []
        for key in keys:
            values = [r[key] for r in reports]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):7.1f} ± {spread:4.1f}")
        means = [f"{statistics.fmean([r[k] for r in reports]):.4g}" for k in extra]
        print(f"{method:<22}" + "".join(f"{c:>14}" for c in cells) + "".join(f"{m:>16}" for m in means)
              + f"   {len(reports)}")  # fmt: skip


def run_epochs(trainer, args, checkpoint: Path, writer: str, desc: str, rank: int, epoch_facts=dict) -> float:
    """The epochs of one run, the same in both drivers: resume from `checkpoint` with --resume, then from
    trainer.epoch to args.epochs: one trainer.train_epoch(epoch) each, its loss (and epoch_facts(), e.g. the learning
    rate) appended to trainer.history, a checkpoint after each epoch on rank 0, a progress bar on rank 0 unless
    --quiet, and --stop-after-epoch (to test resuming). Returns the seconds the epochs took."""
    import sys
    import time

    if args.resume:
        trainer.load_state_dict(load_checkpoint(checkpoint, writer))
    epochs = range(trainer.epoch, args.epochs)
    progress = epochs
    if rank == 0 and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(epochs, desc=desc, unit="epoch", file=sys.stderr)
    start = time.perf_counter()
    for epoch in progress:
        loss = trainer.train_epoch(epoch)
        trainer.epoch = epoch + 1
        trainer.history.append(dict(epoch=epoch + 1, loss=loss, **epoch_facts()))
        if rank == 0:
            save_checkpoint(checkpoint, trainer.state_dict())
        if args.stop_after_epoch is not None and trainer.epoch >= args.stop_after_epoch:
            break
    return time.perf_counter() - start


def compare_over_seeds(args, field: str, values, run, folder) -> tuple[dict, dict]:
    """The main jobs' comparison: for each value of `field` (the losses or methods compared) and each of args.seeds,
    one run(run_args) with its own copy of args and output folder (args.out or runs/, then folder(value, seed)).
    Returns ({value: [its test report per seed]}, the last run's metrics)."""
    import copy

    rows, metrics = {}, {}
    for value in values:
        for seed in args.seeds:
            run_args = copy.copy(args)
            setattr(run_args, field, value)
            run_args.seed = seed
            run_args.out = (args.out or Path("runs")) / folder(value, seed)
            metrics = run(run_args)
            rows.setdefault(value, []).append(metrics["test"])
    return rows, metrics
