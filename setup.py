"""Build rubikops and its compiled library ``rubikops._C``.

Install with ``pip install --no-build-isolation -e .`` *after* torch: setup.py
imports torch to build against it, and build isolation would make pip install
an unpinned torch (a multi-GB CUDA build) into a throw-away build environment.

CUDA kernels are built when a CUDA toolkit is found *and* torch is a CUDA
build, never from ``torch.cuda.is_available()`` (build machines often have no
GPU).  Override with RUBIKOPS_FORCE_CUDA=1 or RUBIKOPS_SKIP_CUDA=1.  Set
RUBIKOPS_SKIP_EXTENSION=1 to install the pure-Python package (the reference
and Triton backends still work).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("RUBIKOPS_SKIP_EXTENSION"):
        print("rubikops build: RUBIKOPS_SKIP_EXTENSION set, building no compiled library")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    torch_has_cuda = torch.version.cuda is not None
    if _flag("RUBIKOPS_SKIP_CUDA"):
        with_cuda, why = False, "RUBIKOPS_SKIP_CUDA=1"
    elif _flag("RUBIKOPS_FORCE_CUDA"):
        with_cuda, why = True, "RUBIKOPS_FORCE_CUDA=1"
    elif CUDA_HOME is None:
        with_cuda, why = False, "no CUDA toolkit found (set CUDA_HOME)"
    elif not torch_has_cuda:
        with_cuda, why = False, f"torch {torch.__version__} is a CPU build"
    else:
        with_cuda, why = True, f"CUDA toolkit at {CUDA_HOME}, torch CUDA {torch.version.cuda}"

    # csrc/*.cpp: the extension module (the op schemas are in rubikops/_schema.py); csrc/cpu: the CPU kernels.
    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(f"{ROOT}/csrc/*.cpp")) + sorted(glob.glob(f"{ROOT}/csrc/cpu/*.cpp"))]
    # at::parallel_for runs on one thread unless OpenMP is enabled by hand;
    # -g0 cuts the build from ~57 s to ~37 s and the .so from 11 MB to 0.25 MB.  -ffp-contract=off: the
    # kernels' AVX2 clones (FMA) must round each product and sum as the reference does, bit for bit.
    # -fno-trapping-math: no value changes, but the selects of a loop may compute both sides, so the
    # intensity stage's gamma loop vectorises (GCC 12: "control flow in loop" without it).
    cxx = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    extra = {"cxx": cxx}
    macros = []
    ext_cls = CppExtension
    if with_cuda:
        ext_cls = CUDAExtension
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(f"{ROOT}/csrc/cuda/*.cu")) + sorted(glob.glob(f"{ROOT}/csrc/cuda/*.cpp"))]
        extra["nvcc"] = ["-O3", "-lineinfo"]  # exact rounding comes from __fmul_rn/__fadd_rn in the kernel
        macros.append(("RUBIKOPS_WITH_CUDA", None))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        print(f"rubikops build: TORCH_CUDA_ARCH_LIST={arch or '(torch default)'}")
    print(f"rubikops build: torch {torch.__version__}, CPU kernel yes, CUDA kernel {'yes' if with_cuda else 'no'} ({why})")
    print(f"rubikops build: sources {sources}")
    ext = ext_cls(
        "rubikops._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        define_macros=macros,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=_flag("RUBIKOPS_USE_NINJA"))}


ext_modules, cmdclass = _extensions()

setup(
    name="rubikops",
    version="0.1.0",
    description="Fused GPU/CPU kernels for Rubik's-cube self-supervised pretraining of 3D medical networks",
    packages=find_packages(include=["rubikops", "rubikops.*"]),
    python_requires=">=3.10",
    # torch is pinned to a range the CPU wheel on the dev machines satisfies; an
    # unpinned torch resolves to a multi-GB CUDA build on a fresh environment.
    install_requires=["torch>=2.4,<2.14", "numpy", "nibabel"],
    extras_require={"triton": ["triton"], "viz": ["matplotlib"], "test": ["pytest", "pytest-benchmark"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
