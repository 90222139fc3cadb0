"""Triton launch schedule (under TRITON_INTERPRET=1, or compiled on a GPU run): the column split read from the
device's SM count, split ranges that cut through tiles and segments (forward and row backward) against the
reference, the autotune setup, and the
device guard."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels.ops.spec import ContrastInputs, OpParams, label_groups, label_sums

from helpers import GPU, NEEDS_CUDA, TRITON_DEVICE, assert_close, assert_within, need_backend, to_device
from test_backends import make_case

launch = pytest.importorskip("gpaco_kernels.triton.launch")
configs = pytest.importorskip("gpaco_kernels.triton.configs")
tiles = pytest.importorskip("gpaco_kernels.triton.tiles")
triton = pytest.importorskip("triton")

pytestmark = GPU  # every test here runs on TRITON_DEVICE: CPU tensors under the interpreter, else CUDA


@pytest.mark.parametrize("precision", ["half", "fp32", "fp32x3"])
@pytest.mark.parametrize("sms", [132, 108, 78])  # H100 SXM, A100, a smaller part
def test_lt_shape_splits_columns_to_fill_the_device(precision, sms):
    # GPaCo ImageNet-LT: 256 anchors against 1000 classes + 256 batch rows + 8192 queue rows.
    total = 1000 + 256 + 8192
    per_split = launch.column_split(256, total, precision, sms)
    splits = -(-total // per_split)
    block_m = min(c[0] for c in configs.CANDIDATES[("fwd", precision)])
    programs = -(-256 // block_m) * splits
    assert programs >= sms and splits > 1  # at least one program per SM (4 to 16 anchor blocks without a split)
    assert per_split % configs.SPLIT_UNIT == 0 and per_split >= launch.MIN_SPLIT_COLUMNS
    # Every BLOCK_N autotune may pick divides the split, so no tile straddles two splits.
    assert all(per_split % c[1] == 0 for kind in configs.KERNELS for c in configs.CANDIDATES[(kind, precision)])


def test_enough_anchors_do_not_split():
    assert launch.column_split(65536, 65686, "half", 132) == 65686


def test_split_follows_the_devices_sm_count():
    small, large = (launch.column_split(256, 9448, "half", sms) for sms in (20, 132))
    assert small > large  # fewer SMs: fewer, longer splits


@pytest.mark.parametrize("cols_per_split", [None, 24, 5])  # no split; splits cutting tiles and segments
def test_split_ranges_match_the_reference(monkeypatch, small_tiles, cols_per_split):
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", cols_per_split)
    _triton_matches_the_reference("logits+prior", seed=5)


def _triton_matches_the_reference(case: str, seed: int, dim: int = 5) -> None:
    """Loss ('none') and the gradients of a non-uniform upstream gradient, triton in float32 against the reference."""
    kw, grad_args = make_case(case, seed=seed, dim=dim)
    kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    upstream = torch.linspace(-1.0, 2.0, kw["num_anchors"])
    results = {}
    for backend in ("reference", "triton"):
        device = TRITON_DEVICE if backend == "triton" else "cpu"
        kw_dev = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()}
        leaves = {k: kw_dev[k].clone().requires_grad_() for k in grad_args}
        loss = gk.fused_paco_loss(**{**kw_dev, **leaves}, backend=backend, reduction="none")
        loss.backward(upstream.to(device))
        results[backend] = (loss.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()})
    assert_close(results["triton"][0], results["reference"][0], atol=2e-5, rtol=2e-5, name=f"{case} loss")
    for k in grad_args:
        got, want = results["triton"][1][k], results["reference"][1][k]
        assert_close(got, want, atol=2e-5, rtol=2e-5, name=f"{case} d{k}")


def test_autotune_candidates_are_per_precision_and_keyed_on_shape_dtype_dim_and_path(monkeypatch):
    monkeypatch.setattr(configs, "arch_of", lambda device: 90)  # the pruner reads the GPU generation of feat_ptr
    for kind in configs.KERNELS:
        for precision in configs.PRECISION_CLASSES:
            assert configs.CANDIDATES[(kind, precision)], (kind, precision)
    assert configs.AUTOTUNE_KEY == ["rows_bucket", "cols_bucket", "BLOCK_D", "PRECISION", "LABEL_SUMS", "TMA"]
    assert [configs.bucket(n) for n in (1, 17, 256, 257)] == [1, 32, 256, 512]
    # The pruner keeps the candidates of the input's precision class (compiled path; the interpreter has one).
    all_configs, classes = configs._full_autotune_configs("fwd")
    prune = configs.pruner(classes, interpret=False)
    half = prune(all_configs, {"feat_ptr": torch.empty(0, dtype=torch.bfloat16)})
    fp32 = prune(all_configs, {"feat_ptr": torch.empty(0, dtype=torch.float32)}, PRECISION="tf32")
    fp32x3 = prune(all_configs, {"feat_ptr": torch.empty(0, dtype=torch.float32)}, PRECISION="tf32x3")
    assert len(half) == len(configs.candidates("fwd", "half", False, 90))  # this Triton's (configs.CLEAN_FROM)
    assert all(("half", False, True, False) in classes[c] for c in half)
    assert len(fp32) == len(configs.candidates("fwd", "fp32", False, 90))  # this Triton's (configs.CLEAN_FROM)
    assert all(("fp32", False, True, False) in classes[c] for c in fp32)
    assert len(fp32x3) == len(configs.candidates("fwd", "fp32x3", False, 90))  # this Triton's (configs.CLEAN_FROM)
    assert all(("fp32x3", False, True, False) in classes[c] for c in fp32x3)
    # The label-sums path has its own candidates where they differ (the column backward's 4-warp 64 x 64 tile)
    cols, cols_classes = configs._full_autotune_configs("bwd_cols")
    prune_cols = configs.pruner(cols_classes, interpret=False)
    bf16 = {"feat_ptr": torch.empty(0, dtype=torch.bfloat16)}
    tiles = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in prune_cols(cols, bf16)]
    sums = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
            for c in prune_cols(cols, bf16, LABEL_SUMS=True)]  # fmt: skip
    assert tiles == configs.candidates("bwd_cols", "half", False)
    assert sorted(sums) == sorted(configs.candidates("bwd_cols", "half", True)) and sums != tiles


def _pruned(kind, arch, monkeypatch, **constexprs):
    monkeypatch.setattr(configs, "arch_of", lambda device: arch)
    all_configs, classes = configs._full_autotune_configs(kind)
    kept = configs.pruner(classes, interpret=False)(all_configs, {"feat_ptr": torch.empty(0, dtype=torch.bfloat16)},
                                                     **constexprs)  # fmt: skip
    return sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept)


def test_autotune_picks_are_kept_per_gpu_generation(monkeypatch):
    """Triton's autotune key has no device: configs.keyed_by_arch gives each GPU generation its own cache of picks,
    so an sm_90 pick is not reused on an sm_80 device of the same process."""

    class Device:
        def __init__(self, arch):
            self.type, self.arch = "cuda", arch

    class Tensor:
        def __init__(self, arch):
            self.device = Device(arch)

    class Tuner:  # stands in for triton's Autotuner: a cache of picks by key, filled on a miss
        cache = {}

        def run(self, feat_ptr, key):
            return self.cache.setdefault(key, f"pick on sm_{feat_ptr.device.arch}")

    monkeypatch.setattr(configs, "arch_of", lambda device: device.arch)
    tuner = configs.keyed_by_arch(Tuner())
    assert tuner.run(Tensor(90), "k") == "pick on sm_90"
    assert tuner.run(Tensor(80), "k") == "pick on sm_80"  # with one cache: sm_90's pick
    assert tuner.run(feat_ptr=Tensor(90), key="k") == "pick on sm_90"


def test_autotuners_ask_for_the_driver_only_when_they_time_a_candidate():
    """Triton 3.2 and 3.3 ask the active driver for a benchmarker when an autotuner is made unless do_bench is given,
    and their triton.autotune drops it: on a machine without a GPU the kernel modules then failed to import and the
    backend silently dropped out. configs.autotune makes the Autotuner itself, with a do_bench that asks at timing."""
    for kernel in (launch._paco_fwd_kernel, launch._paco_bwd_rows_kernel, launch._paco_bwd_cols_kernel,
                   launch._paco_bwd_one_pass_kernel):  # fmt: skip
        assert getattr(kernel, "_do_bench", getattr(kernel, "do_bench", None)) is configs._bench, kernel


def test_hopper_only_candidates_are_kept_on_sm90_and_dropped_on_sm80(monkeypatch):
    """The 4-warp 64 x 64 row backward of the label-sums path takes whole wgmmas on Hopper; on sm_80 it lowers to
    mma.sync and spills outside its loops, so the pruner leaves it out there (and the compile report does not
    compile it for sm_80)."""
    hopper = _pruned("bwd_rows", 90, monkeypatch, LABEL_SUMS=True)
    ampere = _pruned("bwd_rows", 80, monkeypatch, LABEL_SUMS=True)
    assert (64, 64, 4, 2) in hopper and (64, 64, 4, 2) not in ampere
    assert ampere == sorted(configs.candidates("bwd_rows", "half", True, 80)) and ampere
    assert hopper == sorted(configs.candidates("bwd_rows", "half", True, 90))
    # elsewhere the generations share their candidates
    cols = [_pruned("bwd_cols", arch, monkeypatch, LABEL_SUMS=True) for arch in (80, 90)]
    assert cols[0] == cols[1]


def test_candidates_that_spill_with_descriptor_loads_are_left_to_the_pointer_loads(monkeypatch):
    """The 4-warp 64 x 64 forward spills into its loop with tiles loaded by tensor descriptors (the compile report):
    the pruner keeps it for pointer loads only, and the compile report compiles it so."""
    from tools import compile_report

    if not launch._device_descriptors_supported() or launch._triton_version() < launch.TMA_CHECKED_TRITON:
        # this Triton's descriptor loads are not taken by default (launch.tma_rows): nor compiled for the report
        assert not [c for c in compile_report.cases([90], [128]) if c.variant.endswith("-tma")]
        return
    pointers = _pruned("fwd", 90, monkeypatch, LABEL_SUMS=True)
    descriptors = _pruned("fwd", 90, monkeypatch, LABEL_SUMS=True, TMA=True)
    assert (64, 64, 4, 3) in pointers and (64, 64, 4, 3) not in descriptors
    assert descriptors == sorted(configs.candidates("fwd", "half", True, 90, tma=True)) and descriptors
    compiled = {c.config for c in compile_report.cases([90], [128], only=["fwd"])
                if c.variant == "pixel-sums-tma" and c.precision == "bf16"}  # fmt: skip
    assert compiled == set(descriptors)


def test_float32_products_use_tensor_cores_whether_or_not_tf32_is_allowed():
    """TF32 where torch allows it for float32 matmuls, else 3xTF32 (float32 accuracy on tensor cores), never an
    IEEE dot; half dtypes take their own path."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert launch._precision(torch.float32) == "tf32x3"
        assert configs.precision_class(torch.float32, launch._precision(torch.float32)) == "fp32x3"
        matmul.allow_tf32 = True
        assert launch._precision(torch.float32) == "tf32"
    finally:
        matmul.allow_tf32 = before
    assert launch._precision(torch.bfloat16) == "tf32" and configs.precision_class(torch.bfloat16) == "half"


