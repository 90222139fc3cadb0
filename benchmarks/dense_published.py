"""The published losses computed the way their official code computes them: the whole anchors x columns matrix and
its masks, exps and log-probabilities as separate dense tensors ("dense eager"). Written here from the formulas of
GPaCo/LT/losses.py, GPaCo/Seg paco.py and SupContrast/losses.py, step for step, as the baseline of the benchmarks."""

from __future__ import annotations

import torch


def gpaco_dense(
    features,
    labels,
    sup_logits,
    *,
    n_anchors,
    log_prior,
    supt,
    alpha,
    beta,
    gamma,
    temperature,
    base_temperature,
    smooth,
    num_classes,
    ignore_label=None,
):
    """features = [batch; queue] (all rows are contrast columns), labels alike, sup_logits (n_anchors, C)."""
    anchor_labels = labels[:n_anchors].view(-1, 1)
    same = torch.eq(anchor_labels, labels.view(1, -1)).float()
    sims = torch.matmul(features[:n_anchors], features.T) / temperature
    cls = sup_logits if log_prior is None else sup_logits + log_prior
    logits = torch.cat([cls / supt, sims], dim=1)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    device = features.device  # every tensor made here lives where the inputs do (the published code assumes .cuda())
    not_self = torch.scatter(torch.ones_like(same), 1, torch.arange(n_anchors, device=device).view(-1, 1), 0)
    same = same * not_self
    if ignore_label is None:
        one_hot = torch.nn.functional.one_hot(anchor_labels.view(-1), num_classes).float()
    else:  # the pixel loss: one extra class for the ignored label, dropped
        one_hot = torch.nn.functional.one_hot(anchor_labels.view(-1), num_classes + 1)[:, :-1].float()
    targets = smooth / (num_classes - 1) * (1 - one_hot) + (1 - smooth) * one_hot if smooth else one_hot
    pos_mask = torch.cat([targets * beta, same * alpha], dim=1)
    denom_mask = torch.cat([torch.ones(n_anchors, num_classes, device=device), gamma * not_self], dim=1)
    exp_logits = torch.exp(logits) * denom_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-12)
    n_pos = pos_mask.sum(1) if ignore_label is None else pos_mask.sum(1) + 1e-12
    per_anchor = -(temperature / base_temperature) * (pos_mask * log_prob).sum(1) / n_pos
    if ignore_label is None:
        return per_anchor.mean()
    kept = one_hot.sum(1)
    return (kept * per_anchor).sum() / (kept.sum() + 1e-12)


def dense_call(inputs, options):
    """The published call for a workload of tools.workloads."""
    feats, labels = inputs["features"], inputs["labels"]
    if "queue" in inputs:
        feats = torch.cat([feats, inputs["queue"]])
        labels = torch.cat([labels, inputs["queue_labels"]])
    log_prior = None
    if "class_counts" in inputs:
        counts = inputs["class_counts"].float()
        log_prior = torch.log(counts / counts.sum() + 1e-9)
    return gpaco_dense(
        feats,
        labels,
        inputs["center_logits"],
        n_anchors=inputs["num_anchors"],
        log_prior=log_prior,
        supt=options["center_temperature"],
        alpha=options["alpha"],
        beta=options["beta"],
        gamma=options["gamma"],
        temperature=options["temperature"],
        base_temperature=options["temperature"],
        smooth=options.get("label_smoothing", 0.0),
        num_classes=inputs["center_logits"].shape[1],
        ignore_label=options.get("ignore_index"),
    )


def supcon_dense(features, labels, *, temperature=0.07, base_temperature=0.07):
    """SupCon, contrast_mode 'all': features (bsz, n_views, D), views stacked view-major; every row an anchor."""
    bsz, n_views = features.shape[0], features.shape[1]
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = torch.div(torch.matmul(contrast, contrast.T), temperature)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(n_views, n_views)
    rows = bsz * n_views
    not_self = torch.scatter(torch.ones_like(mask), 1, torch.arange(rows, device=features.device).view(-1, 1), 0)
    mask = mask * not_self
    exp_logits = torch.exp(logits) * not_self
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pos = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / torch.where(pos < 1e-6, torch.ones_like(pos), pos)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()
