"""The library in a training loop as a user writes it, printed as a table (issue 30's before/after figures):

- a GPaCo step compiled with torch.compile (Inductor, fullgraph) around a MomentumQueue that fills over 12 steps:
  how many times it compiles, and how far its losses and gradients are from eager;
- GPaCo's --fp16 loop on this CPU: the drop-in under autocast (bfloat16 class logits, float32 features), each
  backend's loss against float64.

    python -m tools.training_loop_check [--steps 12] [--queue 80] [--backend-compiler inductor] [--out FILE]

The record the README's compile counts come from: benchmarks/results/training_loop_check.txt (--out).

The same checks, asserted, are tests/test_training_loop.py (with the cheaper aot_eager compiler)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def compiled_loop(backend: str, compiler: str, options: dict, enqueue_in_step: bool, steps: int, size: int) -> str:
    import test_training_loop as loop

    try:
        start = time.perf_counter()
        common = dict(enqueue_in_step=enqueue_in_step, steps=steps, queue_size=size)
        eager, _ = loop._loop(backend, **common)
        compiled, counter = loop._loop(backend, "cpu", options, compiler=compiler, **common)
        worst = max((a - b).abs().max().item() for g, w in zip(compiled, eager) for a, b in zip(g, w))
        seconds = time.perf_counter() - start
        return f"{counter.frame_count} compilations, max |compiled - eager| {worst:.1e} ({seconds:.0f} s)"
    except Exception as exc:  # the "before" column: what a user met
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:110]}"


def autocast_gpaco(backend: str) -> str:
    import gpaco_kernels as gk

    gen = torch.Generator().manual_seed(1)
    n, k, c, d = 24, 40, 7, 20
    x = torch.randn(n, d, generator=gen)
    queue = F.normalize(torch.randn(k, d, generator=gen), dim=1)
    labels = torch.randint(0, c, (n + k,), generator=gen)
    head = torch.nn.Linear(d, c)
    kwargs = dict(alpha=0.05, temperature=0.2, K=k, num_classes=c, smooth=0.1)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(x)
            feats = torch.cat([F.normalize(x, dim=1), queue])
            loss = gk.compat.GPaCoLoss(backend=backend, **kwargs)(feats, labels, logits)
        want = gk.compat.GPaCoLoss(backend="reference", **kwargs)(feats.double(), labels, logits.double())
        return f"{loss.dtype}, loss {loss.item():.6f}, |loss - float64| {abs(loss.item() - want.item()):.1e}"
    except Exception as exc:
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:110]}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--queue", type=int, default=80, help="queue size (16 rows a step fill it)")
    parser.add_argument("--backend-compiler", default="inductor", help="torch.compile backend (inductor, aot_eager)")
    parser.add_argument("--out", help="also write the lines to this file (the committed record)")
    args = parser.parse_args(argv)
    import gpaco_kernels as gk

    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    from benchmarks.machine import commit, cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    say(f"python -m tools.training_loop_check --queue {args.queue}, commit {commit()}, torch {torch.__version__}, "
        f"{model} ({' '.join(flags) or 'no avx2/avx512/amx'}), {torch.get_num_threads()} threads")  # fmt: skip
    say(f"compiled GPaCo step, MomentumQueue({args.queue}) filling by 16 rows a step, {args.steps} steps, "
          f"torch.compile(backend={args.backend_compiler!r}):")  # fmt: skip
    for backend in ("auto", "torch"):
        for name, options in (
            ("fullgraph", {"fullgraph": True}),
            ("dynamic=True", {"fullgraph": True, "dynamic": True}),
        ):
            for enqueue_in_step in (True, False):
                where = "enqueue in the step" if enqueue_in_step else "enqueue after backward"
                result = compiled_loop(backend, args.backend_compiler, options, enqueue_in_step, args.steps, args.queue)
                say(f"  backend={backend:<5} {name:<13} {where:<23} {result}")
    say("GPaCo drop-in under CPU autocast (bfloat16 logits, float32 features):")
    for backend in gk.available_backends("cpu"):
        say(f"  backend={backend:<9} {autocast_gpaco(backend)}")

    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
