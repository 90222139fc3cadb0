"""Build script: the Python package, plus the C++ extension when csrc/ has sources.

This file is the source of truth for the wheel. CMakeLists.txt compiles the same csrc/ sources for C++-only
work (kernel unit tests, sanitizers) and is not used to build the package.
"""

import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "core", "*.cpp")))


def extension_kwargs():
    # No C++ sources yet (or a build that asked for none): a pure-Python package that needs no compiler.
    if not SOURCES or os.environ.get("GPACO_NO_EXTENSION") == "1":
        return {}
    # Imported only here so that a pure-Python install never needs torch at build time.
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    extra = ["-O3", "-fopenmp", "-Wno-psabi"]
    if os.environ.get("GPACO_NATIVE") == "1":
        # Binary for this CPU only; fine for a source build, never for a distributed wheel.
        extra.append("-march=native")
    ext = CppExtension(
        "gpaco_kernels._C",
        SOURCES,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": extra},
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(**extension_kwargs())
