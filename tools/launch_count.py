"""What a region of code asks of the device: every ATen op that would launch a device kernel, every Triton launch,
and every value read back to the host (a stream synchronization on a GPU), recorded on any device (CPU tensors,
the Triton interpreter, meta tensors) by a TorchDispatchMode.

    with StepTrace() as trace:
        loss = fused_paco_loss(...); loss.backward()
    trace.launches, trace.host_reads, trace.summary()

Used by the launch-budget tests (tests/test_host_path.py) and by `python -m benchmarks.overhead`.

What counts as a launch: an ATen op that computes. Allocations (empty, empty_strided), views and metadata ops never
launch a kernel, on any device; this project's own ops (namespace gpaco) are entered, and the ops and kernels inside
them counted. A Triton kernel counts once per launch, whatever autotune does inside (under the interpreter it runs the
one configuration; on a GPU, timing runs happen once per key, not per step). What counts as a host read: an op that
returns a Python number from a tensor (`_local_scalar_dense`, behind `.item()`, `bool()`, `int()`), an op whose
output size depends on values (`nonzero`, a boolean index), and a copy from a non-CPU device to the CPU.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that allocate, alias or describe tensors without running a kernel on the device.
NO_LAUNCH = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.empty_like.default,
    aten.detach.default,
    aten.alias.default,
    aten.lift_fresh.default,
    aten._unsafe_view.default,  # a view without alias information (reshape of a fresh copy)
    aten.sym_size.int,
    aten.sym_stride.int,
    aten.sym_numel.default,
    aten.sym_storage_offset.default,
    aten.is_same_size.default,
    aten.set_.source_Storage_storage_offset,
    aten._assert_tensor_metadata.default,
}
# Ops whose result on the host depends on tensor values: each is a synchronization on a GPU.
HOST_READ = {aten._local_scalar_dense.default, aten.nonzero.default, aten.nonzero_static.default}
HOST_READ_NAMES = ("masked_select", "unique", "_unique", "item", "is_nonzero")


def _op_name(func) -> str:
    return str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)


_AFTER_PYTHON = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)


def _first_tensor(args) -> torch.Tensor:
    return next(a for a in torch.utils._pytree.tree_leaves(args) if isinstance(a, torch.Tensor))


def _devices(tree) -> set:
    found = set()
    for value in torch.utils._pytree.tree_leaves(tree):
        if isinstance(value, torch.Tensor):
            found.add(value.device.type)
    return found


class StepTrace(TorchDispatchMode):
    """Records the launches and host reads of the code run inside it (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.aten_launches: Counter = Counter()
        self.triton_launches: Counter = Counter()
        self.host_reads: Counter = Counter()
        self._inside_kernel = 0
        self._entered = 0
        self._patches = contextlib.ExitStack()

    # -- results --------------------------------------------------------------------------------------------
    @property
    def launches(self) -> int:
        return sum(self.aten_launches.values()) + sum(self.triton_launches.values())

    @property
    def reads(self) -> int:
        return sum(self.host_reads.values())

    def summary(self) -> str:
        def fmt(counter):
            return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counter.items())) or "none"

        return (
            f"{self.launches} launches (Triton: {fmt(self.triton_launches)}; ATen: {fmt(self.aten_launches)}); "
            f"{self.reads} host reads ({fmt(self.host_reads)})"
        )

    # -- recording ------------------------------------------------------------------------------------------
    def __enter__(self):
        if self._entered == 0:
            self._patch_triton()
        self._entered += 1
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._entered -= 1
            if self._entered == 0:
                self._patches.close()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._inside_kernel:  # the interpreter's own tensor work while it runs a kernel
            return func(*args, **kwargs)
        namespace = getattr(func, "namespace", "")
        if namespace == "gpaco":  # this project's op: run its kernel with the mode still on, count what it launches
            keys = torch._C._dispatch_keys(_first_tensor(args)) & _AFTER_PYTHON
            with self:
                return func.redispatch(keys, *args, **kwargs)
        out = func(*args, **kwargs)
        name = _op_name(func)
        if func in HOST_READ or name in HOST_READ_NAMES:
            self.host_reads[name] += 1
        elif name in ("_to_copy", "copy_", "to") and "cpu" in _devices(out) and _devices(args) - {"cpu"}:
            self.host_reads[name + " to cpu"] += 1
        elif func not in NO_LAUNCH and not func.is_view:
            self.aten_launches[name] += 1
        return out

    def _patch_triton(self):
        try:
            import triton  # noqa: F401
            from triton.runtime.autotuner import Autotuner
            from triton.runtime.jit import JITFunction
        except ImportError:
            return
        kinds = [Autotuner, JITFunction]
        try:
            from triton.runtime.interpreter import InterpretedFunction

            kinds.append(InterpretedFunction)
        except ImportError:
            pass
        for kind in kinds:
            self._patches.enter_context(_wrapped_run(kind, self))


@contextlib.contextmanager
def _wrapped_run(kind, trace: StepTrace):
    original = kind.run

    def run(kernel, *args, **kwargs):
        if trace._inside_kernel:
            return original(kernel, *args, **kwargs)
        fn = kernel
        while hasattr(fn, "fn"):
            fn = fn.fn
        trace.triton_launches[getattr(fn, "__name__", str(fn))] += 1
        trace._inside_kernel += 1
        try:
            return original(kernel, *args, **kwargs)
        finally:
            trace._inside_kernel -= 1

    kind.run = run
    try:
        yield
    finally:
        kind.run = original
