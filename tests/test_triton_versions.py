"""The Triton releases the kernels support (gpaco_kernels/triton/requirements.py): the floors, the error and the
one-time warning a user below them gets, and the source constructs older releases reject. Runs without a GPU and
without the interpreter; `python -m tools.triton_matrix` compiles and tests the kernels with each release."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpaco_kernels.triton import configs, requirements

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCES = sorted((ROOT / "gpaco_kernels" / "triton").glob("*.py"))


@pytest.mark.parametrize(
    "torch_version, triton_version, complaint",
    [
        ("2.7.1+cu126", "3.3.1", None),
        ("2.13.0+cpu", "3.9.0", None),
        ("2.8.0", "3.4.0+git9f0a7b1c", None),
        ("2.6.0+cu124", "3.2.0", "found torch 2.6.0+cu124"),
        ("2.13.0", "3.2.0", "found triton 3.2.0 beside torch 2.13.0"),
        ("2.4.0", "3.0.0", "found torch 2.4.0"),
    ],
)
def test_the_floors_are_torch_2_7_and_triton_3_3(torch_version, triton_version, complaint):
    reason = requirements.unsupported(torch_version, triton_version)
    if complaint is None:
        assert reason is None
    else:
        assert "need torch >= 2.7 and triton >= 3.3" in reason and complaint in reason


def test_release_reads_major_and_minor():
    assert requirements.release("3.10.2") == (3, 10) and requirements.release("2.6.0a0+git") == (2, 6)
    assert requirements.release("nightly") == (0, 0)


def _run_with_fake_triton(tmp_path: Path, version: str, code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose `import triton` finds a stand-in of that version (nothing else in it)."""
    fake = tmp_path / "fake" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"__version__ = {version!r}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT)]))
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)


def test_a_triton_below_the_floor_is_named_and_auto_warns_once(tmp_path):
    done = _run_with_fake_triton(
        tmp_path,
        "3.2.0",
        """
        import warnings
        import gpaco_kernels as gk
        from gpaco_kernels.ops import dispatch
        assert "triton" not in gk.available_backends()
        print("REASON", dispatch.backend_unavailable_reason("triton"))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            picks = [dispatch.resolve_backend("auto", "cuda") for _ in range(3)]
        print("PICKS", picks)
        print("WARNINGS", len(seen), seen[0].message if seen else "")
        try:
            dispatch.resolve_backend("triton", "cuda")
        except ValueError as exc:
            print("EXPLICIT", exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "the Triton kernels need torch >= 2.7 and triton >= 3.3; found triton 3.2.0" in lines["REASON"]
    assert lines["PICKS"] == "['torch', 'torch', 'torch']"
    assert lines["WARNINGS"].startswith("1 backend='auto' runs the 'torch' backend on CUDA tensors")
    assert "found triton 3.2.0" in lines["WARNINGS"]
    assert lines["EXPLICIT"].startswith("backend='triton' is not available here: the Triton kernels need")


def test_the_floor_itself_loads(tmp_path):
    done = _run_with_fake_triton(
        tmp_path,
        "3.3.0",
        """
        from gpaco_kernels.triton import requirements
        requirements.check()
        print("OK")
        """,
    )
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr


def _jit_functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            yield node


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_chain_no_boolean_operators(path):
    """Triton 3.0-3.3 refuse `A and B and C` in a kernel (UnsupportedLanguageConstruct when it compiles, so only on a
    GPU): pairs, parenthesized."""
    chained = [
        f"{path.name}:{node.lineno} {fn.name}: {ast.unparse(node)}"
        for fn in _jit_functions(path)
        for node in ast.walk(fn)
        if isinstance(node, ast.BoolOp) and len(node.values) > 2
    ]
    assert not chained, chained


def test_the_kernels_are_found():
    assert sum(len(list(_jit_functions(p))) for p in KERNEL_SOURCES) >= 30


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_literals_are_float32(path):
    """Triton 3.2 types a float literal outside float32's normal range as float64, which then spreads through the
    arithmetic it meets (a float64 exponent's conversion to bfloat16 aborted 3.2's compiler)."""
    tiny, huge = 2.0**-126, 3.4028234663852886e38
    outside = [
        f"{path.name}:{node.lineno} {fn.name}: {node.value!r}"
        for fn in _jit_functions(path)
        for node in ast.walk(fn)
        if isinstance(node, ast.Constant) and isinstance(node.value, float)
        if node.value != 0 and not tiny <= abs(node.value) <= huge
    ]
    assert not outside, outside


def test_interpreters_before_3_7_need_numpy_below_2_4():
    reason = requirements.interpreter_unsupported("3.6.0", "2.4.6")
    assert reason.startswith("the interpreter of triton 3.6.0 needs numpy < 2.4 (found numpy 2.4.6)")
    assert requirements.interpreter_unsupported("3.6.0", "2.3.5") is None
    assert requirements.interpreter_unsupported("3.7.1", "2.4.6") is None


def test_an_interpreter_that_cannot_run_is_named(tmp_path):
    done = _run_with_fake_triton(
        tmp_path,
        "3.4.0",
        """
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        import numpy
        numpy.__version__ = "2.4.1"
        from gpaco_kernels.ops import dispatch
        print(dispatch.backend_unavailable_reason("triton"))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the interpreter of triton 3.4.0 needs numpy < 2.4 (found numpy 2.4.1)")


def test_candidates_follow_the_triton_release():
    """A candidate that an older release compiles with a spill in its loop is left out there (configs.CLEAN_FROM)."""
    on = lambda release: configs.candidates("fwd", "half", True, 80, triton_release=release)  # noqa: E731
    assert (64, 64, 4, 3) in on((3, 9)) and (64, 64, 4, 3) not in on((3, 8))
    assert (64, 128, 8, 3) in on((3, 9)) and (64, 128, 8, 3) not in on((3, 3))
    columns = lambda release: configs.candidates("bwd_cols", "half", False, 80, triton_release=release)  # noqa: E731
    assert columns((3, 3)) == [(64, 64, 8, 1)] and columns((3, 9)) == [(64, 64, 8, 2)]  # a stand-in, then none
    firsts = [first for clean_from in configs.CLEAN_FROM.values() for first in clean_from.values()]
    assert all(first > requirements.TRITON_FLOOR for first in firsts), "clean on every supported release: unlist it"


@pytest.mark.parametrize("release", [(3, minor) for minor in range(3, 10)])
def test_every_kernel_has_candidates_on_every_supported_release(release):
    empty = [
        (kind, precision, label_sums, arch, tma)
        for kind in configs.KERNELS
        for precision in configs.PRECISION_CLASSES
        for label_sums in (False, True)
        for arch in (80, 90)
        for tma in (False, True)
        if not configs.candidates(kind, precision, label_sums, arch, tma, triton_release=release)
    ]
    assert not empty
