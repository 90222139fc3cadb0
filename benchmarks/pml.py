"""pytorch-metric-learning's CrossBatchMemory(SupConLoss) against the drop-in of gpaco_kernels.compat.pml: peak memory
and time of one training step (forward + backward) with a full memory, per memory size.

    python -m benchmarks.pml [--memory-sizes 4096 16384 65536] [--batch 256] [--dim 128] [--device cpu] [--record]

Each measurement runs in a fresh process (a step of one provider leaves memory cached that would hide the next
one's): the memory is filled with random unit vectors and labels of 100 classes (not counted), then one step runs
under peak_growth. PML builds the batch x memory matrix several times over (similarities, masks, exp), the fused
loss holds row blocks of it. --record appends one record per size (kind "pml-memory") to
benchmarks/results/records.jsonl; `python -m benchmarks --report` writes the docs/benchmarks.md table from them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid

import torch

from .machine import ROOT, facts
from .records import RECORDS, append

PROVIDERS = ("pml", "fused")
CLASSES = 100


def step_here(provider: str, memory_size: int, batch: int, dim: int, device: str) -> dict:
    """One step of `provider` with a full memory, in this process."""
    from gpaco_kernels._measure import peak_growth

    gen = torch.Generator().manual_seed(0)
    if provider == "pml":
        from pytorch_metric_learning.losses import CrossBatchMemory, SupConLoss
    else:
        from gpaco_kernels.compat.pml import CrossBatchMemory, SupConLoss
    module = CrossBatchMemory(SupConLoss(temperature=0.1), dim, memory_size=memory_size).to(device)
    with torch.no_grad():
        module.embedding_memory.copy_(torch.nn.functional.normalize(torch.randn(memory_size, dim, generator=gen)))
        module.label_memory.copy_(torch.randint(0, CLASSES, (memory_size,), generator=gen))
    module.has_been_filled = True
    embeddings = torch.randn(batch, dim, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, CLASSES, (batch,), generator=gen).to(device)
    warm = CrossBatchMemory(SupConLoss(temperature=0.1), dim, memory_size=2 * batch).to(device)
    warm(embeddings, labels).backward()  # thread pools and allocator arenas, outside the measurement
    embeddings.grad = None

    def step():
        loss = module(embeddings, labels)
        loss.backward()
        return float(loss.detach())

    growth, seconds, loss = peak_growth(step, device)
    return dict(provider=provider, memory_size=memory_size, peak_mb=growth, seconds=seconds, loss=loss)


def step_in_subprocess(provider, memory_size, batch, dim, device, timeout=900) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.pml", "--step", provider, str(memory_size)]
    cmd += ["--batch", str(batch), "--dim", str(dim), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return dict(provider=provider, memory_size=memory_size, status="error", note=done.stderr.strip()[-300:])
    return dict(status="ok", **json.loads(lines[-1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", action="store_true", help=f"append the results to {RECORDS.relative_to(ROOT)}")
    parser.add_argument("--step", nargs=2, metavar=("PROVIDER", "MEMORY_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step_here(args.step[0], int(args.step[1]), args.batch, args.dim, args.device)))
        return 0
    run, machine, records, failed = uuid.uuid4().hex[:8], facts(torch.device(args.device)), [], False
    print("memory size | PML MB | fused MB | PML / fused | PML s | fused s | |loss difference|")
    for size in args.memory_sizes:
        results = {p: step_in_subprocess(p, size, args.batch, args.dim, args.device) for p in PROVIDERS}
        pml, fused = results["pml"], results["fused"]
        failed |= fused["status"] != "ok"
        if pml["status"] == fused["status"] == "ok":
            ratio = pml["peak_mb"] / max(fused["peak_mb"], 0.1)
            print(f"{size} | {pml['peak_mb']:.0f} | {fused['peak_mb']:.0f} | {ratio:.1f}x | {pml['seconds']:.3f} | "
                  f"{fused['seconds']:.3f} | {abs(pml['loss'] - fused['loss']):.1e}")  # fmt: skip
        else:
            print(f"{size} | {pml['status']} | {fused['status']} | | | | {pml.get('note', fused.get('note'))}")
        records.append(dict(kind="pml-memory", run=run, machine=machine, batch=args.batch, dim=args.dim,
                            memory_size=size, quick=False, results=results))  # fmt: skip
    if args.record:
        append(RECORDS, records)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
