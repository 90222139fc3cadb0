"""Functional losses. Each checks its arguments, maps them to the one op (ops/) and reduces.

fused_paco_loss    the general form: PaCo, GPaCo, the GPaCo pixel loss, and anything between
fused_supcon_loss  SupCon / SimCLR in the (bsz, n_views, D) layout of Khosla et al.
fused_psc_loss     the prototypical supervised contrastive loss of Wang et al. 2021
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections import OrderedDict

import torch

from . import _checks as check
from .distributed import ddp_scale, gather_columns, gather_rows
from .ops import BACKEND_NAMES, ContrastInputs, LossConfig, resolve_backend
from .ops import loss as op_loss
from .ops.spec import compute_dtype
from .options import PACO, PSC, SUPCON

REDUCTIONS = ("mean", "sum", "none")

# Priors computed from class counts, most recent last: a training loop passes the same counts on every step, and the
# check and the log prior (several launches, and a copy to the device for a list) then run once.
_PRIORS: OrderedDict = OrderedDict()
PRIOR_CACHE_SIZE = 16
# Priors a CUDA graph captured from the cache: a replay reads them, so they are never evicted (and so never freed).
_CAPTURED_PRIORS: dict = {}


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def prior_bias(class_counts, num_classes: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """log(n_c / sum(n) + 1e-9) on device in dtype, checked and computed once per counts: a tensor is known by its
    identity and version (changed in place, it is checked and computed again), a sequence of numbers by its values.

    Under CUDA graph capture a cached prior would be baked into the graph: counts given as a tensor on the device are
    then computed inside the graph instead (each replay reads the counts as they are, in place changes included, into
    memory the graph owns); counts the graph cannot read (a list, a CPU tensor) take the prior an eager step cached,
    kept for as long as the process lives (_CAPTURED_PRIORS), so that an eviction never frees what a replay reads."""
    capturing = _capturing(device)
    if capturing and isinstance(class_counts, torch.Tensor) and class_counts.device == device:
        return _log_prior(class_counts, num_classes, device, dtype)
    key = None
    if not torch.compiler.is_compiling():
        if isinstance(class_counts, torch.Tensor):
            key = ("tensor", id(class_counts), class_counts._version, device, dtype, num_classes)
        elif check.is_number_sequence(class_counts):
            key = ("values", tuple(class_counts), device, dtype, num_classes)
    hit = _PRIORS.get(key) if key is not None else None
    if hit is not None and (hit[0] is None or hit[0]() is class_counts):
        _PRIORS.move_to_end(key)
        if capturing:
            _CAPTURED_PRIORS[key] = hit
        return hit[1]
    if capturing:
        raise ValueError(
            "class_counts given as a list or a CPU tensor cannot be copied to the GPU during CUDA graph capture: run "
            "one step with these counts before capturing (their prior is then kept on the device), or pass them as a "
            "tensor on the features' device"
        )
    bias = _log_prior(class_counts, num_classes, device, dtype)
    if key is not None:
        source = weakref.ref(class_counts) if isinstance(class_counts, torch.Tensor) else None
        _PRIORS[key] = (source, bias)
        while len(_PRIORS) > PRIOR_CACHE_SIZE:
            _PRIORS.popitem(last=False)
    return bias


def _log_prior(class_counts, num_classes: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    counts = check.class_counts(class_counts, num_classes).to(device)
    prior = counts.to(dtype)
    return torch.log(prior / prior.sum() + 1e-9)


def fused_paco_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_anchors: int | None = None,
    queue: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    center_logits: torch.Tensor | None = None,
    centers: torch.Tensor | None = None,
    class_counts=None,
    alpha: float = PACO.alpha,
    beta: float = PACO.beta,
    gamma: float = PACO.gamma,
    temperature: float = PACO.temperature,
    base_temperature: float | None = PACO.base_temperature,
    center_temperature: float = PACO.center_temperature,
    label_smoothing: float = PACO.label_smoothing,
    exclude_positive_class: bool = PACO.exclude_positive_class,
    ignore_index: int = PACO.ignore_index,
    normalize: bool = PACO.normalize,
    reduction: str = PACO.reduction,
    backend: str = PACO.backend,
    process_group=None,
) -> torch.Tensor:
    """Parametric contrastive loss over [class block | batch | queue] without the anchors x columns matrix.

    Args:
        features: (N, D) batch embeddings (all views); rows 0..num_anchors-1 are the anchors; every row is also a
            contrast column ("batch" column) and receives a gradient from both sides.
        labels: (N,) integer labels of features. Anchors labelled ``ignore_index`` add no loss and are not counted,
            but stay in the contrast set.
        num_anchors: A, default N.
        queue, queue_labels: (K, D) and (K,) momentum queue; contrast columns that never receive a gradient.
        center_logits: (A, C) class logits S (PaCo's ``sup_logits``), or
        centers: (C, D) class centers W, with logits <f_i, w_c> (gradient flows to W). At most one of the two.
        class_counts: (C,) training-set counts; adds log(prior + 1e-9) to the class logits (rebalancing).
        alpha, beta, gamma: weight of sample positives, of the class positive, and of samples in the denominator.
        temperature, center_temperature: t for samples, tc for the class block; base_temperature tb (default t)
            scales the loss by t / tb.
        label_smoothing: eps; the class positive weight becomes 1 - eps and eps / (C - 1) goes to each other class.
        exclude_positive_class: leave the anchor's own class out of the denominator (PSC).
        normalize: L2-normalize features, queue and centers first (with gradient through the normalization).
        reduction: 'mean' (over counted anchors; anchors without positives count and add 0), 'sum' or 'none'
            (the (A,) per-anchor losses, 0 for ignored anchors).
        backend: 'auto', 'reference', 'torch' (and compiled backends when installed).
        process_group: a torch.distributed group (e.g. ``torch.distributed.group.WORLD``): the batch rows and labels
            of every rank in it become contrast columns (anchors stay local; gradients reach each rank's own rows).
            A collective: every rank must call it. 'mean' and 'sum' then return this rank's share, scaled so that
            averaging over ranks (as DDP does with gradients) gives the loss of one process over the global batch;
            'none' returns this rank's per-anchor losses.

    Dtypes: the float inputs (features, queue, center_logits, centers) may differ in dtype, as under autocast, where
    the class logits come out of a Linear in half precision while the features are float32. The loss computes in
    their promotion (bfloat16 logits with float32 features: float32), whether or not autocast is on (it is turned off
    inside the loss, so float32 inputs keep float32 products); per-anchor statistics are float32 for half-precision
    inputs. The loss comes back in that dtype and each gradient in its input's dtype.

    The per-anchor loss matches the official PaCo/GPaCo code to rounding, including its 1e-12 inside the log and
    its max over every column (masked ones too); where the published code divides 0 by 0 (an anchor with no
    positive at all), this loss is 0.
    """
    return _paco_loss(**locals())  # every argument, by name: the parameters are _paco_loss's options


def fused_supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = SUPCON.temperature,
    base_temperature: float = SUPCON.base_temperature,
    contrast_mode: str = SUPCON.contrast_mode,
    ignore_index: int = SUPCON.ignore_index,
    normalize: bool = SUPCON.normalize,
    reduction: str = SUPCON.reduction,
    backend: str = SUPCON.backend,
    process_group=None,
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on features of shape (bsz, n_views, ...), flattened to (bsz, n_views, D).

    The views are stacked view-major (all of view 0, then view 1, ...), as in the published code; with
    contrast_mode='all' every row is an anchor, with 'one' only view 0. labels=None is SimCLR (each sample its own
    class). Like the published code there is no 1e-12 inside the log, and anchors without positives add 0 to the
    mean. reduction='none' returns the per-anchor losses in the stacked order. process_group: as in
    fused_paco_loss (with labels=None, the SimCLR labels are numbered across ranks).
    """
    check.tensor("features", features, floating=True)
    if features.dim() < 3:
        raise ValueError(
            f"features must have shape (bsz, n_views, ...) with at least 3 dims, got {tuple(features.shape)}"
        )
    check.choice("contrast_mode", contrast_mode, ("all", "one"))
    bsz, n_views = features.shape[0], features.shape[1]
    if labels is None:
        offset = 0
        if process_group is not None:  # each sample its own class across all ranks
            sizes = gather_rows(torch.tensor([bsz], device=features.device), process_group)
            offset = int(sizes[: torch.distributed.get_rank(process_group)].sum())
        labels = torch.arange(offset, offset + bsz, device=features.device)
    else:
        check.tensor("labels", labels, floating=False)
        check.shape("labels", labels, (bsz,), lambda: f"(bsz,) = ({bsz},)")
    stacked = features.reshape(bsz, n_views, -1).transpose(0, 1).reshape(bsz * n_views, -1)
    return _paco_loss(
        stacked,
        labels.repeat(n_views),
        num_anchors=bsz * n_views if contrast_mode == "all" else bsz,
        temperature=temperature,
        base_temperature=base_temperature,
        ignore_index=ignore_index,
        normalize=normalize,
        reduction=reduction,
        backend=backend,
        lse_eps=0.0,
        process_group=process_group,
    )


def fused_psc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    temperature: float = PSC.temperature,
    exclude_positive_class: bool = PSC.exclude_positive_class,
    normalize: bool = PSC.normalize,
    ignore_index: int = PSC.ignore_index,
    reduction: str = PSC.reduction,
    backend: str = PSC.backend,
) -> torch.Tensor:
    """Prototypical supervised contrastive loss (Wang et al. 2021): each sample against C learnable prototypes,

        L_i = -log( exp(<z_i, p_y>/t) / sum_{c != y} exp(<z_i, p_c>/t) )

    with z and p L2-normalized (normalize=True). As published, the denominator runs over the other C - 1
    prototypes; exclude_positive_class=False includes the own class (a cosine-softmax classifier). Other batch
    samples are not contrast columns. features (N, D), labels (N,), prototypes (C, D).
    """
    check.tensor("prototypes", prototypes, floating=True)
    if exclude_positive_class and prototypes.dim() == 2 and prototypes.shape[0] < 2:
        raise ValueError(
            f"prototypes must have at least 2 rows when exclude_positive_class=True (the denominator runs over the "
            f"other classes), got {tuple(prototypes.shape)}"
        )
    return _paco_loss(
        features,
        labels,
        centers=prototypes,
        arg_names={"centers": "prototypes"},
        alpha=0.0,
        beta=1.0,
        gamma=0.0,
        temperature=temperature,
        base_temperature=temperature,
        center_temperature=temperature,
        exclude_positive_class=exclude_positive_class,
        ignore_index=ignore_index,
        normalize=normalize,
        reduction=reduction,
        backend=backend,
        lse_eps=0.0,
        batch_columns=False,
    )


def _paco_loss(
    features,
    labels,
    *,
    normalize=PACO.normalize,
    reduction=PACO.reduction,
    lse_eps=1e-12,
    batch_columns=True,
    process_group=None,
    **options,
):
    """fused_paco_loss plus the two choices only the other wrappers make: lse_eps (SupCon and PSC have no 1e-12
    inside the log) and batch_columns (PSC contrasts with prototypes only)."""
    if process_group is not None:
        # Checked here, on this rank's tensors: after the gather the shapes in an error would be the global ones.
        check.tensor("features", features, floating=True)
        check.shape("features", features, (None, None), "(N, D)")
        check.tensor("labels", labels, floating=False)
        check.shape("labels", labels, (features.shape[0],), lambda: f"(N,) = ({features.shape[0]},) to match features")
        options.setdefault("num_anchors", None)
        if options["num_anchors"] is None:
            options["num_anchors"] = features.shape[0]
        features, labels = gather_columns(features, labels, process_group)
    distributed = process_group is not None and reduction != "none"
    with _autocast_off(features):
        x, cfg, backend_name = canonicalize(
            features,
            labels,
            reduction="none" if distributed else reduction,
            normalize=normalize,
            lse_eps=lse_eps,
            batch_columns=batch_columns,
            **options,
        )
        loss = op_loss(x, cfg, backend_name)
    if distributed:  # this rank's share of the global mean or sum (see fused_paco_loss)
        counted = (x.labels[: cfg.num_anchors] != cfg.ignore_index).sum()
        return ddp_scale(loss.sum(), counted, reduction, process_group).to(loss.dtype)
    return loss


def common_dtype(*tensors) -> torch.dtype:
    """The dtype the loss computes in: the promotion of its float inputs' dtypes (None entries skipped)."""
    dtypes = [t.dtype for t in tensors if t is not None]
    if all(d == dtypes[0] for d in dtypes):
        return dtypes[0]  # the common case, without a torch call (a launch counter would count it)
    return functools.reduce(torch.promote_types, dtypes)


def _autocast_off(features):
    """Autocast would run the backends' products in its half dtype whatever the inputs are: the loss computes in
    the dtype of its inputs instead (common_dtype), with float32 statistics, as autocast does for its own losses.
    (features not a tensor: canonicalize refuses it.)"""
    device = getattr(features, "device", None)
    if isinstance(device, torch.device) and torch.amp.is_autocast_available(device.type):
        if torch.is_autocast_enabled(device.type):
            return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def canonicalize(
    features,
    labels,
    *,
    num_anchors=None,
    queue=None,
    queue_labels=None,
    center_logits=None,
    centers=None,
    class_counts=None,
    alpha=PACO.alpha,
    beta=PACO.beta,
    gamma=PACO.gamma,
    temperature=PACO.temperature,
    base_temperature=PACO.base_temperature,
    center_temperature=PACO.center_temperature,
    label_smoothing=PACO.label_smoothing,
    exclude_positive_class=PACO.exclude_positive_class,
    ignore_index=PACO.ignore_index,
    reduction=PACO.reduction,
    backend=PACO.backend,
    normalize=PACO.normalize,
    lse_eps=1e-12,
    batch_columns=True,
    batch_column_grad=True,
    arg_names=None,
):
    """Check every argument and build the op's (ContrastInputs, LossConfig, backend name). Nothing is modified.
    arg_names: {name here: the name the caller's user passed} (fused_psc_loss's prototypes are centers here, the
    published modules' sup_logits are center_logits), so that an error names what the user wrote."""
    names = {k: k for k in ("features", "labels", "queue", "queue_labels", "center_logits", "centers")}
    names.update(arg_names or {})
    feat_, lab_, logit_, cent_ = names["features"], names["labels"], names["center_logits"], names["centers"]
    q_, ql_ = names["queue"], names["queue_labels"]
    check.tensor(feat_, features, floating=True)
    check.shape(feat_, features, (None, None), "(N, D)")
    n, dim = features.shape
    if n == 0 or dim == 0:
        raise ValueError(f"{feat_} must have at least one row and one column, got {tuple(features.shape)}")
    check.tensor(lab_, labels, floating=False)
    check.shape(lab_, labels, (n,), lambda: f"(N,) = ({n},) to match {feat_}")
    check.same_device(lab_, labels, feat_, features)

    if num_anchors is None:
        num_anchors = n
    check.integer("num_anchors", num_anchors)
    if not 1 <= num_anchors <= n:
        raise ValueError(f"num_anchors must be in [1, N] = [1, {n}], got {num_anchors}")

    if (queue is None) != (queue_labels is None):
        given, missing = (q_, ql_) if queue is not None else (ql_, q_)
        raise ValueError(f"{given} was given without {missing}; pass both or neither")
    if queue is not None and queue_labels is not None and queue.dim() == 2 and queue.shape[0] == 0:
        check.shape(ql_, queue_labels, (0,), lambda: f"(K,) = (0,) to match {q_}")
        queue = queue_labels = None  # an empty queue (a MomentumQueue before its first enqueue) adds no columns
    if queue is not None:
        check.tensor(q_, queue, floating=True)
        check.shape(q_, queue, (None, dim), lambda: f"(K, D) with D = {dim} as in {feat_}")
        check.same_device(q_, queue, feat_, features)
        check.tensor(ql_, queue_labels, floating=False)
        check.shape(ql_, queue_labels, (queue.shape[0],), lambda: f"(K,) = ({queue.shape[0]},) to match {q_}")
        check.same_device(ql_, queue_labels, feat_, features)

    if center_logits is not None and centers is not None:
        raise ValueError(f"pass {logit_} or {cent_}, not both ({cent_} W define the logits F W^T themselves)")
    num_classes = 0
    if center_logits is not None:
        check.tensor(logit_, center_logits, floating=True)
        check.shape(logit_, center_logits, (num_anchors, None), lambda: f"(num_anchors, C) = ({num_anchors}, C)")
        check.same_device(logit_, center_logits, feat_, features)
        num_classes = center_logits.shape[1]
    if centers is not None:
        check.tensor(cent_, centers, floating=True)
        check.shape(cent_, centers, (None, dim), lambda: f"(C, D) with D = {dim} as in {feat_}")
        check.same_device(cent_, centers, feat_, features)
        num_classes = centers.shape[0]
    has_classes = center_logits is not None or centers is not None
    if has_classes and num_classes == 0:
        raise ValueError(f"the class block is empty: {logit_ if center_logits is not None else cent_} has 0 classes")

    temperature = check.positive("temperature", temperature)
    center_temperature = check.positive("center_temperature", center_temperature)
    base_temperature = temperature if base_temperature is None else check.positive("base_temperature", base_temperature)
    alpha = check.non_negative("alpha", alpha)
    beta = check.non_negative("beta", beta)
    gamma = check.non_negative("gamma", gamma)
    label_smoothing = check.non_negative("label_smoothing", label_smoothing)
    if label_smoothing >= 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing > 0 and num_classes < 2:
        raise ValueError(f"label_smoothing > 0 needs a class block with at least 2 classes, got {num_classes} classes")
    check.flag("exclude_positive_class", exclude_positive_class)
    if exclude_positive_class and not has_classes:
        raise ValueError("exclude_positive_class=True needs a class block (center_logits or centers)")
    check.integer("ignore_index", ignore_index)
    check.choice("reduction", reduction, REDUCTIONS)
    check.flag("normalize", normalize)
    check.choice("backend", backend, BACKEND_NAMES)

    # Mixed float dtypes (under autocast: half-precision class logits from a Linear, float32 features concatenated
    # with a float32 queue) compute in their promoted dtype, as torch.cat would give; .to() sends each gradient back
    # in its input's dtype.
    dtype = common_dtype(features, queue, center_logits, centers)
    features, queue, center_logits, centers = (
        None if t is None else t.to(dtype) for t in (features, queue, center_logits, centers)
    )

    center_bias = None
    if class_counts is not None:
        if not has_classes:
            raise ValueError("class_counts was given without a class block (center_logits or centers)")
        # In the compute dtype of the statistics (float32 for half precision), as the published code computes it.
        center_bias = prior_bias(class_counts, num_classes, features.device, compute_dtype(dtype))

    backend_name = resolve_backend(backend, features.device.type, dtype, features.shape[1], feat_)
    # The Triton kernels check label ranges as they load labels (no sync); elsewhere the check reads values where
    # that is free (CPU tensors) and is queued on the device otherwise (_checks: value checks).
    if has_classes and (backend_name != "triton" or check.sync_checks()):
        on_host = check.reads_values(features.device)
        check.label_range(lab_, labels, num_classes, ignore_index, on_host=on_host)
        if queue_labels is not None:
            check.label_range(ql_, queue_labels, num_classes, ignore_index, on_host=on_host)
    cfg = LossConfig(
        num_anchors=num_anchors,
        temperature=temperature,
        center_temperature=center_temperature,
        base_temperature=base_temperature,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        label_smoothing=label_smoothing,
        exclude_positive_class=exclude_positive_class,
        ignore_index=ignore_index,
        num_classes=num_classes,
        batch_columns=batch_columns,
        lse_eps=lse_eps,
        batch_column_grad=batch_column_grad,
        normalize=normalize,
        reduction=reduction,
    )
    x = ContrastInputs(
        features=features,
        labels=labels.long(),
        queue=queue,
        queue_labels=None if queue_labels is None else queue_labels.long(),
        center_logits=center_logits,
        centers=centers,
        center_bias=center_bias,
    )
    return x, cfg, backend_name