def test_only_bfloat16_is_upcast_under_the_interpreter():
    """Under the interpreter bfloat16 tiles are loaded as float32 (its bfloat16 dot is wrong); compiled, none is."""
    interpreted = TRITON_DEVICE == "cpu"
    assert launch._upcast(torch.bfloat16) is interpreted
    assert not launch._upcast(torch.float16) and not launch._upcast(torch.float32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=f"{NEEDS_CUDA}: two of them (device guard)")
def test_tensors_on_another_gpu_than_the_current_one():
    torch.cuda.set_device(0)
    kw, _ = make_case("base")
    kw = {k: v.to("cuda:1").float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    kw = {k: v.to("cuda:1") if torch.is_tensor(v) else v for k, v in kw.items()}
    got = gk.fused_paco_loss(**kw, backend="triton")
    want = gk.fused_paco_loss(**{k: v.cpu() if torch.is_tensor(v) else v for k, v in kw.items()}, backend="reference")
    assert got.device == torch.device("cuda:1")
    assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4, name="loss on cuda:1")


def test_gpu_model_counts_the_schedules_products():
    from tools import gpu_model

    # Pixel loss, 4096 pixels (a multiple of every tile): forward 1 product, row backward 2, column backward 2.
    sizes = dict(anchors=4096, batch=4096, queue=0, classes=150, dim=128)
    launches = gpu_model.schedule(sizes, "bf16")
    flops = {x.kernel: x.programs * x.flops for x in launches}
    one_product = 2 * 4096 * 4096 * 128
    assert flops == pytest.approx({"fwd": one_product, "bwd_rows": 2 * one_product, "bwd_cols batch": 2 * one_product})
    model = sum(x.seconds("bf16") for x in launches)
    assert model >= gpu_model.floor_seconds(sizes, "bf16") * 5 / 3 * 0.999  # never faster than its own FLOPs at peak


