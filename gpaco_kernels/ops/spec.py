"""The canonical inputs of the one op and the loss algebra every backend shares, written once.

The functional layer turns every public loss into a `ContrastInputs` (tensors) and a `LossConfig` (the user's
scalars), after validation. `LossConfig.op_params()` derives the op's scalar arguments (`OpParams`): the class weights
(beta_on, beta_off) and the loss scale -(t / tb) are computed there and nowhere else. Below the op boundary every
backend (reference, torch, cpu, triton) works from `OpParams` and the functions of this module:

    finalize_loss          the per-anchor loss from (sum w l, P, lse)
    gradient_coefficients  the per-anchor factors (a, 1/P) of G = a (w / P - d exp(l - lse))
    class_block_weights, sample_weights   w and d of a tile of columns (the torch and reference backends; the
                           compiled kernels compare labels inside their tiles with the same rules)
    label_groups, label_sums   the groups of equal labels and their per-group sums, from which the Triton kernels
                           take the sample positives on large steps instead of comparing labels per pair

See docs of fused_paco_loss for the formula: for anchor i and contrast columns J = [class block | batch | queue],
lse_i = m_i + log(sum_J d exp(l - m_i) + lse_eps), L_i = -(t/tb) (sum_J w l - P_i lse_i) / P_i.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class OpParams:
    """The op's scalar arguments, in the order of its schema (ops/op.py). Everything a kernel needs; nothing in it is
    derived again below the op."""

    num_anchors: int  # A: rows 0..A-1 of features are the anchors
    temperature: float  # t, for batch and queue columns
    center_temperature: float  # tc, for the class block
    alpha: float  # weight of sample positives (batch and queue)
    beta_on: float  # positive weight of the anchor's own class
    beta_off: float  # positive weight of each other class (label smoothing spread over C - 1 classes)
    gamma: float  # denominator weight of batch and queue columns
    loss_scale: float  # -(t / tb)
    exclude_positive_class: bool  # own class out of the denominator (PSC)
    ignore_index: int  # anchors with this label add no loss and are not counted
    batch_columns: bool  # False: batch rows are not contrast columns (PSC)
    lse_eps: float  # lse = m + log(Z + lse_eps); the published PaCo code adds 1e-12, SupCon adds nothing
    batch_column_grad: bool  # False: batch rows take a gradient as anchors only, their columns act as detached
    # copies (a memory of the current step, as pytorch-metric-learning's CrossBatchMemory holds it)
    normalize: bool  # L2-normalize features, queue and centers inside the op (the gradient chains through it)
    reduction: str  # "none": the (A,) per-anchor losses; "sum" / "mean" (over the counted anchors): one number

    @property
    def reduced(self) -> bool:
        """The op returns one number: one upstream gradient for all anchors."""
        return self.reduction != "none"

    def astuple(self) -> tuple:
        # Not dataclasses.astuple: it deep-copies every field, a measurable cost on every call of the op.
        return tuple(getattr(self, name) for name in _OP_PARAM_NAMES)


_OP_PARAM_NAMES = tuple(f.name for f in fields(OpParams))


@dataclass(frozen=True)
class LossConfig:
    """The user's scalars after validation (functional.canonicalize)."""

    num_anchors: int
    temperature: float
    center_temperature: float
    base_temperature: float  # tb; the loss is scaled by t / tb
    alpha: float
    beta: float  # weight of the class positive
    gamma: float
    label_smoothing: float  # eps, spread over the C - 1 other classes
    exclude_positive_class: bool
    ignore_index: int
    num_classes: int = 0  # C, 0 without a class block
    batch_columns: bool = True
    lse_eps: float = 1e-12
    batch_column_grad: bool = True
    normalize: bool = False
    reduction: str = "none"

    @property
    def reduced(self) -> bool:
        """The op returns one number: one upstream gradient for all anchors."""
        return self.reduction != "none"

    @property
    def loss_scale(self) -> float:
        return -(self.temperature / self.base_temperature)

    def class_weights(self) -> tuple[float, float]:
        """(beta_on, beta_off): the class block's positive weight of the anchor's own class and of every other."""
        C = self.num_classes
        off = self.label_smoothing / (C - 1) if C > 1 else 0.0
        return self.beta * (1.0 - self.label_smoothing), self.beta * off

    def op_params(self) -> OpParams:
        beta_on, beta_off = self.class_weights()
        return OpParams(
            num_anchors=self.num_anchors,
            temperature=self.temperature,
            center_temperature=self.center_temperature,
            alpha=self.alpha,
            beta_on=beta_on,
            beta_off=beta_off,
            gamma=self.gamma,
            loss_scale=self.loss_scale,
            exclude_positive_class=self.exclude_positive_class,
            ignore_index=self.ignore_index,
            batch_columns=self.batch_columns,
            lse_eps=self.lse_eps,
            batch_column_grad=self.batch_column_grad,
            normalize=self.normalize,
            reduction=self.reduction,
        )


