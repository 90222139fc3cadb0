"""Independent dense oracles, one per published loss, written anchor by anchor from each paper's formula and the
behaviour of its official code (which columns, which weights, which epsilon, which mean). They share nothing with
the library; the reference backend must equal them in float64."""

from __future__ import annotations

import torch


def _paco_family(
    features,
    labels,
    sup_logits,
    *,
    n_anchors,
    class_bias,
    supt,
    alpha,
    beta,
    gamma,
    temperature,
    base_temperature,
    smooth,
    ignored_label=None,
):
    """PaCo / GPaCo / pixel loss for anchors 0..n_anchors-1 against [classes | every row of features].
    Returns the per-anchor losses and a bool 'kept' per anchor (False for ignored pixels)."""
    n, num_classes = features.shape[0], sup_logits.shape[1]
    losses, kept = [], []
    for i in range(n_anchors):
        y = int(labels[i])
        class_logits = sup_logits[i] if class_bias is None else sup_logits[i] + class_bias
        class_logits = class_logits / supt
        sample_logits = (features @ features[i]) / temperature
        shift = torch.max(torch.cat([class_logits, sample_logits])).detach()
        denom = torch.exp(class_logits - shift).sum()
        for j in range(n):
            if j != i:
                denom = denom + gamma * torch.exp(sample_logits[j] - shift)
        log_denom = torch.log(denom + 1e-12)
        numer, n_pos = 0.0, 0.0
        for c in range(num_classes):
            target = (1 - smooth) if c == y else smooth / (num_classes - 1) if num_classes > 1 else 0.0
            numer = numer + beta * target * (class_logits[c] - shift - log_denom)
            n_pos += beta * target
        for j in range(n):
            if j != i and int(labels[j]) == y:
                numer = numer + alpha * (sample_logits[j] - shift - log_denom)
                n_pos += alpha
        keep = ignored_label is None or y != ignored_label
        eps = 1e-12 if ignored_label is not None else 0.0  # the pixel loss divides by (mask.sum() + 1e-12)
        losses.append(-(temperature / base_temperature) * numer / (n_pos + eps) if n_pos > 0 else numer * 0.0)
        kept.append(keep)
    return torch.stack(losses), torch.tensor(kept)


def paco_lt(
    features,
    labels,
    sup_logits,
    cls_num_list,
    *,
    K,
    alpha,
    beta=1.0,
    gamma=1.0,
    supt=1.0,
    temperature=1.0,
    base_temperature=None,
):
    """PaCo, ICCV 2021 (PaCo/LT/losses.py): features = [q; k; queue]; anchors are the (N - K) // 2 rows of q;
    class logits (s + log(prior + 1e-9)) / supt; mean over anchors."""
    counts = torch.tensor(cls_num_list, dtype=features.dtype)
    bias = torch.log(counts / counts.sum() + 1e-9)
    losses, _ = _paco_family(
        features,
        labels,
        sup_logits,
        n_anchors=(features.shape[0] - K) // 2,
        class_bias=bias,
        supt=supt,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        temperature=temperature,
        base_temperature=temperature if base_temperature is None else base_temperature,
        smooth=0.0,
    )
    return losses.mean()


def gpaco_lt(
    features,
    labels,
    sup_logits,
    cls_num_list=None,
    *,
    K,
    alpha,
    beta=1.0,
    gamma=1.0,
    supt=1.0,
    temperature=1.0,
    base_temperature=None,
    smooth=0.0,
):
    """GPaCo, TPAMI 2023 (GPaCo/LT/losses.py): anchors are all N - K batch rows, prior optional, label smoothing."""
    bias = None
    if cls_num_list is not None:
        counts = torch.tensor(cls_num_list, dtype=features.dtype)
        bias = torch.log(counts / counts.sum() + 1e-9)
    losses, _ = _paco_family(
        features,
        labels,
        sup_logits,
        n_anchors=features.shape[0] - K,
        class_bias=bias,
        supt=supt,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        temperature=temperature,
        base_temperature=temperature if base_temperature is None else base_temperature,
        smooth=smooth,
    )
    return losses.mean()


def gpaco_seg(
    features, labels, sup_logits, *, num_classes, alpha, beta=1.0, gamma=1.0, temperature=1.0, base_temperature=None
):
    """GPaCo pixel loss (GPaCo/Seg paco.py): every pixel an anchor, class logits used as given (no supt),
    label == num_classes ignored; mean over kept pixels (0 when none is kept)."""
    losses, kept = _paco_family(
        features,
        labels,
        sup_logits,
        n_anchors=features.shape[0],
        class_bias=None,
        supt=1.0,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        temperature=temperature,
        base_temperature=temperature if base_temperature is None else base_temperature,
        smooth=0.0,
        ignored_label=num_classes,
    )
    kept = kept.to(losses.dtype)
    return (losses * kept).sum() / (kept.sum() + 1e-12)


def supcon(features, labels=None, *, temperature=0.07, base_temperature=0.07, contrast_mode="all"):
    """SupCon (Khosla et al. 2020): views stacked view-major, each anchor against every other stacked row,
    log of the plain sum (no epsilon), anchors without positives add 0, mean over anchors."""
    bsz, n_views = features.shape[:2]
    rows = [features[b, v] for v in range(n_views) for b in range(bsz)]
    row_label = [int(labels[b]) if labels is not None else b for _ in range(n_views) for b in range(bsz)]
    n_anchor = len(rows) if contrast_mode == "all" else bsz
    losses = []
    for i in range(n_anchor):
        logits = torch.stack([rows[i] @ r for r in rows]) / temperature
        others = [j for j in range(len(rows)) if j != i]
        log_denom = torch.logsumexp(logits[others], dim=0)
        pos = [j for j in others if row_label[j] == row_label[i]]
        if pos:
            mean_pos = torch.stack([logits[j] - log_denom for j in pos]).mean()
            losses.append(-(temperature / base_temperature) * mean_pos)
        else:
            losses.append(logits.sum() * 0.0)
    return torch.stack(losses).mean()


def psc(features, labels, prototypes, *, temperature=0.1, exclude_positive_class=True):
    """PSC (Wang et al. 2021): -log( exp(<z, p_y>/t) / sum_{c != y} exp(<z, p_c>/t) ) on normalized z and p."""
    z = features / features.norm(dim=1, keepdim=True)
    p = prototypes / prototypes.norm(dim=1, keepdim=True)
    losses = []
    for i in range(z.shape[0]):
        y = int(labels[i])
        logits = (p @ z[i]) / temperature
        denom_cols = [c for c in range(p.shape[0]) if c != y or not exclude_positive_class]
        losses.append(torch.logsumexp(logits[denom_cols], dim=0) - logits[y])
    return torch.stack(losses).mean()


def long_tailed_counts(num_classes, n_max, imbalance):
    """n_i = int(n_max * f^(i / (C - 1))) with f = 1 / imbalance, the published long-tailed CIFAR profile."""
    return [int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1))) for i in range(num_classes)]