@pytest.mark.parametrize("classes", [0, 5])
def test_label_groups_group_exactly_the_rows_of_equal_label(classes):
    gen = torch.Generator().manual_seed(0)
    if classes:  # class indices, ignore_index -100, and two out-of-range labels (group C: reported, never summed)
        labels = torch.randint(0, classes, (23,), generator=gen)
        labels[::4] = -100
        labels[5], labels[7] = classes, -3
        queue_labels = torch.randint(0, classes, (11,), generator=gen)
    else:  # any int64: negative, huge, SimCLR-like distinct values
        labels = torch.randint(-3, 3, (23,), generator=gen) * (2**40)
        labels[10:] = torch.arange(13) + 7
        queue_labels = labels[torch.randint(0, 23, (11,), generator=gen)]
    groups = label_groups(labels, queue_labels, classes)
    keys = torch.cat([labels, queue_labels])
    row_group = torch.empty_like(keys)
    if classes:
        assert groups.group is None and groups.num_groups == classes + 1
        for c in range(classes):
            rows = groups.order[groups.bounds[c] : groups.bounds[c + 1]]
            assert (keys[rows] == c).all() and len(rows) == int((keys == c).sum())
            row_group[rows] = c
        outside = torch.cat([groups.order[: groups.bounds[0]], groups.order[groups.bounds[classes] :]])
        assert sorted(outside.tolist()) == sorted(((keys < 0) | (keys >= classes)).nonzero().flatten().tolist())
    else:
        starts = [p for p in range(len(keys)) if p == 0 or groups.sorted_labels[p - 1] != groups.sorted_labels[p]]
        for p in starts:
            rows = groups.order[p : groups.bounds[p]]
            assert (keys[rows] == keys[rows[0]]).all() and len(rows) == int((keys == keys[rows[0]]).sum())
            row_group[rows] = p
        assert torch.equal(groups.group, row_group[: len(labels)])
    assert torch.equal(torch.sort(groups.order).values, torch.arange(len(keys)))  # a permutation
    same_label = keys[:, None] == keys[None, :]
    if classes:
        in_class = (keys >= 0) & (keys < classes)
        same_label = same_label & in_class[:, None] & in_class[None, :]
        same_group = (row_group[:, None] == row_group[None, :]) & in_class[:, None] & in_class[None, :]
    else:
        same_group = row_group[:, None] == row_group[None, :]
    assert torch.equal(same_group, same_label)


