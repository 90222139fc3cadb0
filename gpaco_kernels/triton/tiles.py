"""Tile helpers shared by the Triton kernels: loading rows, the logits and weights of a tile of contrast columns,
one step of the online log-sum-exp, and the gradient factor of a tile.

Conventions of every kernel: a tile is BLOCK_M anchor rows x BLOCK_N columns of one segment (0 class block,
1 batch, 2 queue); columns past the segment's end are masked (col_mask) and get w = d = 0; row offsets are formed in
int64 (rows x stride passes 2^31 once N x D does). Masked columns, and columns whose weight is 0, contribute exactly 0
to every sum whatever the running max is: their exponent or logit is selected out with tl.where before any product,
never multiplied by 0 afterwards (exp(l - m) is inf when m is far below l, and 0 * inf is NaN).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def as_f32(x):
    """A float argument as float32. Triton's own launcher types a Python float as fp32, but torch.compile (Inductor)
    launches a triton_op's kernels with Python floats typed fp64, which would promote every product with them to
    float64 and change the type of the loop-carried log-sum-exp state (a compile error)."""
    return tl.cast(x, tl.float32)


@triton.jit
def load_rows(
    ptr, rows, row_mask, stride, offs_d, D, UPCAST: tl.constexpr, NORMALIZE: tl.constexpr = False,
    ROWS_IN_RANGE: tl.constexpr = False,
):  # fmt: skip
    """(len(rows), BLOCK_D) tile of a row-major (rows, D) matrix; 0 outside. UPCAST loads it as float32 (the
    interpreter's bfloat16 dot is wrong; compiled code keeps half precision). NORMALIZE divides each row by
    max(|row|, NORM_EPS), as torch.nn.functional.normalize does before a product (load_tile). ROWS_IN_RANGE: the
    caller knows every row is in range (a sweep's full tiles), so row_mask is not applied: the load is masked on the
    feature dim alone (the rows' mask cost 37 of the forward's 362 loop instructions per warp, sm_90)."""
    offsets = rows.to(tl.int64)[:, None] * stride + offs_d[None, :]
    if ROWS_IN_RANGE:
        return load_tile(ptr + offsets, offs_d[None, :] < D, UPCAST, NORMALIZE)
    return load_tile(ptr + offsets, row_mask[:, None] & (offs_d[None, :] < D), UPCAST, NORMALIZE)


@triton.jit
def load_tile(ptrs, mask, UPCAST: tl.constexpr, NORMALIZE: tl.constexpr):
    """The rows at ptrs (a 2-D block of pointers, 0 where not mask), upcast to float32 with UPCAST, each divided by
    max(|row|, NORM_EPS) with NORMALIZE: the norm in float32, the scaling in float32 for float16 (whose range 1/|x|
    can pass) and in the tile's dtype otherwise (for bfloat16 the inverse norm is then rounded too; a float32 copy
    of the tile cost registers). The op normalizes its inputs tile by tile, with no normalized copy in memory."""
    return prepare_rows(tl.load(ptrs, mask=mask, other=0.0), UPCAST, NORMALIZE)


@triton.jit
def prepare_rows(x, UPCAST: tl.constexpr, NORMALIZE: tl.constexpr):
    """A loaded tile of rows as load_tile returns it: upcast with UPCAST, normalized with NORMALIZE."""
    if UPCAST:
        x = x.to(tl.float32)
    if NORMALIZE:
        xf = x.to(tl.float32)
        inv = inverse_norm(tl.sum(xf * xf, axis=1))
        if x.dtype == tl.float16:  # 1/|x| may pass float16's 65504 (and is 1e12 on masked rows): scaled in float32
            x = (xf * inv[:, None]).to(x.dtype)
        else:  # float32, or bfloat16 (float32's range): scaled in the tile's dtype, no float32 copy of the tile
            x = x * inv.to(x.dtype)[:, None]
    return x


# Tensor descriptors made in a kernel (tl.make_tensor_descriptor) exist from Triton 3.4 on. The dependency finder of
# older ones looks up every name a jitted function uses, the untaken `if TMA:` branch's too, so the name must not
# appear in the source they compile: without it, rows_descriptor is the pointer itself (launch.tma_rows never asks
# for descriptors then: launch._device_descriptors_supported).
DESCRIPTORS = hasattr(tl, "make_tensor_descriptor")

if DESCRIPTORS:

    @triton.jit
    def rows_descriptor(ptr, num_rows, D, stride, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
        """With TMA (Hopper's tensor memory accelerator, launch.tma_rows), a device-side descriptor of the row-major
        (num_rows, D) matrix at ptr whose loads (sweep_rows) are (BLOCK_R, BLOCK_D) tiles: the copy engine moves a
        tile into shared memory with one instruction and fills the rows past num_rows and the columns past D with 0,
        so the loop forms no address and no mask per element. Without TMA, ptr itself (sweep_rows then loads by
        pointers). num_rows is at least 1 in the descriptor (an empty range takes no load)."""
        if TMA:  # one return: the compiler types every return statement, the untaken branch's too
            rows = tl.make_tensor_descriptor(
                ptr, shape=[tl.maximum(num_rows, 1), D], strides=[stride, 1], block_shape=[BLOCK_R, BLOCK_D]
            )
        else:
            rows = ptr
        return rows

else:

    @triton.jit
    def rows_descriptor(ptr, num_rows, D, stride, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
        """This Triton has no tensor descriptors: the rows are loaded by pointers from ptr."""
        tl.static_assert(not TMA, "this Triton has no tensor descriptors (tl.make_tensor_descriptor)")
        return ptr


@triton.jit
def sweep_rows(
    ptr, desc, r0, end, offs_r, stride, offs_d, D, UPCAST: tl.constexpr, NORMALIZE: tl.constexpr,
    ROWS_IN_RANGE: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The rows [r0, r0 + BLOCK_R) of a sweep's tile, 0 from `end` and past D, as load_rows gives them: by the
    descriptor with TMA (rows_descriptor of the rows below `end`), else by pointers from ptr (without a row mask
    where the caller knows the tile is full, ROWS_IN_RANGE)."""
    if TMA:
        x = prepare_rows(desc.load([r0, 0]), UPCAST, NORMALIZE)
    else:
        rows = r0 + offs_r
        x = load_rows(ptr, rows, rows < end, stride, offs_d, D, UPCAST, NORMALIZE, ROWS_IN_RANGE)
    return x


@triton.jit
def inverse_norm(sum_sq):
    """1 / max(|x|, NORM_EPS) from |x|^2, as one reciprocal square root (MUFU.RSQ, a few ulp in float32): a
    correctly rounded sqrt and division cost a long instruction sequence per row (and ptxas seconds per kernel)."""
    return tl.math.rsqrt(tl.maximum(sum_sq, NORM_EPS * NORM_EPS))


@triton.jit
def anchor_coefficients(
    grad_ptr, counted_ptr, pos_ptr, rows, row_mask, row_labels, ignore_index, loss_scale, REDUCTION: tl.constexpr
):  # fmt: skip
    """(a, 1/P) of a tile of anchors, both 0 on anchors that add no loss: ops/spec.py's gradient_coefficients of the
    upstream gradient of each anchor, which per_anchor_grad forms from the op's gradient (REDUCTION 0 'none': one
    per anchor; 1 'sum': one for all; 2 'mean': one for all, divided by the counted anchors)."""
    pos = tl.load(pos_ptr + rows, mask=row_mask, other=0.0)
    if REDUCTION == 0:
        g = tl.load(grad_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    else:
        g = tl.load(grad_ptr).to(tl.float32)
        if REDUCTION == 2:
            g = g / tl.maximum(tl.load(counted_ptr), 1.0)
    valid = row_mask & (pos > 0) & (row_labels != ignore_index)
    a = tl.where(valid, g * loss_scale, 0.0)
    inv_pos = tl.where(valid, 1.0 / tl.where(valid, pos, 1.0), 0.0)
    return a, inv_pos


@triton.jit
def out_of_range(labels, mask, num_classes, ignore_index):
    """1 when a label of the tile (where mask) is neither a class index nor ignore_index, else 0 (int32)."""
    bad = mask & (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    return tl.max(bad.to(tl.int32), axis=0)


@triton.jit
def segment_weights(
    SEGMENT: tl.constexpr, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off, gamma,
    EXCLUDE: tl.constexpr,
):  # fmt: skip
    """Positive weight w and denominator weight d of a (rows x cols) tile; SEGMENT 0 class block, 1 batch, 2 queue.
    Columns outside the segment get w = d = 0."""
    if SEGMENT == 0:
        own = row_labels[:, None] == cols[None, :]
        w = tl.where(own, beta_on, beta_off)
        if EXCLUDE:
            d = tl.where(own, 0.0, 1.0)
        else:
            d = tl.where(own, 1.0, 1.0)
    elif SEGMENT == 1:
        other = rows[:, None] != cols[None, :]
        same = (row_labels[:, None] == col_labels[None, :]) & other
        w = tl.where(same, alpha, 0.0)
        d = tl.where(other, gamma, 0.0)
    else:
        same = row_labels[:, None] == col_labels[None, :]
        w = tl.where(same, alpha, 0.0)
        d = tl.where(same, gamma, gamma)
    w = tl.where(col_mask[None, :], w, 0.0)
    d = tl.where(col_mask[None, :], d, 0.0)
    return w, d


@triton.jit
def segment_logits(
    FROM_LOGITS: tl.constexpr, anchors, rows, row_mask, cols, col_mask, x_ptr, stride_x, s_ptr, stride_s, bias_ptr,
    scale, offs_d, D, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    NORMALIZE: tl.constexpr,
):  # fmt: skip
    """Logits of a (rows x cols) tile of one segment: given class logits S, or anchors . X^T (with NORMALIZE, times
    1 / |X_j| per column; the anchors come normalized); then bias and scale. Masked columns hold -inf (they never
    win the max)."""
    if FROM_LOGITS:
        offsets = rows.to(tl.int64)[:, None] * stride_s + cols[None, :]
        l = tl.load(s_ptr + offsets, mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
    else:
        x = load_rows(x_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
        l = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
        if NORMALIZE:
            # The columns' inverse norms scale the products: the same logits as a product with normalized rows (to
            # the rounding of those rows), without a second, normalized copy of the tile in registers (that copy
            # made the float32 IEEE forward spill).
            xf = x.to(tl.float32)
            l = l * inverse_norm(tl.sum(xf * xf, axis=1))[None, :]
    if HAS_BIAS:
        l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
    return tl.where(col_mask[None, :], l * scale, float("-inf"))


@triton.jit
def column_tile(
    SEGMENT: tl.constexpr, anchors, rows, row_mask, row_labels, cols, col_mask,
    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
    stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
    offs_d, D, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    """Logits l, weights (w, d) and the column labels (the class index in the class block) of a (rows x cols) tile
    of segment SEGMENT: the one place the kernels that sweep anchors over columns turn a tile of columns into
    numbers."""
    # fmt: off
    if SEGMENT == 0:
        l = segment_logits(FROM_LOGITS, anchors, rows, row_mask, cols, col_mask, centers_ptr, stride_w,
                           logits_ptr, stride_s, bias_ptr, c_scale, offs_d, D, HAS_BIAS, UPCAST, PRECISION, NORMALIZE)
        col_labels = cols
    elif SEGMENT == 1:
        l = segment_logits(False, anchors, rows, row_mask, cols, col_mask, feat_ptr, stride_f,
                           logits_ptr, stride_s, bias_ptr, t_scale, offs_d, D, False, UPCAST, PRECISION, NORMALIZE)
        col_labels = tl.load(label_ptr + cols, mask=col_mask, other=-1)
    else:
        l = segment_logits(False, anchors, rows, row_mask, cols, col_mask, queue_ptr, stride_q,
                           logits_ptr, stride_s, bias_ptr, t_scale, offs_d, D, False, UPCAST, PRECISION, NORMALIZE)
        col_labels = tl.load(queue_label_ptr + cols, mask=col_mask, other=-1)
    w, d = segment_weights(SEGMENT, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off,
                           gamma, EXCLUDE)
    # fmt: on
    return l, w, d, col_labels


@triton.jit
def given_class_tile(
    c0, c_end, rows, row_mask, row_labels, logits_ptr, stride_s, bias_ptr, c_scale, alpha, beta_on, beta_off, gamma,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
):  # fmt: skip
    """(cols, col_mask, l, w, d) of the WIDTH class columns from c0 (those before c_end) when the class logits are
    given: the tile the forward and the row backward sweep before the anchors load (no product, so no anchors)."""
    cols = c0 + tl.arange(0, WIDTH)
    col_mask = cols < c_end
    offsets = rows.to(tl.int64)[:, None] * stride_s + cols[None, :]
    l = tl.load(logits_ptr + offsets, mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:
        l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
    l = tl.where(col_mask[None, :], l * c_scale, float("-inf"))
    w, d = segment_weights(0, rows, row_labels, cols, cols, col_mask, alpha, beta_on, beta_off, gamma, EXCLUDE)
    return cols, col_mask, l, w, d


@triton.jit
def exp(x):
    """e^x as exp2(x log2 e): a multiply and one MUFU.EX2 per element. tl.exp lowers to ex2.approx without .ftz,
    which ptxas wraps in a range fix-up (a compare and two multiplies more per element, read from the SASS);
    tl.exp2 is ex2.approx.ftz, whose results below 2^-126 are 0: terms of sums whose largest term is 1, and
    probabilities far below anything a float32 or half-precision gradient holds."""
    return tl.exp2(x * LOG2E)


@triton.jit
def online_lse_step(m, z, l, d):
    """Running max m and rescaled sum z = sum d exp(l - m) after one more tile. A row whose logits so far are all
    -inf keeps m = -inf and z = 0: its shift is taken as 0 (exp(-inf - -inf) would be NaN)."""
    m_new = tl.maximum(m, tl.max(l, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    terms = d * exp(tl.where(d > 0, l - shift[:, None], float("-inf")))
    return m_new, z * exp(m - shift) + tl.sum(terms, axis=1)


@triton.jit
def column_scale(x, scale, BLOCK_N: tl.constexpr, NORMALIZE: tl.constexpr):
    """(BLOCK_N,) float32 factor of a tile of columns x (rows not yet normalized): the temperature's 1 / t, times the
    columns' inverse norms with NORMALIZE (as segment_logits)."""
    col_scale = tl.zeros((BLOCK_N,), tl.float32) + scale
    if NORMALIZE:
        xf = x.to(tl.float32)
        col_scale = inverse_norm(tl.sum(xf * xf, axis=1)) * scale
    return col_scale


@triton.jit
def sample_logits(
    anchors, rows, cols, col_mask, x, col_scale, PRECISION: tl.constexpr, MASK_COLUMNS: tl.constexpr,
    MASK_DIAGONAL: tl.constexpr,
):  # fmt: skip
    """Logits of a tile of batch or queue columns x (rows not yet normalized, column_scale their factor) for the
    positive terms by label sums (LABEL_SUMS), in whatever base col_scale gives them (the sweeps' are base 2: they
    only ever feed exp2): the product, scaled, and -inf on the columns that are not in the
    denominator, on the tiles that have them (the sweeps below split their ranges so that the other tiles skip the
    masks): past the range's end (MASK_COLUMNS, folded into the scaling's multiply-add) and the anchor's own column
    of a batch tile the diagonal crosses (MASK_DIAGONAL)."""
    l = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
    if MASK_COLUMNS:
        l = l * col_scale[None, :] + tl.where(col_mask, 0.0, float("-inf"))[None, :]
    else:
        l = l * col_scale[None, :]
    if MASK_DIAGONAL:
        l = tl.where(rows[:, None] != cols[None, :], l, float("-inf"))
    return l


@triton.jit
def diagonal_tiles(lo, hi, d0, SPAN: tl.constexpr, BLOCK: tl.constexpr):
    """(first, last): the tiles lo + k BLOCK (k >= 0, starting below hi) that cross the diagonal block
    [d0, d0 + SPAN) start in [first, last); both are tile starts (or hi)."""
    first = lo + tl.cdiv(tl.maximum(d0 - BLOCK + 1 - lo, 0), BLOCK) * BLOCK
    last = lo + tl.cdiv(tl.maximum(d0 + SPAN - lo, 0), BLOCK) * BLOCK
    first = tl.minimum(first, hi)
    return first, tl.maximum(tl.minimum(last, hi), first)


@triton.jit
def sample_tile(
    c0, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d, D, t_scale, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, NORMALIZE: tl.constexpr, MASK_COLUMNS: tl.constexpr,
    MASK_DIAGONAL: tl.constexpr, ROWS_IN_RANGE: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """(cols, col_mask, x, l2) of the batch or queue tile at c0 (columns below hi) for the sweeps below: its rows x as
    stored (sweep_rows: by the descriptor x_desc with TMA, else by pointers, without a row mask where the caller
    knows the tile is full, ROWS_IN_RANGE), and its logits by sample_logits in base 2, l2 = l log2(e) (log2 e folded
    into the columns' scale, so that each element's exponential is one exp2 of a difference)."""
    cols = c0 + offs_n
    col_mask = cols < hi
    x = sweep_rows(x_ptr, x_desc, c0, hi, offs_n, stride_x, offs_d, D, UPCAST, False, ROWS_IN_RANGE, TMA)
    col_scale = column_scale(x, t_scale * LOG2E, BLOCK_N, NORMALIZE)
    l = sample_logits(anchors, rows, cols, col_mask, x, col_scale, PRECISION, MASK_COLUMNS, MASK_DIAGONAL)
    return cols, col_mask, x, l


@triton.jit
def sample_lse_sweep(
    m, z, start, end, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d, D, t_scale, gamma,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, NORMALIZE: tl.constexpr,
    MASK_COLUMNS: tl.constexpr, MASK_DIAGONAL: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The forward's online log-sum-exp over the batch or queue tiles starting in [start, end) (columns below hi),
    positives by label sums: a product, the running max, one multiply-add and one exp per element. Where every column
    has the same scale (no NORMALIZE) and no mask, the max is taken of the raw products (the scale is positive, so
    max(raw) scale = max(raw scale)) and the scale goes into the exponent's multiply-add: no multiply per element
    first (the scaled tile has two uses, the max and the exponent, so the compiler cannot fuse its multiply)."""
    for c0 in range(start, end, BLOCK_N):  # the tiles without MASK_COLUMNS are full: no row mask on their loads
        if (not NORMALIZE and not MASK_COLUMNS) and not MASK_DIAGONAL:
            x = sweep_rows(x_ptr, x_desc, c0, hi, offs_n, stride_x, offs_d, D, UPCAST, False, True, TMA)
            raw = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
            m, z = online_lse_step_scaled(m, z, raw, t_scale * LOG2E, gamma)
        else:
            _, _, _, l2 = sample_tile(
                c0, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d, D, t_scale, BLOCK_N, UPCAST,
                PRECISION, NORMALIZE, MASK_COLUMNS, MASK_DIAGONAL, not MASK_COLUMNS, TMA,
            )  # fmt: skip
            m, z = online_lse_step_uniform(m, z, l2, gamma)
    return m, z


@triton.jit
def sample_grad_sweep(
    acc, start, end, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d, D, t_scale, sample_lse2,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, NORMALIZE: tl.constexpr,
    MASK_DIAGONAL: tl.constexpr, ROWS_IN_RANGE: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The row backward's acc -= H X over the batch or queue tiles starting in [start, end), positives by label sums
    (the caller negates acc around the sweeps): -H = gamma exp(l - lse) = exp2(l2 - sample_lse2) (tiles.uniform_lse2),
    times G_SCALE as the other products take it, both folded into the exponent: per element one subtraction and one
    exp2. ROWS_IN_RANGE: every tile of [start, end) is full, so X loads without a row mask. Otherwise (the last,
    partial tile) the columns past hi need care: their rows of X are 0, but their logit is 0, and with a small lse
    their p G_SCALE passes float16's range (inf times those zero rows is NaN). The exponent is capped at
    log2(G_SCALE) there, which no column in the denominator reaches (its p is at most 1): one min per element of
    that tile, where -inf logits cost the whole kernel 9 registers (the 8-warp tile then fit once per SM, not
    twice)."""
    for c0 in range(start, end, BLOCK_N):
        _, _, x, l2 = sample_tile(
            c0, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d, D, t_scale, BLOCK_N, UPCAST, PRECISION,
            NORMALIZE, False, MASK_DIAGONAL, ROWS_IN_RANGE, TMA,
        )  # fmt: skip
        exponent = l2 - (sample_lse2 - G_SCALE_LOG2)[:, None]
        if not ROWS_IN_RANGE:
            exponent = tl.minimum(exponent, G_SCALE_LOG2)
        p = tl.exp2(exponent)
        if NORMALIZE:  # the product takes the unit rows
            x = sweep_rows(x_ptr, x_desc, c0, hi, offs_n, stride_x, offs_d, D, UPCAST, NORMALIZE, ROWS_IN_RANGE, TMA)
        acc = tl.dot(p.to(x.dtype), x, acc, input_precision=PRECISION)
    return acc


@triton.jit
def lse_tile_step(m, z, wl, pos, l, w, d):
    """The forward's running (m, z, sum w l, P) after one tile with per-element weights (w, d): column_tile's."""
    m, z = online_lse_step(m, z, l, d)
    return m, z, wl + weighted_logit_sum(w, l), pos + tl.sum(w, axis=1)


@triton.jit
def online_lse_step_uniform(m, z, l2, weight):
    """online_lse_step for a tile of base-2 logits l2 = l log2(e) whose columns all have the denominator weight
    `weight` (a scalar: gamma for batch and queue columns), the columns out of the denominator holding -inf: per
    element a max, one subtraction, one exp2 and an add, no select. m and z stay in natural units (the class block
    shares them); the shift goes to base 2 once per row. exp2(l2 - shift2) <= 1 (to rounding), so weight 0 adds
    exactly 0."""
    m_new = tl.maximum(m, tl.max(l2, axis=1) * LN2)
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    terms = tl.exp2(l2 - (shift * LOG2E)[:, None])
    return m_new, z * exp(m - shift) + weight * tl.sum(terms, axis=1)


@triton.jit
def online_lse_step_scaled(m, z, raw, scale2, weight):
    """online_lse_step_uniform for the raw products raw = <a, x> of columns that share one positive base-2 scale
    scale2 (l2 = raw scale2) and are all in the denominator: the max of the raw products, scaled once per row, and
    per element one multiply-add (raw scale2 - shift2) and one exp2."""
    m_new = tl.maximum(m, tl.max(raw, axis=1) * (scale2 * LN2))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    terms = tl.exp2(raw * scale2 - (shift * LOG2E)[:, None])
    return m_new, z * exp(m - shift) + weight * tl.sum(terms, axis=1)


@triton.jit
def uniform_lse2(lse, weight):
    """The per-row exponent shift, in base 2, of the backward's p = weight exp(l - lse) = exp2(l2 - shift2) for base-2
    logits l2 = l log2(e) of columns of one denominator weight (>= 0): shift2 = (lse - ln weight) log2(e); +inf
    (p = 0) for weight 0, and for rows whose lse is -inf (nothing in their denominator), where l - lse would be NaN
    or inf."""
    # float32's smallest normal: Triton 3.2 types a literal below it as float64 (1e-38 made the row backward's whole
    # exponent float64, and its conversion to bfloat16 aborted the compiler)
    shifted = tl.where(weight > 0, (lse - tl.log(tl.maximum(weight, 1.1754943508222875e-38))) * LOG2E, float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), shifted)


@triton.jit
def row_groups(group_ptr, rows, row_mask, C, CLASSES: tl.constexpr):
    """The group of each row of features: group_ptr[r], the label itself with a class block (CLASSES; every value
    that is not a class index is group C), else label_groups' id."""
    g = tl.load(group_ptr + rows, mask=row_mask, other=0)
    if CLASSES:
        g = tl.where((g >= 0) & (g < C), g, C)
    return g


@triton.jit
def group_sums(groups, row_mask, sums_ptr, offs_d, D):
    """sums[groups] (float32, (len(groups), BLOCK_D)): the rows of a contiguous (G, D) float32 matrix of
    _paco_label_sums_kernel for the groups of a tile of rows (row_groups)."""
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    return tl.load(sums_ptr + groups.to(tl.int64)[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def store_partials(part_ptr, pid_s, num_splits, A, rows, row_mask, m, z, wl, pos, bad_label):
    """A forward program's partials into part_ptr ((5, SPLITS, A) float32, split pid_s of num_splits): m, z, sum w l,
    P per anchor, and the label-range flag, which _paco_finalize_kernel merges."""
    stride_part = num_splits.to(tl.int64) * A
    out = part_ptr + pid_s.to(tl.int64) * A + rows
    tl.store(out, m, mask=row_mask)
    tl.store(out + stride_part, z, mask=row_mask)
    tl.store(out + 2 * stride_part, wl, mask=row_mask)
    tl.store(out + 3 * stride_part, pos, mask=row_mask)
    tl.store(out + 4 * stride_part, tl.zeros_like(m) + bad_label.to(tl.float32), mask=row_mask)


@triton.jit
def weighted_logit_sum(w, l):
    """sum of w l over a tile's columns, the columns of weight 0 (masked, or a -inf class logit) adding exactly 0."""
    return tl.sum(w * tl.where(w != 0, l, 0.0), axis=1)


@triton.jit
def gradient_factor(l, w, d, lse, inv_pos):
    """H = w / P - d exp(l - lse) of a tile: G = a H times the segment's 1/temperature, with the per-anchor a kept
    out (it is 1/A after a mean, below float16's range at A = 65536: the kernels apply it in float32). |H| <= 1."""
    # tl.exp, not tiles.exp: with exp2 the 8-warp 64 x 64 column backward of the centers parks 56 B outside its loops
    p = d * tl.exp(tl.where(d > 0, l - lse[:, None], float("-inf")))
    return w * inv_pos[:, None] - p


@triton.jit
def add_split_parts(g, parts_ptr, rows, rows_mask, A, SPLITS, offs_d, D):
    """g plus the SPLITS float32 parts (SPLITS, A, D) of the rows where rows_mask, added in split order (a fixed
    order: deterministic)."""
    mask = rows_mask[:, None] & (offs_d[None, :] < D)
    for s in range(SPLITS):
        offsets = (s * A + rows.to(tl.int64))[:, None] * D + offs_d[None, :]
        g += tl.load(parts_ptr + offsets, mask=mask, other=0.0)
    return g


@triton.jit
def normalize_backward(g, x_ptr, rows, row_mask, stride_x, offs_d, D):
    """The gradient g with respect to unit rows u = x / max(|x|, NORM_EPS), taken back to the raw rows x (read
    again here): (g - u <u, g>) / |x|, or g / NORM_EPS where the norm was clamped (ops/spec.py normalize_backward)."""
    offsets = rows.to(tl.int64)[:, None] * stride_x + offs_d[None, :]
    x = tl.load(x_ptr + offsets, mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    sum_sq = tl.sum(x * x, axis=1)
    inv_norm = inverse_norm(sum_sq)
    u = x * inv_norm[:, None]
    radial = tl.where(sum_sq <= NORM_EPS * NORM_EPS, 0.0, tl.sum(u * g, axis=1))
    return (g - u * radial[:, None]) * inv_norm[:, None]


# log2(e) and ln(2): the tiles' exponentials are base 2 (tiles.exp), the label-sums sweeps' logits too.
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

# Rows are divided by max(|row|, NORM_EPS), as torch.nn.functional.normalize does (ops/spec.py NORM_EPS).
NORM_EPS: tl.constexpr = tl.constexpr(1e-12)

# H is scaled by G_SCALE (a power of two, exact) before it is rounded to the input dtype for a tensor-core product,
# and the product is scaled back in float32: probabilities of order 1/M stay normal float16 numbers up to M ~ 2^29
# (2^-14 / 2^15) instead of going subnormal past M = 2^14; |H| <= 1 keeps H * G_SCALE below float16's 65504.
G_SCALE: tl.constexpr = tl.constexpr(32768.0)
G_SCALE_LOG2: tl.constexpr = tl.constexpr(15.0)  # log2(G_SCALE): folded into exp2's exponent where H is one exp
