"""A model, not a measurement: time of the Triton kernels' tile schedule on an H100, from FLOPs, exps and bytes.

    python -m tools.gpu_model [--workload gpaco-lt pixel] [--batch N] [--dtype bf16 fp32-tf32]

For each kernel launch the launchers would make (grid and column splits from gpaco_kernels/triton/launch.py, tiles
of the first autotune candidate of gpaco_kernels/triton/configs.py),
it counts per program the tensor-core FLOPs of its tl.dot calls (logits, and their recompute in the backward), the
exps, and the bytes it reads; and for the launch the bytes every program needs from memory at least once (unique
bytes: inputs, saved statistics, outputs). Programs are spread evenly over the SMs, so

    time(kernel) = max(programs on the busiest SM x max(FLOPs / SM peak, exps / SM exp rate),  unique bytes / HBM)

which assumes that tiles reread by several programs come from L2 (50 MB; the headline inputs fit), that math, exps
and memory overlap perfectly, and no launch overhead: a lower bound for this schedule, to be checked on a GPU with
`python benchmarks/side_by_side.py --device cuda`. Next to it: the floor, the three bare GEMMs of the step
(logits, G C, G^T A) at the H100's peak.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# H100 SXM5 published peaks (dense, no sparsity).
H100 = dict(
    sms=132,
    clock_hz=1.83e9,
    # fp32-tf32x3: three TF32 products per float32 product (float32 with TF32 disallowed)
    flops={"bf16": 989e12, "fp16": 989e12, "fp32-tf32": 495e12, "fp32-tf32x3": 495e12 / 3},
    exp_per_clock_per_sm=16,  # special-function units (MUFU.EX2): 4 per SM sub-partition
    hbm_bytes_per_s=3.35e12,
)
ITEM_BYTES = {"bf16": 2, "fp16": 2, "fp32-tf32": 4, "fp32-tf32x3": 4}


@dataclass
class Launch:
    kernel: str
    programs: int
    flops: float  # per program
    exps: float  # per program
    unique_bytes: float  # whole launch

    def seconds(self, dtype: str, gpu=H100) -> float:
        sm_flops = gpu["flops"][dtype] / gpu["sms"]
        sm_exps = gpu["exp_per_clock_per_sm"] * gpu["clock_hz"]
        per_program = max(self.flops / sm_flops, self.exps / sm_exps)
        waves = math.ceil(self.programs / gpu["sms"])
        return max(waves * per_program, self.unique_bytes / gpu["hbm_bytes_per_s"])


def schedule(sizes: dict, dtype: str, gpu=H100) -> list[Launch]:
    """The kernel launches of one forward+backward of fused_paco_loss on these sizes (features and center logits
    requiring grad for 'gpaco-lt'; features and fused centers for 'pixel' when centers is set)."""
    from gpaco_kernels.triton import configs, launch

    A, N, K, C, D = sizes["anchors"], sizes["batch"], sizes["queue"], sizes["classes"], sizes["dim"]
    fused_centers = sizes.get("centers", False)  # class logits from <f, w_c> (a dot) instead of given S
    b = ITEM_BYTES[dtype]
    kind = {"fp32-tf32": "fp32", "fp32-tf32x3": "fp32x3"}.get(dtype, "half")
    fwd, rows, cols = (configs.CANDIDATES[(k, kind)][0] for k in ("fwd", "bwd_rows", "bwd_cols"))
    block_d = max(16, 1 << (D - 1).bit_length())
    dot_cols = N + K + (C if fused_centers else 0)  # columns whose logits come from a product with the anchors
    total = N + K + C
    class_bytes = C * block_d * b if fused_centers else A * C * b  # centers W, or the given logits S
    inputs = (N + K) * D * b + class_bytes + (N + K) * 8

    def row_launch(name, conf, products, extra_bytes):
        """A row kernel on its launcher's grid (anchor blocks x column splits): each program runs `products` tile
        products over its share of the columns; extra_bytes(splits) is what it writes beyond reading the inputs."""
        bm = conf[0]
        splits = math.ceil(total / launch.column_split(A, total, kind, gpu["sms"]))
        row_blocks = math.ceil(A / bm)
        return Launch(
            name,
            row_blocks * splits,
            flops=products * 2 * bm * block_d * dot_cols / splits,
            exps=bm * total / splits,
            unique_bytes=inputs + extra_bytes(splits),
        )

    launches = [
        # + the splits' partial (m, z, sum w l, P)
        row_launch("fwd", fwd, 1, lambda splits: 4 * splits * A * 4),
        # logits recomputed, then H X; + saved (lse, a, 1 / P), the splits' parts of dAnchors, dS
        row_launch(
            "bwd_rows", rows, 2, lambda splits: 3 * A * 4 + splits * A * D * 4 + (0 if fused_centers else A * C * b)
        ),
    ]
    bn = cols[1]
    for name, ncols in (("bwd_cols batch", N), ("bwd_cols centers", C if fused_centers else 0)):
        if ncols:
            launches.append(
                Launch(
                    name,
                    math.ceil(ncols / bn),
                    flops=2 * 2 * bn * block_d * A,  # logits recomputed, then G^T A
                    exps=bn * A,
                    unique_bytes=A * D * b + ncols * D * b + 3 * A * 4 + ncols * D * 4,
                )
            )
    return launches


def floor_seconds(sizes: dict, dtype: str, gpu=H100) -> float:
    """The three products of the step at the GPU's peak: logits A x (N + K [+ C]), G C, G^T A."""
    A, N, K, C, D = sizes["anchors"], sizes["batch"], sizes["queue"], sizes["classes"], sizes["dim"]
    cols = N + K + (C if sizes.get("centers") else 0)
    return 3 * 2 * A * cols * D / gpu["flops"][dtype]


def report(name: str, sizes: dict, dtypes) -> None:
    fields = zip("ANKCD", ("anchors", "batch", "queue", "classes", "dim"))
    print(f"{name}: " + ", ".join(f"{letter} {sizes[field]}" for letter, field in fields))
    for dtype in dtypes:
        launches = schedule(sizes, dtype)
        total = sum(launch.seconds(dtype) for launch in launches)
        parts = ", ".join(f"{x.kernel} {x.seconds(dtype) * 1e6:.1f} us ({x.programs} programs)" for x in launches)
        floor = floor_seconds(sizes, dtype)
        ratio = f"{total / floor:4.1f}x"
        print(f"  {dtype:<9} model {total * 1e6:8.1f} us  floor {floor * 1e6:7.1f} us  ({ratio})  {parts}")


def main(argv=None) -> None:
    from .workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=["gpaco-lt", "pixel"])
    parser.add_argument("--batch", type=int, nargs="+", help="N values (pixels for 'pixel'); default: the workload's")
    parser.add_argument("--dtype", nargs="+", choices=sorted(ITEM_BYTES), default=["bf16", "fp32-tf32"])
    args = parser.parse_args(argv)
    print("MODEL of the tile schedule on an H100 SXM (not a measurement; assumptions in the module docstring)")
    for workload in args.workload:
        for batch in args.batch or [None]:
            sizes = dict(WORKLOADS[workload])
            if batch:
                sizes["batch"] = batch
                if workload == "pixel":
                    sizes["anchors"] = batch
            report(workload, sizes, args.dtype)


if __name__ == "__main__":
    main()