@pytest.mark.parametrize("classes", [0, 3])
@pytest.mark.parametrize("normalize", [False, True])
def test_label_sums_kernel_matches_the_plain_formula(classes, normalize, monkeypatch):
    """Sums and counts of the contrast rows per group against ops/spec.py label_sums, with groups longer than the
    kernel's step (BLOCK_R 4); batch rows are columns, the queue's too."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "LABEL_SUMS_BLOCK_R", 4)
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    gen = torch.Generator().manual_seed(1)
    N, K, D = 29, 13, 7
    feats, queue = torch.randn(N, D, generator=gen) * 3, torch.randn(K, D, generator=gen)
    labels = torch.randint(0, classes, (N,), generator=gen) if classes else torch.randint(0, 4, (N,)) - 10**12
    queue_labels = labels[torch.randint(0, N, (K,), generator=gen)]
    if classes:  # ignored rows: in group C, no error
        labels[::5] = -100
    logits = torch.randn(N, classes) if classes else None
    x = ContrastInputs(*to_device([feats, labels, queue, queue_labels, logits], TRITON_DEVICE))
    p = OpParams(N, 0.1, 1.0, 1.0, 1.0, 0.0, 1.0, -1.0, False, -100, True, 1e-12, True, normalize, "mean")
    o = launch._Operands.of(x, p)
    got = launch._LabelSums(*to_device(list(vars(launch._label_sums(o, p, launch.direct)).values()), "cpu"))
    rows = torch.cat([feats, queue])
    if normalize:
        rows = torch.nn.functional.normalize(rows, dim=1)
    groups = label_groups(labels, queue_labels, classes)
    keys = torch.cat([labels, queue_labels])
    if classes:
        row_groups = torch.where((keys >= 0) & (keys < classes), keys, classes)
    else:
        row_groups = torch.searchsorted(groups.sorted_labels, keys)
    sums, counts = label_sums(rows, row_groups, torch.ones(N + K, dtype=torch.bool), groups.num_groups)
    present = counts > 0
    if classes:  # group C (ignored rows) is never a positive: written as 0, not summed
        present[classes] = False
        assert not got.sums[classes].any()
    assert_close(got.sums[present], sums[present], atol=1e-5, rtol=1e-5, name="sums")
    assert torch.equal(got.counts[present], counts[present])
    if classes:
        assert int(got.flag) == 0
        # A label out of the class range is reported (the forward raises on it), wherever it sorts
        for bad in (classes, -7):
            queue_labels[3] = bad
            x = ContrastInputs(*to_device([feats, labels, queue, queue_labels, logits], TRITON_DEVICE))
            assert int(launch._label_sums(launch._Operands.of(x, p), p, launch.direct).flag) == 1


def test_label_sums_are_taken_on_large_steps_only(monkeypatch):
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", None)

    def uses(A, N, K, C, batch_columns=True):
        meta = dict(device="meta")
        x = ContrastInputs(
            torch.empty(N, 128, **meta),
            torch.empty(N, dtype=torch.int64, **meta),
            torch.empty(K, 128, **meta) if K else None,
            torch.empty(K, dtype=torch.int64, **meta) if K else None,
            torch.empty(A, C, **meta) if C else None,
        )
        p = OpParams(A, 0.1, 1.0, 1.0, 1.0, 0.0, 1.0, -1.0, False, -100, batch_columns, 1e-12, True, False, "mean")
        return launch._Operands.of(x, p).label_sums

    assert uses(32768, 32768, 0, 19)  # pixel loss
    assert uses(8192, 8192, 0, 0)  # SupCon, 4096 samples x 2 views
    assert not uses(256, 512, 8192, 1000)  # PaCo LT step: the compares stay in the tiles
    assert not uses(512, 512, 0, 1000, batch_columns=False)  # PSC: no sample columns at all


@pytest.mark.parametrize("block_m,block_n", [(32, 16), (16, 32)])  # the diagonal crosses several tiles, or one
@pytest.mark.parametrize("cols_per_split", [None, 24])
@pytest.mark.parametrize("tma", [False, True])
def test_label_sums_with_rectangular_tiles_match_the_reference(monkeypatch, block_m, block_n, cols_per_split, tma):
    """The label-sums sweeps split each range into unmasked tiles, the tiles the diagonal crosses and the last
    partial tile: with anchor and column tiles of different sizes, and splits that start inside a tile row; tiles
    loaded by pointers, or by tensor descriptors (launch.tma_rows; D = 16: float32 rows 64 bytes apart, as TMA needs,
    and a row stride the interpreters of Triton 3.4 and 3.5 take: they ask for 16 elements where TMA asks 16 bytes)
    whose shape ends at the split's last column."""
    need_backend("triton", TRITON_DEVICE)
    import triton

    small = [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)]
    for kernel in (
        launch._paco_fwd_kernel,
        launch._paco_bwd_rows_kernel,
        launch._paco_bwd_cols_kernel,
        launch._paco_bwd_one_pass_kernel,
    ):
        monkeypatch.setattr(kernel, "configs", small)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", cols_per_split)
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    if tma and not tiles.DESCRIPTORS:
        pytest.skip(f"Triton {triton.__version__} has no tensor descriptors (tl.make_tensor_descriptor)")
    monkeypatch.setattr(launch, "FORCE_TMA", tma)
    runs = _tile_kernel_runs(monkeypatch)
    for case in ("base", "no-classes", "ignored", "normalize+centers"):
        _triton_matches_the_reference(case, seed=2, dim=16 if tma else 5)
    assert {r["TMA"] for r in runs if r["LABEL_SUMS"]} == {tma}, "the tiles were not loaded as asked"


