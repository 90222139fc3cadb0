"""Thin long-tailed training driver on gpaco_kernels: GPaCo / PaCo / SupCon and PSC hybrids / CE / balanced softmax.

    python python/train.py                       # the main job: GPaCo vs CE vs balanced softmax on digits-lt
                                                 # (imbalance 50), 3 seeds each, side-by-side accuracy table
    python python/train.py --loss gpaco --dataset digits-lt --epochs 150 --out runs/gpaco
    python python/train.py --loss paco --dataset cifar100-lt --data-dir ~/data --imbalance-factor 100 --out runs/x
    torchrun --nproc_per_node 2 python/train.py --loss gpaco --out runs/ddp      # gloo on CPU, nccl on GPUs

A run folder (--out) holds checkpoint.pt (written atomically after every epoch; --resume continues from it with
model, optimizer, schedule, queue, prototypes and RNG state restored) and metrics.json (overall, many/medium/few and
per-class test accuracy). Uses gpaco_kernels as any user would: `--backend` picks its backend (default auto).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lt_data  # noqa: E402
from lt_models import LTNet  # noqa: E402
from run_utils import compare_over_seeds, print_table, run_epochs, setup_distributed  # noqa: E402

import gpaco_kernels as gk  # noqa: E402

LOSSES = ("ce", "balanced-softmax", "supcon-hybrid", "psc-hybrid", "paco", "gpaco")
MAIN_JOB = ("gpaco", "ce", "balanced-softmax")
TABLE_KEYS = ("overall", "many", "medium", "few")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits-lt", choices=["digits-lt", "cifar10-lt", "cifar100-lt"])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--loss", choices=LOSSES, help="one run with this loss (default: the main-job comparison)")
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(MAIN_JOB), help="compared in the main job")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0; --full: 0 1 2)")
    p.add_argument("--full", action="store_true", help="the main job over seeds 0, 1, 2 (docs/training.md's table)")
    p.add_argument("--epochs", type=int, default=None, help="default: 150 for digits-lt, 200 for CIFAR")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--imbalance-factor", type=float, default=None, help="default: 50 for digits-lt, 100 for CIFAR")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.05, help="(G)PaCo: weight of sample positives")
    p.add_argument("--beta", type=float, default=1.0, help="(G)PaCo: weight of the class positive")
    p.add_argument("--gamma", type=float, default=1.0, help="(G)PaCo: weight of samples in the denominator")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--center-temperature", type=float, default=1.0, help="(G)PaCo: temperature of the class logits")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="gpaco: label smoothing of the class block")
    p.add_argument("--queue-size", type=int, default=None, help="(G)PaCo queue; default 256 for digits, 4096 CIFAR")
    p.add_argument("--momentum", type=float, default=0.99, help="paco: momentum of the key encoder")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<dataset>-<loss>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="auto", help="gpaco_kernels backend")
    p.add_argument("--stop-after-epoch", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a stop
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    digits = args.dataset == "digits-lt"
    args.epochs = args.epochs or (150 if digits else 200)
    # The quick main job (make demo, about 1.5 minutes on 2 cores) runs one seed; --full the three of the table.
    args.seeds = args.seeds or ([0, 1, 2] if args.full else [0])
    args.imbalance_factor = args.imbalance_factor or (50.0 if digits else 100.0)
    args.queue_size = args.queue_size or (256 if digits else 4096)
    for name in ("epochs", "batch_size", "queue_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Training


class Trainer:
    def __init__(self, args, data: lt_data.LongTailed, rank=0, world=1, group=None):
        self.args, self.data, self.rank, self.world, self.group = args, data, rank, world, group
        torch.manual_seed(args.seed)
        self.model = LTNet(args.dataset, data.num_classes)
        self.net = nn.parallel.DistributedDataParallel(self.model) if world > 1 else self.model
        self.counts = data.counts
        self.log_prior = torch.log(self.counts.float() / self.counts.sum())
        params = list(self.model.parameters())
        self.key_model = self.queue = self.psc = None
        if args.loss == "paco":  # the momentum key encoder of MoCo/PaCo
            self.key_model = copy.deepcopy(self.model).requires_grad_(False)
        if args.loss in ("paco", "gpaco"):
            self.queue = gk.MomentumQueue(args.queue_size, 128, gather=world > 1, process_group=group)
            self.paco = gk.FusedPaCoLoss(
                alpha=args.alpha, beta=args.beta, gamma=args.gamma, temperature=args.temperature,
                center_temperature=args.center_temperature,
                label_smoothing=args.label_smoothing if args.loss == "gpaco" else 0.0,
                class_counts=self.counts, backend=args.backend, process_group=group,
            )  # fmt: skip
        if args.loss == "supcon-hybrid":
            self.supcon = gk.SupConLoss(temperature=args.temperature, backend=args.backend, process_group=group)
        if args.loss == "psc-hybrid":
            self.psc = gk.PSCLoss(data.num_classes, 128, temperature=args.temperature, backend=args.backend)
            params += list(self.psc.parameters())
        self.optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
        steps = self.steps_per_epoch()

        def schedule(step):  # linear warm-up, then cosine to 0, per step
            warm = args.warmup_epochs * steps
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, args.epochs * steps - warm)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.epoch = 0  # epochs completed
        self.history = []

    def steps_per_epoch(self):
        n = math.ceil(len(self.data.train.labels) / self.world)
        return math.ceil(n / self.args.batch_size)

    def state_dict(self):
        return dict(
            epoch=self.epoch,
            model=self.model.state_dict(),
            key_model=None if self.key_model is None else self.key_model.state_dict(),
            queue=None if self.queue is None else self.queue.state_dict(),
            psc=None if self.psc is None else self.psc.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=torch.get_rng_state(),
            history=self.history,
            args={k: str(v) for k, v in vars(self.args).items()},
        )

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        for name in ("key_model", "queue", "psc"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], state["history"]

    def batches(self, epoch):
        """This rank's batches of one epoch: a permutation drawn from (seed, epoch), so a resumed run sees the same
        order, sharded round-robin over ranks; augmentation draws from the same generator."""
        gen = torch.Generator().manual_seed(self.args.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data.train.labels), generator=gen)[self.rank :: self.world]
        for i in range(0, len(order), self.args.batch_size):
            idx = order[i : i + self.args.batch_size]
            yield self.data.train.images[idx], self.data.train.labels[idx], gen

    def loss(self, images, labels, gen, epoch):
        a = self.args
        v1 = lt_data.augment(images, gen)
        if a.loss in ("ce", "balanced-softmax"):
            logits, _ = self.net(v1)
            return F.cross_entropy(logits + (self.log_prior if a.loss == "balanced-softmax" else 0), labels)
        v2 = lt_data.augment(images, gen)
        b = len(labels)
        if a.loss == "paco":
            logits, q = self.net(v1)
            with torch.no_grad():
                _, k = self.key_model(v2)
            queue, queue_labels = self.queue.get()
            loss = self.paco(
                torch.cat([q, k]), torch.cat([labels, labels]), num_anchors=b, center_logits=logits,
                queue=queue.clone(), queue_labels=queue_labels.clone(),
            )  # fmt: skip
            self.queue.enqueue(k, labels)
            return loss
        logits, z = self.net(torch.cat([v1, v2]))
        if a.loss == "gpaco":
            queue, queue_labels = self.queue.get()
            loss = self.paco(
                z, torch.cat([labels, labels]), center_logits=logits, queue=queue.clone(),
                queue_labels=queue_labels.clone(),
            )  # fmt: skip
            self.queue.enqueue(z[b:].detach(), labels)
            return loss
        # Hybrid networks (Wang et al. 2021): contrastive on the projection, CE on the classifier, curriculum a.
        weight = 1.0 - (epoch / a.epochs) ** 2
        ce = F.cross_entropy(logits[:b], labels)
        if a.loss == "supcon-hybrid":
            contrastive = self.supcon(torch.stack([z[:b], z[b:]], dim=1), labels)
        else:
            contrastive = self.psc(z, torch.cat([labels, labels]))
        return weight * contrastive + (1.0 - weight) * ce

    @torch.no_grad()
    def momentum_update(self):
        if self.key_model is not None:
            for k, q in zip(self.key_model.parameters(), self.model.parameters()):
                k.mul_(self.args.momentum).add_(q.detach(), alpha=1 - self.args.momentum)
            for k, q in zip(self.key_model.buffers(), self.model.buffers()):
                k.copy_(q)

    def train_epoch(self, epoch):
        self.net.train()
        total, steps = 0.0, 0
        for images, labels, gen in self.batches(epoch):
            loss = self.loss(images, labels, gen, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.momentum_update()
            total, steps = total + loss.item(), steps + 1
        return total / max(steps, 1)

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        test = self.data.test
        preds = torch.cat([self.model(test.images[i : i + 512])[0].argmax(1) for i in range(0, len(test.labels), 512)])
        return accuracy_report(preds, test.labels, self.counts, self.data.many_above, self.data.few_below)


def accuracy_report(preds, labels, counts, many_above, few_below) -> dict:
    """Overall and per-class accuracy (%), and the mean per-class accuracy over many/medium/few-shot classes."""
    per_class = []
    for c in range(len(counts)):
        mask = labels == c
        per_class.append(100.0 * (preds[mask] == c).float().mean().item() if mask.any() else float("nan"))
    groups = {
        "many": [a for a, n in zip(per_class, counts.tolist()) if n > many_above],
        "medium": [a for a, n in zip(per_class, counts.tolist()) if few_below <= n <= many_above],
        "few": [a for a, n in zip(per_class, counts.tolist()) if n < few_below],
    }
    report = {"overall": 100.0 * (preds == labels).float().mean().item()}
    report.update({k: (statistics.fmean(v) if v else float("nan")) for k, v in groups.items()})
    report["classes"] = {k: len(v) for k, v in groups.items()}
    report["per_class"] = per_class
    return report


def train(args) -> dict:
    """One run; returns its metrics (also written to <out>/metrics.json)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, group = setup_distributed()
    data = lt_data.load(args.dataset, args.data_dir, args.imbalance_factor)
    out = args.out or Path("runs") / f"{args.dataset}-{args.loss}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, data, rank, world, group)
    seconds = run_epochs(
        trainer, args, out / "checkpoint.pt", "train.py", f"{args.loss} seed {args.seed}", rank,
        epoch_facts=lambda: dict(lr=trainer.scheduler.get_last_lr()[0]),
    )  # fmt: skip
    metrics = dict(
        dataset=args.dataset, loss=args.loss, seed=args.seed, epochs=trainer.epoch, world_size=world,
        backend=args.backend, imbalance_factor=args.imbalance_factor,
        train_counts=data.counts.tolist(), thresholds=data.threshold_note,
        seconds=round(seconds, 1), test=trainer.evaluate(), history=trainer.history,
    )  # fmt: skip
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    if args.loss:
        metrics = train(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print_table({args.loss: [metrics["test"]]}, TABLE_KEYS, metrics["thresholds"])
        return
    # The main job: each loss over the seeds, then one table.
    rows, last = compare_over_seeds(
        args, "loss", args.losses, train, lambda loss, seed: f"{args.dataset}-{loss}-seed{seed}"
    )
    title = f"{args.dataset}, imbalance factor {args.imbalance_factor:g}, test accuracy %; {last['thresholds']}"
    print_table(rows, TABLE_KEYS, title)
    if args.out:
        (args.out / "compare.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