@dataclass(frozen=True)
class ContrastInputs:
    features: torch.Tensor  # (N, D) batch rows; rows 0..A-1 are anchors
    labels: torch.Tensor  # (N,) int64
    queue: torch.Tensor | None = None  # (K, D), never receives a gradient
    queue_labels: torch.Tensor | None = None  # (K,) int64
    center_logits: torch.Tensor | None = None  # (A, C) class logits S
    centers: torch.Tensor | None = None  # (C, D) class centers W, logits <F_i, W_c>
    center_bias: torch.Tensor | None = None  # (C,) log prior b, float, added before dividing by tc

    @property
    def num_classes(self) -> int:
        if self.center_logits is not None:
            return self.center_logits.shape[1]
        if self.centers is not None:
            return self.centers.shape[0]
        return 0

    def tensors(self) -> tuple:
        """The seven tensors in the order of the op's schema (absent ones None)."""
        return (
            self.features,
            self.labels,
            self.queue,
            self.queue_labels,
            self.center_logits,
            self.centers,
            self.center_bias,
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half inputs, the input dtype otherwise (float64 stays float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def class_block_weights(anchor_labels, class_ids, p: OpParams, dtype: torch.dtype):
    """Positive weight w and denominator weight d of anchors (R,) against classes (T,): two (R, T) tensors."""
    is_pos = anchor_labels[:, None] == class_ids[None, :]
    # Built in the compute dtype: torch.where on Python floats would round the weights to float32.
    w = torch.full(is_pos.shape, p.beta_off, dtype=dtype, device=is_pos.device).masked_fill_(is_pos, p.beta_on)
    d = (~is_pos).to(dtype) if p.exclude_positive_class else torch.ones_like(w)
    return w, d


def sample_weights(
    anchor_labels: torch.Tensor,
    col_labels: torch.Tensor,
    p: OpParams,
    anchor_rows: torch.Tensor | None = None,
    col_rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
):
    """w and d of anchors (R,) against batch or queue columns (T,); pass row indices for batch columns so that
    an anchor's own column (same row of features) gets w = d = 0."""
    same = anchor_labels[:, None] == col_labels[None, :]
    if anchor_rows is None:
        w = same.to(dtype) * p.alpha
        d = torch.full_like(w, p.gamma)
        return w, d
    other = anchor_rows[:, None] != col_rows[None, :]
    w = (same & other).to(dtype) * p.alpha
    d = other.to(dtype) * p.gamma
    return w, d


def weighted_logits(w: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """w * l with the columns of weight 0 contributing exactly 0, also where l is -inf (a masked class logit).
    The logit is selected before the product, so neither the value nor its gradient ever sees 0 * inf."""
    return w * torch.where(w != 0, l, torch.zeros_like(l))


def denominator_terms(d: torch.Tensor, l: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """d * exp(l - shift), exactly 0 on columns with d = 0 whatever l and shift are (exp(l - shift) is inf when the
    shift is far below a masked logit, and 0 * inf would be NaN): the exponent is selected first."""
    return d * torch.exp(torch.where(d > 0, l - shift, torch.full_like(l, float("-inf"))))


def counted_anchors(anchor_labels: torch.Tensor, p: OpParams) -> torch.Tensor:
    """Bool (A,): anchors that are not ignored (they count in 'mean' even without positives, as in SupCon)."""
    return anchor_labels != p.ignore_index


def finalize_loss(wl, pos, lse, anchor_labels, p: OpParams) -> torch.Tensor:
    """Per-anchor loss -(t/tb) (sum w l - P lse) / P from the sweep's sums; 0 for ignored anchors and anchors
    without positives (where the published code divides 0 by 0)."""
    valid = (pos > 0) & counted_anchors(anchor_labels, p)
    loss = p.loss_scale * (wl - pos * lse) / torch.where(valid, pos, torch.ones_like(pos))
    return torch.where(valid, loss, torch.zeros_like(loss))


def reduce_losses(losses, anchor_labels, p: OpParams):
    """(the op's loss, the number of counted anchors as a (1,) tensor): 'none' keeps the (A,) losses, 'sum' adds
    them, 'mean' divides the sum by the anchors not ignored (no host sync; with none counted it is 0 with zero
    gradients)."""
    counted = counted_anchors(anchor_labels, p).sum().to(losses.dtype).reshape(1)
    if p.reduction == "none":
        return losses, counted
    total = losses.sum()
    if p.reduction == "sum":
        return total, counted
    return total / counted[0].clamp(min=1), counted


def per_anchor_grad(grad_loss, counted, p: OpParams, num_anchors: int) -> torch.Tensor:
    """The upstream gradient of each anchor's loss, (A,), from the gradient of the op's loss (() or (A,))."""
    if p.reduction == "none":
        return grad_loss
    g = grad_loss if p.reduction == "sum" else grad_loss / counted[0].clamp(min=1)
    return g.reshape(1).expand(num_anchors)


def normalized(x: ContrastInputs) -> ContrastInputs:
    """x with features, queue and centers L2-normalized (as torch.nn.functional.normalize: x / max(|x|, 1e-12)), see
    unit_rows."""
    return ContrastInputs(
        unit_rows(x.features),
        x.labels,
        None if x.queue is None else unit_rows(x.queue),
        x.queue_labels,
        x.center_logits,
        None if x.centers is None else unit_rows(x.centers),
        x.center_bias,
    )


NORM_EPS = 1e-12


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows divided by max(|row|, NORM_EPS), computed in float32 (at least) and rounded once to t's dtype: what every
    backend does (the Triton kernels as they load a tile), so that half-precision runs share the rounding."""
    return torch.nn.functional.normalize(t.to(compute_dtype(t.dtype)), dim=1, eps=NORM_EPS).to(t.dtype)


def normalize_backward(raw: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Gradient with respect to the raw rows x from the gradient with respect to x / max(|x|, eps):
    (g - u <u, g>) / |x| where |x| > eps (u the unit row), g / eps where the norm was clamped. In grad_unit's dtype."""
    x = raw.to(grad_unit.dtype)
    norm = x.norm(dim=1, keepdim=True)
    clamped = norm <= NORM_EPS
    u = x / norm.clamp(min=NORM_EPS)
    radial = torch.where(clamped, torch.zeros_like(norm), (u * grad_unit).sum(dim=1, keepdim=True))
    return (grad_unit - u * radial) / norm.clamp(min=NORM_EPS)


def finish_gradients(x: ContrastInputs, p: OpParams, grads, like: torch.Tensor) -> tuple:
    """The op's three gradients (features, center_logits, centers) from a backend's gradients with respect to the
    inputs it computed with (normalized ones with `normalize`; None where not needed): chained through the
    normalization, in the dtype of each input, contiguous; absent ones as (0,) tensors of like's dtype."""
    grad_features, grad_logits, grad_centers = grads
    if p.normalize:
        grad_features = None if grad_features is None else normalize_backward(x.features, grad_features)
        grad_centers = None if grad_centers is None else normalize_backward(x.centers, grad_centers)
    out = (grad_features, grad_logits, grad_centers)
    inputs = (x.features, x.center_logits, x.centers)
    return tuple(like.new_empty((0,)) if g is None else g.to(t.dtype).contiguous() for g, t in zip(out, inputs))


def gradient_coefficients(grad_loss, pos, anchor_labels, p: OpParams):
    """(a, 1/P) per anchor, both 0 on anchors that add no loss, for G = a (w / P - d exp(l - lse)) times the
    segment's 1/temperature. Kept apart so that half-precision kernels can keep the (often tiny) a out of their
    half-precision products."""
    valid = (pos > 0) & counted_anchors(anchor_labels, p)
    a = torch.where(valid, grad_loss.to(pos.dtype) * p.loss_scale, torch.zeros_like(pos))
    inv_pos = torch.where(valid, 1.0 / torch.where(valid, pos, torch.ones_like(pos)), torch.zeros_like(pos))
    return a.contiguous(), inv_pos.contiguous()


@dataclass(frozen=True)
class LabelGroups:
    """The rows of [features; queue] grouped by label, for the positive terms by per-label sums (see label_groups).

    order:  (N + K,) int64, the rows sorted by label (stable: ties keep row order); sorted_labels their labels
    bounds: with a class block of C classes, (C + 1,): class c's rows are order[bounds[c]:bounds[c + 1]] (the group
            of a row is its label; every other value, ignore_index or out of range, is group C);
            without one, (N + K,): the group whose rows start at sorted position p (p == 0 or a new label there)
            ends at bounds[p], and the group of a row is the sorted position where its label starts
    group:  without a class block, (N,) int64, the group of each row of features; with one, None (the label)
    """

    order: torch.Tensor
    sorted_labels: torch.Tensor
    bounds: torch.Tensor
    group: torch.Tensor | None
    num_groups: int  # G: room for the group ids, fixed by the shapes (no host read), not the distinct labels


def label_groups(labels: torch.Tensor, queue_labels, num_classes: int) -> LabelGroups:
    """Groups of the rows of [features; queue]: two rows share a group exactly when they share a label. Computed on
    the labels' device with a stable sort and binary searches, nothing read back (no sync).

    The positive terms need no per-pair work with these groups: for batch and queue columns w_ij = alpha [y_i == y_j]
    (own column excluded), so sum_j w_ij l_ij = (alpha / t) <a_i, M[g_i] - a_i> and P_i = alpha (n[g_i] - 1) with M and
    n the per-group sums of the contrast rows and their counts (label_sums)."""
    keys = labels if queue_labels is None else torch.cat([labels, queue_labels])
    sorted_labels, order = torch.sort(keys, stable=True)
    if num_classes > 0:  # group = label: room for C classes and one group of everything else
        classes = torch.arange(num_classes + 1, device=keys.device, dtype=keys.dtype)
        bounds = torch.searchsorted(sorted_labels, classes)
        return LabelGroups(order, sorted_labels, bounds, None, num_classes + 1)
    group = torch.searchsorted(sorted_labels, labels)  # the first sorted position of the label
    bounds = torch.searchsorted(sorted_labels, sorted_labels, right=True)
    return LabelGroups(order, sorted_labels, bounds, group, keys.shape[0])


def label_sums(rows: torch.Tensor, row_groups: torch.Tensor, column_rows: torch.Tensor, num_groups: int):
    """(M, n): per-group sums (G, D) of the rows of [features; queue] (rows, of groups row_groups) where column_rows
    (bool, N + K) is set, and their counts (G,), in float32 at least: the plain formula of what
    _paco_label_sums_kernel computes, for tests and for reading."""
    dtype = compute_dtype(rows.dtype)
    weights = column_rows.to(dtype)
    sums = torch.zeros((num_groups, rows.shape[1]), dtype=dtype, device=rows.device)
    sums.index_add_(0, row_groups, rows.to(dtype) * weights[:, None])
    counts = torch.zeros((num_groups,), dtype=dtype, device=rows.device).index_add_(0, row_groups, weights)
    return sums, counts