def _tile_kernel_runs(monkeypatch):
    """The keyword arguments of every launch of the forward, row and column kernels."""
    runs = []
    for kernel in (launch._paco_fwd_kernel, launch._paco_bwd_rows_kernel, launch._paco_bwd_cols_kernel):
        original = kernel.run

        def run(*args, _original=original, **kwargs):
            runs.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    return runs


def _one_pass_runs(monkeypatch):
    """Count the one-pass kernel's launches (it shares its JIT function with the column kernel, so launch counters
    that name kernels by function cannot tell them apart), and check each asks for dAnchors."""
    runs = []
    kernel = launch._paco_bwd_one_pass_kernel
    original = kernel.run

    def run(*args, **kwargs):
        assert kwargs["ANCHOR_GRAD"] and kwargs["LABEL_SUMS"]
        runs.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", run)
    return runs


def _reduced_loss_and_grads(kw, grad_args, backend, reduction, upstream):
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    kw_dev = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()}
    leaves = {k: kw_dev[k].clone().requires_grad_() for k in grad_args}
    loss = gk.fused_paco_loss(**{**kw_dev, **leaves}, backend=backend, reduction=reduction)
    loss.backward(torch.tensor(upstream, dtype=loss.dtype, device=device))
    return loss.detach().cpu().double(), {k: v.grad.cpu().double() for k, v in leaves.items()}


@pytest.mark.parametrize("case", ["no-queue", "no-classes", "ignored", "normalize+centers", "no-positives"])
@pytest.mark.parametrize("reduction,upstream", [("mean", 1.7), ("sum", -0.6)])
def test_one_pass_backward_matches_the_reference(monkeypatch, small_tiles, case, reduction, upstream):
    """The one-pass backward (the batch columns' kernel adds their part of dAnchors by atomics, the row kernel skips
    them) against the float64 reference, on 16 x 16 tiles, with an upstream gradient other than 1 of either sign."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", None)  # the one pass applies to one column split
    monkeypatch.setattr(launch, "BACKWARD", "one-pass")
    runs = _one_pass_runs(monkeypatch)
    kw, grad_args = make_case(case, seed=7)
    single = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    double = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    got = _reduced_loss_and_grads(single, grad_args, "triton", reduction, upstream)
    assert len(runs) == 1, "the one-pass kernel did not run"
    want = _reduced_loss_and_grads(double, grad_args, "reference", reduction, upstream)
    assert_close(got[0], want[0], atol=2e-5, rtol=2e-5, name=f"{case} loss")
    for k in grad_args:
        assert_close(got[1][k], want[1][k], atol=2e-5, rtol=2e-5, name=f"{case} d{k}")


def test_one_pass_backward_in_float16_agrees_with_the_two_kernel_backward(monkeypatch, small_tiles):
    """float16 (the compiled path's half-precision products; bfloat16 dots are wrong under the interpreter): the one
    pass rounds the same tiles of H as the two kernels, so the two agree to float32 summation order."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", None)
    kw, grad_args = make_case("no-queue", seed=3)
    half = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    two = _reduced_loss_and_grads(half, grad_args, "triton", "mean", 3.0)
    monkeypatch.setattr(launch, "BACKWARD", "one-pass")
    runs = _one_pass_runs(monkeypatch)
    one = _reduced_loss_and_grads(half, grad_args, "triton", "mean", 3.0)
    assert len(runs) == 1
    for k in grad_args:
        scale = two[1][k].abs().max().item()
        assert scale > 0
        assert_close(one[1][k], two[1][k], atol=2e-3 * scale, rtol=0, name=f"d{k}")


