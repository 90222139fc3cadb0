"""Check this installation on this machine: what a user runs on a new machine before training with the library.

    python -m gpaco_kernels.selfcheck [--device cuda] [--quick] [--no-timing]

1. Correctness: every loss (PaCo, GPaCo, the GPaCo pixel loss, SupCon, PSC) x every backend that runs on the device
   x every dtype that backend accepts, values and gradients (with a non-uniform upstream gradient) against the
   float64 reference, with the tolerances of gpaco_kernels.tolerances. One line per combination.
2. A short side-by-side table at the headline sizes (smaller with --quick): time of one forward+backward (median of
   a few, after a warm-up) and peak memory growth, for the fused loss (backend 'auto'), the dense formula in eager
   PyTorch (backend 'reference', which builds the anchors x columns matrix as the published code does) and
   torch.compile of that dense formula (left out with --quick: compiling it takes longer than the rest).

Exits with status 1 if any check fails (the table never fails the run; a provider that runs out of memory is shown
as such). Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before importing gpaco_kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time

import torch

from . import fused_paco_loss, fused_psc_loss, fused_supcon_loss
from ._measure import peak_growth
from .ops import available_backends
from .tolerances import DTYPES, within

LOSSES = ("paco", "gpaco", "pixel", "supcon", "psc")


def _normal(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def problem(loss: str, quick: bool, seed: int = 0, dim: int | None = None):
    """(function, float64 keyword arguments, names of the arguments that take a gradient) of a small problem whose
    sizes miss every tile size, for one loss, with the published recipe's options; dim: the feature dim, if not the
    default."""
    gen = torch.Generator().manual_seed(seed)
    n, k, c, d = (37, 29, 11, 24) if quick else (133, 301, 53, 72)
    d = dim or d

    def unit(*shape):
        return torch.nn.functional.normalize(_normal(gen, *shape), dim=-1)

    if loss in ("paco", "gpaco"):
        batch = n // 2
        labels = torch.randint(0, c, (2 * batch,), generator=gen)
        kw = dict(
            features=unit(2 * batch, d),
            labels=labels,
            queue=unit(k, d),
            queue_labels=torch.randint(0, c, (k,), generator=gen),
            class_counts=torch.randint(1, 100, (c,), generator=gen),
            temperature=0.2,
            center_temperature=1.0,
        )
        if loss == "paco":  # anchors are the first view (q); [q; k] and the queue are contrast columns
            kw.update(num_anchors=batch, center_logits=_normal(gen, batch, c), alpha=0.05, gamma=1.0, beta=1.0)
        else:  # both views are anchors, label smoothing
            kw.update(center_logits=_normal(gen, 2 * batch, c), alpha=0.05, label_smoothing=0.1)
        return fused_paco_loss, kw, ["features", "center_logits"]
    if loss == "pixel":  # every pixel an anchor, label == C ignored, tc = 1, no queue
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        kw = dict(
            features=unit(n, d),
            labels=labels,
            center_logits=_normal(gen, n, c),
            alpha=0.5,
            temperature=0.07,
            ignore_index=c,
        )
        return fused_paco_loss, kw, ["features", "center_logits"]
    if loss == "supcon":
        bsz = n // 2
        kw = dict(features=unit(bsz, 2, d), labels=torch.randint(0, 7, (bsz,), generator=gen), temperature=0.1)
        return fused_supcon_loss, kw, ["features"]
    assert loss == "psc", loss
    kw = dict(
        features=_normal(gen, n, d), labels=torch.randint(0, c, (n,), generator=gen), prototypes=_normal(gen, c, d)
    )
    return fused_psc_loss, kw, ["features", "prototypes"]


def run(fn, kw, grad_args, backend, dtype, device, upstream):
    """(loss per anchor, gradients) of fn in dtype on device, for the upstream gradient `upstream` (float64)."""
    args = {}
    for key, value in kw.items():
        if torch.is_tensor(value):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype).detach().requires_grad_(key in grad_args)
        args[key] = value
    loss = fn(**args, reduction="none", backend=backend)
    grads = torch.autograd.grad(loss, [args[k] for k in grad_args], upstream.to(device, loss.dtype))
    return [loss, *grads]


def dtypes_on(backend: str, device: str):
    out = []
    for dtype in DTYPES[backend]:
        if device.startswith("cuda") and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        out.append(dtype)
    return out


# The feature dim of the second round of problems, triton alone: past launch.MAX_DIM (the kernels that tile the
# features, paco_wide) and not a power of two.
WIDE_DIM = 136


def _paths(backend: str, loss: str, device: str) -> list:
    """The kernel paths of a backend to check, as (name suffix, launch settings): triton's positives by label sums
    (its large-step path) as well as the per-tile compares the small problems here would take, and under the
    interpreter the label sums with tiles loaded by tensor descriptors (on a Hopper GPU the "+sums" line takes them
    already, D being a multiple of 8 here); PSC has no sample columns, so no label sums."""
    if backend != "triton" or loss == "psc":
        return [("", {})]
    paths = [("", {}), ("+sums", dict(FORCE_LABEL_SUMS=True))]
    if torch.device(device).type == "cpu":
        paths.append(("+sums+tma", dict(FORCE_LABEL_SUMS=True, FORCE_TMA=True)))
    return paths


@contextlib.contextmanager
def _path(settings: dict):
    if not settings:
        yield
        return
    from .triton import launch

    before = {name: getattr(launch, name) for name in settings}
    for name, value in settings.items():
        setattr(launch, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(launch, name, value)


def check_correctness(device: str, quick: bool, out=print) -> int:
    """One line per loss x backend x dtype; returns the number of failures."""
    backends = [b for b in available_backends(torch.device(device).type) if b != "reference"]
    out(f"backends on {device}: {', '.join(backends)}")
    failures = checks = 0
    for loss, dim in [(loss, dim) for dim in (None, WIDE_DIM) for loss in LOSSES]:
        fn, kw, grad_args = problem(loss, quick, dim=dim)
        with torch.no_grad():
            anchors = fn(**kw, reduction="none", backend="reference").shape[0]
        upstream = torch.linspace(-1.0, 2.0, anchors, dtype=torch.float64)  # not uniform, not 1
        truth = run(fn, kw, grad_args, "reference", torch.float64, "cpu", upstream)
        names = ["loss", *(f"d{k}" for k in grad_args)]
        for backend in backends if dim is None else [b for b in backends if b == "triton"]:
            for suffix, path in _paths(backend, loss, device) if dim is None else [(f" D{dim}", {})]:
                for dtype in dtypes_on(backend, device):
                    checks += 1
                    ref = run(fn, kw, grad_args, "reference", dtype, "cpu", upstream)
                    try:
                        with _path(path):
                            got = run(fn, kw, grad_args, backend, dtype, device, upstream)
                        problems = [
                            f"{name}: {p}"
                            for name, g, t, r in zip(names, got, truth, ref)
                            for p in within(g, t, r, backend, dtype)
                        ]
                        worst = max(
                            (g.double().cpu() - t).abs().max().item() / max(t.abs().max().item(), 1e-30)
                            for g, t in zip(got, truth)
                        )
                    except Exception as exc:  # a backend that errors is a failed check, reported, not a crash
                        problems, worst = [f"{type(exc).__name__}: {exc}"], float("nan")
                    status = "ok" if not problems else "FAIL " + "; ".join(problems)
                    failures += bool(problems)
                    name = backend + suffix
                    out(f"  {loss:<7} {name:<16} {str(dtype)[6:]:<9} max rel err vs float64 {worst:9.2e}  {status}")
    out(f"selfcheck: {checks} loss x backend x dtype checks on {device}, {failures} failed")
    return failures


# ------------------------------------------------------------------------------------------------------------------
# Side-by-side table

HEADLINE = {  # name -> (function, sizes); sizes per (device kind, quick)
    "GPaCo LT step": "lt",
    "pixel loss": "pixel",
    "SupCon 2 views": "supcon",
}
SIZES = {
    ("cpu", True): {"lt": dict(queue=1024), "pixel": dict(n=1024), "supcon": dict(bsz=512)},
    ("cpu", False): {"lt": dict(queue=8192), "pixel": dict(n=8192), "supcon": dict(bsz=4096)},
    ("cuda", True): {"lt": dict(queue=8192), "pixel": dict(n=16384), "supcon": dict(bsz=8192)},
    ("cuda", False): {"lt": dict(queue=8192), "pixel": dict(n=65536), "supcon": dict(bsz=32768)},
}


def headline_inputs(kind: str, sizes: dict, device: str, dtype: torch.dtype):
    """(function, keyword arguments with leaves on device) of one headline workload."""
    gen = torch.Generator().manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1).to(device, dtype)

    if kind == "supcon":
        bsz = sizes["bsz"]
        return fused_supcon_loss, dict(
            features=unit(bsz, 2, 128).requires_grad_(),
            labels=torch.randint(0, 100, (bsz,), generator=gen).to(device),
            temperature=0.1,
        )
    if kind == "lt":  # GPaCo ImageNet-LT: 256 anchors, 1000 classes, queue, D 128
        return fused_paco_loss, dict(
            features=unit(256, 128).requires_grad_(),
            labels=torch.randint(0, 1000, (256,), generator=gen).to(device),
            queue=unit(sizes["queue"], 128),
            queue_labels=torch.randint(0, 1000, (sizes["queue"],), generator=gen).to(device),
            center_logits=torch.randn(256, 1000, generator=gen).to(device, dtype).requires_grad_(),
            class_counts=torch.randint(1, 500, (1000,), generator=gen),
            alpha=0.05,
            temperature=0.2,
            label_smoothing=0.1,
        )
    n = sizes["n"]  # the pixel loss: every pixel an anchor, 150 classes
    return fused_paco_loss, dict(
        features=unit(n, 128).requires_grad_(),
        labels=torch.randint(0, 151, (n,), generator=gen).to(device),
        center_logits=torch.randn(n, 150, generator=gen).to(device, dtype).requires_grad_(),
        alpha=0.5,
        temperature=0.07,
        ignore_index=150,
    )


def _synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


PROVIDERS = ("dense eager", "fused (auto)", "torch.compile(dense)")


def make_step(name: str, sizes: dict, provider: str, device: str, dtype: torch.dtype):
    """A callable running one forward+backward of the headline workload `name` with `provider`."""
    fn, kw = headline_inputs(name, sizes, device, dtype)
    leaves = [v for v in kw.values() if torch.is_tensor(v) and v.requires_grad]
    backend = "auto" if provider == "fused (auto)" else "reference"
    loss_fn = torch.compile(fn, dynamic=False) if provider == "torch.compile(dense)" else fn

    def step():
        for leaf in leaves:
            leaf.grad = None
        loss_fn(**kw, backend=backend).backward()
        _synchronize(device)

    return step


def memory_growth(name: str, sizes: dict, provider: str, device: str, dtype: torch.dtype) -> float:
    """Peak memory growth (MB) of one step after a warm-up step. On CUDA: the caching allocator's peak, here. On the
    CPU: resident memory, in a fresh process whose allocator returns large blocks to the system when they are freed
    (MALLOC_MMAP_THRESHOLD_), so that neither earlier providers nor the warm-up's freed memory hide the step's peak."""
    if device.startswith("cuda"):
        step = make_step(name, sizes, provider, device, dtype)
        step()
        torch.cuda.empty_cache()
        return peak_growth(step, device)[0]
    import json
    import os
    import subprocess

    request = json.dumps(dict(name=name, sizes=sizes, provider=provider, dtype=str(dtype)[6:]))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(
        [sys.executable, "-m", "gpaco_kernels.selfcheck", "--memory-of", request],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "memory probe failed")
    return float(done.stdout.strip().splitlines()[-1])


def _memory_of(request: str) -> None:
    """The fresh process of memory_growth on the CPU: prints the growth in MB."""
    import json

    r = json.loads(request)
    step = make_step(r["name"], r["sizes"], r["provider"], "cpu", getattr(torch, r["dtype"]))
    step()
    print(peak_growth(step, "cpu")[0])


def side_by_side(device: str, quick: bool, dtype: torch.dtype, out=print) -> None:
    """Time of the providers interleaved round by round in this process (medians), memory of each measured apart."""
    kind = torch.device(device).type
    sizes = SIZES[(kind, quick)]
    rounds = 3 if quick else 7
    providers = PROVIDERS[:2] if quick else PROVIDERS  # --quick: no torch.compile column
    out(
        f"fwd+bwd per step, {str(dtype)[6:]}, median of {rounds} interleaved rounds after a warm-up; "
        "memory = peak growth of one step"
    )
    out(f"  {'workload':<30} {'provider':<22} {'time':>11} {'dense/this':>10} {'memory':>10}")
    for title, name in HEADLINE.items():
        label = f"{title} " + ", ".join(f"{k} {v}" for k, v in sizes[name].items())
        steps, results = {}, {}
        for provider in providers:
            try:
                steps[provider] = make_step(name, sizes[name], provider, device, dtype)
                steps[provider]()  # warm-up (and compilation)
            except Exception as exc:  # shown, not fatal: the table measures, the checks above decide
                steps.pop(provider, None)
                results[provider] = _failure(exc)
        times = {provider: [] for provider in steps}
        for _ in range(rounds):
            for provider, step in steps.items():
                start = time.perf_counter()
                step()
                times[provider].append(time.perf_counter() - start)
        steps.clear()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        dense = statistics.median(times["dense eager"]) if times.get("dense eager") else None
        for provider in providers:
            if provider in results:
                out(f"  {label:<30} {provider:<22} {results[provider]}")
                continue
            seconds = statistics.median(times[provider])
            ratio = f"{dense / seconds:9.2f}x" if dense else f"{'':>10}"
            try:
                memory = f"{memory_growth(name, sizes[name], provider, device, dtype):7.1f} MB"
            except Exception as exc:
                memory = _failure(exc)
            out(f"  {label:<30} {provider:<22} {seconds * 1e3:8.2f} ms {ratio} {memory:>10}")
    out("  (dense/this > 1: faster than the dense formula in eager PyTorch; fused = what backend 'auto' runs here)")


def _failure(exc: Exception) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    return f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:70] if str(exc).strip() else ''}"


def describe(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                info = fh.read()
            name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
            flags = set(next(ln for ln in info.splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
            wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
            name += " (" + " ".join(f for f in wanted if f in flags) + ")"
        except (OSError, StopIteration):
            pass
    from .triton.requirements import TORCH_FLOOR, TRITON_FLOOR

    floor = "the Triton kernels need torch >= {}.{}, triton >= {}.{}".format(*TORCH_FLOOR, *TRITON_FLOOR)
    try:
        import triton

        versions = f"torch {torch.__version__}, triton {triton.__version__} ({floor})"
    except ImportError:
        versions = f"torch {torch.__version__}, no triton ({floor})"
    return f"{name}; {versions}, {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help="small problems, a small table without torch.compile (CI)")
    parser.add_argument("--no-timing", action="store_true", help="the correctness checks only")
    parser.add_argument("--dtype", default=None, help="dtype of the table (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: the fresh process of a CPU memory figure
    args = parser.parse_args(argv)
    if args.memory_of:
        _memory_of(args.memory_of)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here")
    import gpaco_kernels

    print(f"gpaco_kernels {gpaco_kernels.__version__} selfcheck on {args.device}: {describe(args.device)}")
    failures = check_correctness(args.device, args.quick)
    if not args.no_timing:
        default = "bfloat16" if args.device.startswith("cuda") else "float32"
        side_by_side(args.device, args.quick, getattr(torch, args.dtype or default))
    print("selfcheck: FAILED" if failures else "selfcheck: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
