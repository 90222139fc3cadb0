"""The benchmark sweeps and the inputs of one point of a sweep.

lt-queue   the GPaCo ImageNet-LT step (256 anchors, 1000 classes, D 128) over the queue size
pixel      the GPaCo pixel loss (150 classes, D 128, every pixel an anchor) over the number of pixels N
supcon     SupCon with two views (labels of 100 classes, D 128) over the batch size; 2 x batch anchors and columns
dim        the LT step with a queue of 8192 over the embedding dimension
classes    SupCon with two views of a 8192 batch (16384 rows, D 128) over the number of distinct labels: few labels
           mean dense positives (a third of every row with 3 labels)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tools.workloads import OPTIONS, make_inputs


@dataclass(frozen=True)
class Sweep:
    name: str
    title: str
    axis: str  # what the size is
    full: tuple
    quick: tuple


SWEEPS = {
    s.name: s
    for s in (
        Sweep(
            "lt-queue",
            "GPaCo ImageNet-LT step (256 anchors, C 1000, D 128)",
            "queue size K",
            (1024, 2048, 4096, 8192, 16384, 32768, 65536),
            (1024, 4096),
        ),  # fmt: skip
        Sweep(
            "pixel",
            "GPaCo pixel loss (C 150, D 128)",
            "pixels N",
            (1024, 2048, 4096, 8192, 16384, 32768, 65536),
            (1024, 2048),
        ),  # fmt: skip
        Sweep(
            "supcon",
            "SupCon, two views (D 128)",
            "batch size",
            (256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
            (256, 512),
        ),  # fmt: skip
        Sweep(
            "dim", "GPaCo ImageNet-LT step, queue 8192", "embedding dim D", (32, 64, 128, 256, 512), (32, 128)
        ),  # fmt: skip
        Sweep(
            "classes", "SupCon, two views of 8192 (D 128)", "distinct labels", (3, 10, 100, 1000), (3, 100)
        ),  # fmt: skip
    )
}


@dataclass
class Case:
    """One point of a sweep: the loss kind, its inputs and options, and its sizes for the floor and the dense model."""

    sweep: str
    size: int
    kind: str  # "paco" (fused_paco_loss) or "supcon" (fused_supcon_loss)
    inputs: dict
    options: dict
    anchors: int
    columns: int  # contrast columns, class block included
    gemm_columns: int  # columns that come from a product with the anchors (batch + queue)
    dim: int
    leaves: list = field(default_factory=list)
    grad_columns: int = 0  # the first grad_columns of the product columns take a gradient (G^T A): the batch rows

    def __post_init__(self):
        self.grad_columns = self.grad_columns or self.gemm_columns

    def tight_flops(self) -> int:
        """FLOPs no exact method avoids: S = A X^T and G X over every product column, G^T A over those that take a
        gradient (the queue takes none)."""
        return 2 * self.anchors * self.dim * (2 * self.gemm_columns + self.grad_columns)

    def zero_grad(self):
        for leaf in self.leaves:
            leaf.grad = None


def make_case(sweep: str, size: int, *, device="cpu", dtype=torch.float32, seed=0) -> Case:
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {sorted(SWEEPS)}, got {sweep!r}")
    if sweep in ("supcon", "classes"):
        gen = torch.Generator().manual_seed(seed)
        batch, classes = (size, 100) if sweep == "supcon" else (8192, size)
        feats = torch.nn.functional.normalize(torch.randn(batch, 2, 128, generator=gen), dim=-1)
        feats = feats.to(device=device, dtype=dtype).requires_grad_()
        labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
        options = dict(temperature=0.1, base_temperature=0.07)
        inputs = dict(features=feats, labels=labels)
        rows = 2 * batch
        return Case(sweep, size, "supcon", inputs, options, rows, rows, rows, 128, [feats], rows)
    if sweep == "pixel":
        sizes = dict(anchors=size, batch=size, queue=0, classes=150, dim=128)
        workload = "pixel"
    else:
        sizes = dict(anchors=256, batch=256, queue=size if sweep == "lt-queue" else 8192, classes=1000, dim=128)
        if sweep == "dim":
            sizes["dim"] = size
        workload = "gpaco-lt"
    inputs = make_inputs(
        **sizes, seed=seed, dtype=dtype, device=device, ignore_fraction=0.1 if workload == "pixel" else 0.0
    )
    gemm_columns = sizes["batch"] + sizes["queue"]
    return Case(
        sweep,
        size,
        "paco",
        inputs,
        dict(OPTIONS[workload]),
        sizes["anchors"],
        gemm_columns + sizes["classes"],
        gemm_columns,
        sizes["dim"],
        [inputs["features"], inputs["center_logits"]],
        sizes["batch"],
    )


def add_point_arguments(parser, *, device: str, dtype: str) -> None:
    """The arguments that name one measured point (--sweep, --size, --provider, --device, --dtype), shared by the
    one-point commands (memory, profile_step) with their own default device and dtype."""
    from .providers import PROVIDERS

    parser.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--device", default=device)
    parser.add_argument("--dtype", default=dtype, choices=["float32", "bfloat16", "float16"])