@pytest.mark.parametrize("backward_shape", ["two-kernel", "one-pass"])
@pytest.mark.parametrize("case", ["normalize+centers", "normalize", "far-columns"])
def test_float16_with_padded_columns_and_a_small_lse_matches_float64(monkeypatch, small_tiles, case, backward_shape):
    """float16, 37 batch rows in 16-column tiles (the last tile padded). With normalize, rows of norm 0.05: 1/|x| = 20,
    and 20 times p 2^15 passes float16's range (the padding's 1/|x| is 1e12). "far-columns": one anchor of norm 0.01
    and columns of norm 900 pointing away from it (the corners of a regular simplex): every logit is -5 and the
    anchor's own 0, so a padded column's p = exp(0 - lse) is 7 and p 2^15 passes float16's range; padded columns must
    carry -inf logits (their zero rows times inf are NaN). Both backward shapes, against float64, an upstream
    gradient of 2.5."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", None)
    monkeypatch.setattr(launch, "BACKWARD", backward_shape)
    runs = _one_pass_runs(monkeypatch)
    kw, grad_args = make_case("no-classes" if case == "normalize" else case.replace("far-columns", "no-positives"))
    if case == "far-columns":
        n = kw["features"].shape[0]
        simplex = torch.eye(n, dtype=torch.float64) - 1.0 / n  # rows: inner products -1/n, norms ~1
        kw["features"] = torch.cat([simplex[:1] * 0.01, simplex[1:] * 900])
        kw.update(labels=torch.arange(n) % 4, num_anchors=1, gamma=1.0)
    else:
        kw.update(normalize=True)
        kw["features"] = kw["features"] * 0.05 / kw["features"].norm(dim=1, keepdim=True)
        kw["features"][::3] *= 40  # and rows of norm 2
    kw.update(temperature=0.05, base_temperature=0.05)
    half = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    rounded = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in half.items()}
    got = _reduced_loss_and_grads(half, grad_args, "triton", "mean", 2.5)
    assert len(runs) == (backward_shape == "one-pass")
    truth = _reduced_loss_and_grads(rounded, grad_args, "reference", "mean", 2.5)
    same = _reduced_loss_and_grads(half, grad_args, "reference", "mean", 2.5)
    assert_within(got[0], truth[0], same[0], "triton", torch.float16, name="loss")
    for k in grad_args:
        assert_within(got[1][k], truth[1][k], same[1][k], "triton", torch.float16, name=f"d{k}")


@pytest.mark.parametrize("label_sums", [False, True])
def test_the_max_runs_over_the_own_column_as_in_the_published_code(monkeypatch, small_tiles, label_sums):
    """lse = m + log(Z + 1e-12) with m the max over every column, the anchor's own (out of the denominator)
    included, as the published PaCo code and the reference take it: rows on a regular simplex of norm 3, so the own
    logit (180) leads every other (-5) by more than log(1e12) and the 1e-12 decides lse. The label-sums sweeps mask
    the own column before their max; the forward puts it back."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", label_sums)
    kw, grad_args = make_case("no-positives")
    n = kw["features"].shape[0]
    kw["features"] = (torch.eye(n, dtype=torch.float64) - 1.0 / n) * 3.04
    kw.update(labels=torch.arange(n) % 4, temperature=0.05, base_temperature=0.05)
    single = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    got = _reduced_loss_and_grads(single, grad_args, "triton", "sum", -1.5)
    want = _reduced_loss_and_grads(kw, grad_args, "reference", "sum", -1.5)
    assert want[0] > 100  # the regime asked for: lse is the own logit plus log(1e-12)
    assert_close(got[0], want[0], atol=0, rtol=2e-5, name="loss")
    assert_close(got[1]["features"], want[1]["features"], atol=2e-5, rtol=2e-5, name="dfeatures")


