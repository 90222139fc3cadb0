"""Long-tailed segmentation with the GPaCo pixel loss on every pixel: the second main job.

    python python/train_seg.py                     # CE vs CE + GPaCo on sampled pixels vs CE + GPaCo on every pixel,
                                                   # 3 seeds each on digit-canvas-lt, one table (~10 min on 2 cores)
    python python/train_seg.py --method all-pixels --seed 1 --out runs/seg-all
    torchrun --nproc_per_node 2 python/train_seg.py --method all-pixels --out runs/seg-ddp

Methods (the loss on the pixels of a batch of B canvases of 32x32, N = B x 1024 pixels):
- ce            cross-entropy on every pixel
- sampled       CE + --contrast-weight x the GPaCo pixel loss on --samples random pixels per canvas, what the
                published GPaCo segmentation code does (it samples 8192 pixels per image because every pixel does not
                fit in memory with its dense formula)
- all-pixels    CE + the GPaCo pixel loss on all N pixels of the batch, each one an anchor against all the others and
                the class logits (fused_paco_loss: memory linear in N)

Before training, the job shows the budget at work: one step of the published dense pixel loss on the N pixels of a
batch runs in a fresh process under --memory-budget (RLIMIT_AS on CPU, the allocator's limit on CUDA) and fails, and
the fused loss's step at that size is measured (peak memory growth). A run folder holds checkpoint.pt (written
atomically after every epoch; --resume continues from it) and metrics.json (mIoU overall and over many / medium /
few digit classes, per-class IoU, peak memory of a training step, seconds). Uses gpaco_kernels as any user would.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the drivers' modules, and benchmarks/ (the published dense loss)

import seg_data  # noqa: E402
from run_utils import compare_over_seeds, print_table, run_epochs, setup_distributed  # noqa: E402
from seg_models import SegNet  # noqa: E402

import gpaco_kernels as gk  # noqa: E402
from gpaco_kernels._measure import is_out_of_memory, peak_growth, set_memory_limit  # noqa: E402

METHODS = ("ce", "sampled", "all-pixels")
TABLE_KEYS = ("miou", "many", "medium", "few")
CONFIG_KEYS = ("seeds", "epochs", "batch_size", "train_size", "test_size", "imbalance", "samples", "contrast_weight",
               "lr", "memory_budget", "backend")  # fmt: skip
# The published pixel loss's hyperparameters (GPaCo/Seg): alpha 0.5, temperature 0.07, no class prior.
PIXEL_LOSS = dict(alpha=0.5, beta=1.0, gamma=1.0, temperature=0.07, center_temperature=1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, help="one run with this method (default: the comparison)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="canvases per step (x 1024 pixels)")
    p.add_argument("--train-size", type=int, default=640, help="training canvases")
    p.add_argument("--test-size", type=int, default=400)
    p.add_argument("--imbalance", type=float, default=20.0, help="digit 0 this many times as frequent as digit 9")
    p.add_argument("--samples", type=int, default=64, help="sampled: pixels per canvas")
    p.add_argument("--contrast-weight", type=float, default=0.5, help="weight of the pixel loss next to CE")
    p.add_argument("--lr", type=float, default=0.003, help="AdamW learning rate (cosine to 0 over the run)")
    p.add_argument("--memory-budget", default="1GiB", help="the budget the dense loss is tried under")
    p.add_argument("--backend", default="auto", help="gpaco_kernels backend")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/seg-<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-budget-check", action="store_true", help="skip the dense-vs-fused memory check")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--record", action="store_true", help="append the comparison to benchmarks/results/records.jsonl")
    p.add_argument("--dense-probe", type=int, help=argparse.SUPPRESS)  # child: one dense step of N pixels
    p.add_argument("--stop-after-epoch", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a stop
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size", "test_size", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from benchmarks.max_batch import parse_bytes

    try:
        args.budget_bytes = parse_bytes(args.memory_budget)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc).replace("--budget", "--memory-budget"))
    return args


# ---------------------------------------------------------------------------------------------------------------
# The pixel loss, dense (the published formula) and fused


def pixel_loss(embeddings, logits, masks, backend, dense=False):
    """GPaCo pixel loss over the pixels given: embeddings (N, D), logits (N, C), masks (N,)."""
    if dense:
        from benchmarks.dense_published import dense_call

        inputs = dict(features=embeddings, labels=masks, center_logits=logits)
        return dense_call(inputs, dict(PIXEL_LOSS, ignore_index=-100))
    return gk.fused_paco_loss(embeddings, masks, center_logits=logits, **PIXEL_LOSS, backend=backend)


def _random_pixel_inputs(n, device):
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(n, 32, generator=gen), dim=1).to(device).requires_grad_()
    logits = torch.randn(n, seg_data.NUM_CLASSES, generator=gen).to(device).requires_grad_()
    masks = torch.randint(0, seg_data.NUM_CLASSES, (n,), generator=gen).to(device)
    return emb, logits, masks


def dense_probe(n: int, budget: int, device: str) -> dict:
    """Child process: one forward+backward of the dense pixel loss on n pixels under the budget."""
    emb, logits, masks = _random_pixel_inputs(n, device)
    pixel_loss(*_random_pixel_inputs(256, device), "auto", dense=True).backward()  # warm-up, outside the budget
    set_memory_limit(device, budget)
    try:
        growth, seconds, _ = peak_growth(lambda: pixel_loss(emb, logits, masks, "auto", dense=True).backward(), device)
        return dict(status="ok", peak_mb=growth, seconds=seconds)
    except (RuntimeError, MemoryError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        return dict(status="oom" if is_out_of_memory(text) else "error", note=text[:200])


def budget_check(args) -> dict:
    """The dense loss on one batch's pixels under the budget (fresh process), and the fused loss's step there."""
    n = args.batch_size * seg_data.SIZE * seg_data.SIZE
    cmd = [sys.executable, str(HERE / "train_seg.py"), "--dense-probe", str(n), "--memory-budget", args.memory_budget]
    cmd += ["--device", args.device]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    lines = done.stdout.strip().splitlines()
    dense = json.loads(lines[-1]) if done.returncode == 0 and lines else dict(status="oom", note=done.stderr[-200:])
    emb, logits, masks = _random_pixel_inputs(n, args.device)
    growth, seconds, _ = peak_growth(lambda: pixel_loss(emb, logits, masks, args.backend).backward(), args.device)
    fused = dict(status="ok", peak_mb=growth, seconds=seconds)
    print(
        f"pixel loss on all {n} pixels of a batch under {args.memory_budget}: dense {dense['status']}"
        f"{' (' + str(dense.get('peak_mb')) + ' MB)' if dense['status'] == 'ok' else ''}; "
        f"fused {growth:.0f} MB, {seconds:.2f} s",
        file=sys.stderr,
    )
    return dict(pixels=n, budget=args.memory_budget, dense=dense, fused=fused)


# ---------------------------------------------------------------------------------------------------------------
# Training


def _release_freed_memory(device):
    """Give memory glibc keeps after frees back to the system (malloc_trim), so that the resident-memory peak of the
    next step shows what the step touches instead of hiding it in pages an earlier step left resident."""
    if torch.device(device).type == "cpu":
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the measured peak may then read low
            pass


class SegTrainer:
    def __init__(self, args, data: seg_data.SegSet, rank=0, world=1):
        self.args, self.data, self.rank, self.world = args, data, rank, world
        torch.manual_seed(args.seed)
        self.model = SegNet(seg_data.NUM_CLASSES).to(args.device)
        self.net = nn.parallel.DistributedDataParallel(self.model) if world > 1 else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=1e-4)
        total = args.epochs * self.steps_per_epoch()
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, total)))  # noqa: E731  (per step, to 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.epoch, self.history, self.peak_mb, self.step_seconds = 0, [], 0.0, []

    def steps_per_epoch(self):
        n = -(-len(self.data.train.masks) // self.world)
        return -(-n // self.args.batch_size)

    def state_dict(self):
        return dict(
            epoch=self.epoch, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), rng=torch.get_rng_state(), history=self.history,
            peak_mb=self.peak_mb, step_seconds=self.step_seconds,
        )  # fmt: skip

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.peak_mb, self.step_seconds = state["peak_mb"], state["step_seconds"]

    def batches(self, epoch):
        gen = torch.Generator().manual_seed(self.args.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data.train.masks), generator=gen)[self.rank :: self.world]
        for i in range(0, len(order), self.args.batch_size):
            idx = order[i : i + self.args.batch_size]
            yield self.data.train.images[idx], self.data.train.masks[idx], gen

    def loss(self, images, masks, gen):
        a = self.args
        logits, emb = self.net(images.to(a.device))
        masks = masks.to(a.device)
        ce = F.cross_entropy(logits, masks)
        if a.method == "ce":
            return ce
        c, d = logits.shape[1], emb.shape[1]
        logits = logits.permute(0, 2, 3, 1).reshape(len(images), -1, c)
        emb = emb.permute(0, 2, 3, 1).reshape(len(images), -1, d)
        flat_masks = masks.reshape(len(images), -1)
        if a.method == "sampled":  # the same number of random pixels from every canvas
            keys = torch.rand(flat_masks.shape, generator=gen).argsort(dim=1)[:, : a.samples].to(a.device)
            pick = lambda t: torch.gather(t, 1, keys if t.dim() == 2 else keys[..., None].expand(-1, -1, t.shape[2]))  # noqa: E731
            logits, emb, flat_masks = pick(logits), pick(emb), pick(flat_masks)
        contrast = pixel_loss(emb.reshape(-1, d), logits.reshape(-1, c), flat_masks.reshape(-1), a.backend)
        return ce + a.contrast_weight * contrast

    def train_epoch(self, epoch):
        self.net.train()
        total, steps = 0.0, 0
        for images, masks, gen in self.batches(epoch):

            def step(images=images, masks=masks, gen=gen):
                loss = self.loss(images, masks, gen)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                return loss

            if steps == 1:  # one measured step per epoch (after the first, which sets up the allocator)
                _release_freed_memory(self.args.device)
                growth, seconds, loss = peak_growth(step, self.args.device)
                self.peak_mb, self.step_seconds = max(self.peak_mb, growth), self.step_seconds + [seconds]
            else:
                loss = step()
            self.scheduler.step()
            total, steps = total + loss.item(), steps + 1
        return total / max(steps, 1)

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        test, c = self.data.test, seg_data.NUM_CLASSES
        confusion = torch.zeros(c, c, dtype=torch.long)
        for i in range(0, len(test.masks), 64):
            pred = self.model(test.images[i : i + 64].to(self.args.device))[0].argmax(1).cpu()
            confusion += torch.bincount(test.masks[i : i + 64].flatten() * c + pred.flatten(), minlength=c * c).view(
                c, c
            )
        return seg_data.miou_report(confusion, self.data.groups)


def train(args, data=None) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, _ = setup_distributed()
    data = data or seg_data.digit_canvas_lt(args.train_size, args.test_size, args.imbalance)
    out = args.out or Path("runs") / f"seg-{args.method}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = SegTrainer(args, data, rank, world)
    seconds = run_epochs(trainer, args, out / "checkpoint.pt", "train_seg.py", f"{args.method} seed {args.seed}", rank)
    test = trainer.evaluate()
    metrics = dict(
        dataset="digit-canvas-lt", method=args.method, seed=args.seed, epochs=trainer.epoch, world_size=world,
        backend=args.backend, batch_pixels=args.batch_size * seg_data.SIZE**2, note=data.note, groups=data.groups,
        seconds=round(seconds, 1), step_peak_mb=trainer.peak_mb,
        step_seconds=trainer.step_seconds, test=test, history=trainer.history,
    )  # fmt: skip
    metrics["test"].update(step_peak_mb=trainer.peak_mb, seconds=metrics["seconds"])
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    if args.dense_probe:
        print(json.dumps(dense_probe(args.dense_probe, args.budget_bytes, args.device)))
        return 0
    rank0 = int(os.environ.get("RANK", "0")) == 0
    check = None if args.no_budget_check or not rank0 else budget_check(args)  # once, not per torchrun process
    status = 0
    if check and (check["dense"]["status"] == "ok" or check["fused"]["peak_mb"] * 2**20 > args.budget_bytes):
        print("error: at this batch the dense loss fits the budget or the fused one does not", file=sys.stderr)
        status = 1
    if args.method:
        metrics = train(args)
        if rank0:
            print_table({args.method: [metrics["test"]]}, TABLE_KEYS, metrics["note"], ("step_peak_mb", "seconds"))
        return status
    data = seg_data.digit_canvas_lt(args.train_size, args.test_size, args.imbalance)
    rows, _ = compare_over_seeds(
        args,
        "method",
        args.methods,
        lambda run_args: train(run_args, data),
        lambda method, seed: f"seg-{method}-seed{seed}",
    )
    title = f"{data.note}\ntest mIoU % (many / medium / few: digit classes {data.groups}); mean ± std over seeds"
    print_table(rows, TABLE_KEYS, title, ("step_peak_mb", "seconds"))
    if args.out:
        (args.out / "compare.json").write_text(json.dumps(dict(budget_check=check, methods=rows), indent=1))
    if args.record:  # docs/benchmarks.md's segmentation table is drawn from this record (python -m benchmarks --report)
        import uuid

        from benchmarks.machine import facts
        from benchmarks.records import RECORDS, append

        config = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
        append(RECORDS, [dict(kind="segmentation", run=uuid.uuid4().hex[:8], quick=False, dtype="float32",
                              machine=facts(torch.device(args.device)), config=config, note=data.note,
                              groups=data.groups, budget_check=check, methods=rows)])  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