def test_one_pass_backward_is_not_taken_where_it_does_not_apply_or_determinism_is_asked(monkeypatch, small_tiles):
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "BACKWARD", "one-pass")
    runs = _one_pass_runs(monkeypatch)
    kw, grad_args = make_case("no-queue", seed=1)
    kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    _reduced_loss_and_grads(kw, grad_args, "triton", "none", [1.0] * kw["num_anchors"])  # one a per anchor
    assert runs == []
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        deterministic = _reduced_loss_and_grads(kw, grad_args, "triton", "mean", 1.0)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    assert runs == []  # torch's deterministic mode: the two kernels
    one_pass = _reduced_loss_and_grads(kw, grad_args, "triton", "mean", 1.0)
    assert len(runs) == 1  # and the one pass once it is off again, to the same gradients but summation order
    assert_close(one_pass[1]["features"], deterministic[1]["features"], atol=1e-6, rtol=1e-5, name="dfeatures")


def test_one_pass_backward_runs_unsplit_where_the_forward_splits_the_columns(monkeypatch, small_tiles):
    """Asked for, the one pass runs where it applies, whatever the split heuristic says (SupCon at 4096 samples on an
    H100 splits 3 ways, and the profile named "one-pass" timed the two kernels): the forward keeps its 3 splits, the
    backward's row sweep runs as one, and the gradients match the reference."""
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", 16)
    monkeypatch.setattr(launch, "BACKWARD", "one-pass")
    runs = _one_pass_runs(monkeypatch)
    rows = []
    original = launch._paco_bwd_rows_kernel.run

    def rows_run(*args, grid, **kwargs):
        rows.append(grid({"BLOCK_M": 16})[1])
        return original(*args, grid=grid, **kwargs)

    monkeypatch.setattr(launch._paco_bwd_rows_kernel, "run", rows_run)
    kw, grad_args = make_case("no-queue", seed=4)
    single = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    got = _reduced_loss_and_grads(single, grad_args, "triton", "mean", -0.7)
    assert len(runs) == 1 and rows == [1], (len(runs), rows)
    want = _reduced_loss_and_grads(kw, grad_args, "reference", "mean", -0.7)
    assert_close(got[0], want[0], atol=2e-5, rtol=2e-5, name="loss")
    for k in grad_args:
        assert_close(got[1][k], want[1][k], atol=2e-5, rtol=2e-5, name=f"d{k}")


def test_an_unknown_backward_shape_is_refused(monkeypatch, small_tiles):
    need_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(launch, "BACKWARD", "one_pass")
    kw, grad_args = make_case("no-queue", seed=1)
    kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=r"BACKWARD \(or GPACO_TRITON_BACKWARD\) is 'one_pass'; expected one of"):
        _reduced_loss_and_grads(kw, grad_args, "triton", "mean", 1.0)


@pytest.mark.parametrize("temperature", [-0.1, 0.0, float("nan")])
def test_the_launchers_refuse_a_temperature_that_is_not_positive(temperature):
    """The forward's sweeps scale the max of the raw products (right for a positive scale only); the public functions
    check the temperature, the launchers too, for a direct call of the op."""
    p = OpParams(8, temperature, 1.0, 1.0, 1.0, 0.0, 1.0, -1.0, False, -100, True, 1e-12, True, False, "mean")
    with pytest.raises(ValueError, match="temperature must be positive for the Triton kernels, got"):
        launch._scalars(p)


@pytest.mark.parametrize("block_m,block_n", [(32, 16), (16, 32)])  # tl.dot takes no side below 16 (Triton 3.2)
@pytest.mark.parametrize("reduction,upstream", [("none", None), ("mean", -1.3)])
@pytest.mark.parametrize("tma", [False, True])
def test_partial_tiles_never_read_the_rows_past_the_end(monkeypatch, block_m, block_n, reduction, upstream, tma):
    """The label-sums sweeps load their full tiles without a row mask (ROWS_IN_RANGE) and only the last, partial tile
    with one; by tensor descriptors (tma), the descriptor's shape ends at the last row. Features and queue here are
    the front rows of buffers whose rows past the end are NaN, with every sample an anchor (the column kernel's
    anchor tiles end where the features do): a partial tile that read past the end would bring NaN into the loss or
    the gradients."""
    need_backend("triton", TRITON_DEVICE)
    import triton

    small = [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)]
    for kernel in (launch._paco_fwd_kernel, launch._paco_bwd_rows_kernel, launch._paco_bwd_cols_kernel):
        monkeypatch.setattr(kernel, "configs", small)
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    if tma and not tiles.DESCRIPTORS:
        pytest.skip(f"Triton {triton.__version__} has no tensor descriptors (tl.make_tensor_descriptor)")
    monkeypatch.setattr(launch, "FORCE_TMA", tma)
    runs = _tile_kernel_runs(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    N, K, C, D = 37, 29, 5, 16  # no multiple of either tile; a row stride TMA and 3.4/3.5's interpreters take
    labels, queue_labels = torch.randint(0, C, (N,), generator=gen), torch.randint(0, C, (K,), generator=gen)
    features = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64), dim=1)
    queue = torch.randn(K, D, generator=gen, dtype=torch.float64)
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64)
    results = {}
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        device = TRITON_DEVICE if backend == "triton" else "cpu"
        padded = torch.full((N + 16, D), float("nan"), dtype=dtype, device=device)
        padded[:N] = features.to(device, dtype)
        padded_queue = torch.full((K + 16, D), float("nan"), dtype=dtype, device=device)
        padded_queue[:K] = queue.to(device, dtype)
        padded.requires_grad_()
        center_logits = logits.to(device, dtype).requires_grad_()
        loss = gk.fused_paco_loss(
            padded[:N], labels.to(device), num_anchors=N, queue=padded_queue[:K], queue_labels=queue_labels.to(device),
            center_logits=center_logits, alpha=0.7, gamma=0.5, temperature=0.3, backend=backend, reduction=reduction,
        )  # fmt: skip
        grad = torch.linspace(-1.0, 2.0, N, dtype=dtype) if upstream is None else torch.tensor(upstream, dtype=dtype)
        loss.backward(grad.to(device))
        results[backend] = [loss.detach(), padded.grad[:N], center_logits.grad]
    for name, got, want in zip(("loss", "dFeatures", "dLogits"), results["triton"], results["reference"]):
        assert torch.isfinite(got.cpu()).all(), name
        assert_close(got.cpu().double(), want.cpu(), atol=2e-5, rtol=2e-5, name=name)
    assert {r["TMA"] for r in runs} == {tma}, "the tiles were not loaded as asked"


def test_tile_loads_by_descriptors_only_where_the_copy_engine_can_take_the_rows(monkeypatch):
    """launch.tma_rows: the label-sums path only; never for rows a descriptor cannot describe (a start or a row pitch
    that is not a multiple of 16 bytes), even when forced; on CPU tensors only when forced (tests); never for the
    torch.compile path's launches (wrap_triton)."""
    p = OpParams(8, 0.1, 1.0, 1.0, 1.0, 0.0, 1.0, -1.0, False, -100, True, 1e-12, True, False, "mean")

    def operands(rows, dim, queue=0, offset=0):
        feats = torch.randn(rows * dim + offset).narrow(0, offset, rows * dim).view(rows, dim)
        kw = dict(queue=torch.randn(queue, dim), queue_labels=torch.zeros(queue, dtype=torch.long)) if queue else {}
        return launch._Operands.of(ContrastInputs(feats, torch.zeros(rows, dtype=torch.long), **kw), p)

    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "FORCE_TMA", True)
    assert launch.tma_rows(operands(8, 8), launch.direct)  # float32 rows 32 bytes apart
    assert launch.tma_rows(operands(8, 8, queue=4), launch.direct)
    assert not launch.tma_rows(operands(8, 5), launch.direct)  # rows 20 bytes apart
    assert not launch.tma_rows(operands(8, 8, offset=1), launch.direct)  # a start 4 bytes past an aligned one
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", False)
    assert not launch.tma_rows(operands(8, 8), launch.direct)  # the per-tile path loads by pointers
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "FORCE_TMA", None)
    assert not launch.tma_rows(operands(8, 8), launch.direct)  # CPU tensors: no copy engine
    assert not launch.tma_rows(operands(8, 8), torch.library.wrap_triton)
    monkeypatch.setattr(launch, "TMA", "yes")
    with pytest.raises(ValueError, match=r"GPACO_TRITON_TMA\) is 'yes'; expected one of 'auto', '1', '0'"):
        launch.tma_rows(operands(8, 8), launch.direct)


def test_descriptor_scratch_lends_an_allocator_for_its_launches_only_and_keeps_the_users():
    pytest.importorskip("triton.runtime._allocation")
    from triton.runtime import _allocation

    if not launch._device_descriptors_supported():
        pytest.skip("this triton has no context-local allocator for device-side descriptors")
    before = _allocation._allocator.get()
    assert isinstance(before, _allocation.NullAllocator), "a test left an allocator set"
    with launch._descriptor_scratch(torch.device("cuda", 0), True):
        assert not isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
    assert _allocation._allocator.get() is before
    with (
        launch._descriptor_scratch(torch.device("cuda", 0), False),
        launch._descriptor_scratch(torch.device("cpu"), True),
    ):
        assert _allocation._allocator.get() is before  # not asked: nothing set

    def users(size, alignment, stream):
        raise AssertionError("not called here")

    token = _allocation._allocator.set(users)
    try:
        with launch._descriptor_scratch(torch.device("cuda", 0), True):
            assert _allocation._allocator.get() is users
    finally:
        _allocation._allocator.reset(token)
