"""Compile the Triton kernel for an H100 (sm_90) without a GPU: catches
lowering errors that the interpreter cannot see.

Runs in a subprocess because the test session has the interpreter switched on
(TRITON_INTERPRET=1), which replaces every @triton.jit function."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

FLAGS = ("HAS_INDEX", "HAS_ROT", "HAS_MASK", "KEEP_RANDOM", "HAS_SCALE", "HAS_SHIFT", "HAS_LO", "HAS_HI", "ARITH",
         "F64", "PARAMS_IN_TENSOR", "VIA_F32", "BF16_RTNE", "AFFINE", "HAS_INTENSITY")

SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

for case in json.loads(sys.argv[1]):
    module = importlib.import_module(case.get("module", "rubikops.triton_kernels.extract_cubes"))
    kernel = getattr(module, case["kernel"])
    const = {k: v for k, v in case["const"].items() if k in kernel.arg_names}
    sig = {}
    for n in kernel.arg_names:
        if n in const:
            sig[n] = "constexpr"
        elif n in case["ptrs"]:
            sig[n] = case["ptrs"][n]
        elif n in ("scale_value", "shift_value", "clamp_lo", "clamp_hi", "fill"):
            sig[n] = "fp32"
        else:  # Triton types small Python ints as i32 at launch, large ones as i64
            sig[n] = "i32" if case["small_ints"] else "i64"
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32))
    assert "cubin" in compiled.asm, case
    print("lowered", case["src"], case["out"], sorted(k for k, v in const.items() if v is True),
          "convert_layout", compiled.asm["ttgir"].count("ttg.convert_layout"))
"""

CASES = [
    ("fp32", "fp32", (), True),
    ("fp32", "fp32", ("HAS_ROT",), False),
    ("bf16", "bf16", ("HAS_ROT", "HAS_MASK", "KEEP_RANDOM", "HAS_INDEX"), True),
    ("i16", "fp32", ("HAS_ROT", "ARITH", "HAS_SCALE", "HAS_SHIFT", "HAS_LO", "HAS_HI", "HAS_MASK"), True),
    ("fp64", "fp16", ("HAS_ROT", "ARITH", "F64", "PARAMS_IN_TENSOR", "VIA_F32", "HAS_MASK", "KEEP_RANDOM"), False),
    ("u8", "u8", ("HAS_MASK",), True),
    ("i16", "bf16", ("HAS_ROT", "VIA_F32", "HAS_MASK"), True),  # integer source into a half output, via float32
    # the per-cube intensity stage: exp2/log2 gamma, the uint64 noise hash, a float64 key to uint64
    ("fp32", "fp32", ("HAS_ROT", "ARITH", "HAS_INTENSITY", "HAS_MASK", "KEEP_RANDOM"), True),
    ("fp64", "fp32", ("HAS_ROT", "ARITH", "F64", "PARAMS_IN_TENSOR", "HAS_INTENSITY"), False),
]


def _lower(cases):
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("lowered")]
    assert len(lines) == len(cases)
    return lines


def test_kernel_lowers_for_sm90():
    cases = []
    for src_t, out_t, flags, small in CASES:
        const = dict(CD=64, CH=64, CW=64, TO=1, TR=32, TW=64, PER_CUBE=128, WIDE=not small,
                     **{f: f in flags for f in FLAGS})
        if small:  # Triton passes integer arguments equal to 1 as constants (unit W stride, C = 1)
            const.update(s_w=1, C=1, seed_hi=1)  # a seed whose high half is 1
        ptrs = dict(src_ptr=f"*{src_t}", out_ptr=f"*{out_t}", origins_ptr="*i64", index_ptr="*i32",
                    rot_ptr="*i64", mask_ptr="*i1", scale_ptr="*fp64", shift_ptr="*fp32", params_ptr="*fp64",
                    intensity_ptr="*fp64")
        cases.append(dict(kernel="_extract_cubes_kernel", const=const, ptrs=ptrs, small_ints=small, src=src_t,
                          out=out_t))
    lines = _lower(cases)
    # Layout conversions go through shared memory.  Only the transposed load
    # of W-moving codes needs one; a second (the W-keeping branch converted to
    # a shared layout and back) cost that path on an H100 (docs/performance.md).
    for line in lines:
        assert int(line.split("convert_layout")[1]) <= 1, line


BACKWARD_CASES = [
    ("fp32", "fp32", "fp32", ("HAS_ROT", "HAS_SCALE", "HAS_SHIFT", "HAS_LO", "HAS_HI"), True),
    ("bf16", "bf16", "fp32", ("HAS_ROT", "HAS_MASK", "KEEP_RANDOM", "HAS_INDEX"), True),
    ("fp64", "fp64", "fp64", ("HAS_ROT", "F64", "PARAMS_IN_TENSOR", "HAS_LO", "HAS_MASK"), False),
    # The affine read's eight-corner spread, its clamp recomputing the interpolated value.
    ("fp32", "fp32", "fp32", ("AFFINE", "HAS_ROT", "HAS_SCALE", "HAS_LO", "HAS_HI", "HAS_MASK", "KEEP_RANDOM"), True),
    ("fp64", "fp64", "fp64", ("AFFINE", "HAS_INDEX", "F64", "PARAMS_IN_TENSOR", "HAS_HI"), False),
]


def test_backward_kernel_lowers_for_sm90():
    """The backward kernel's atomics (float32 and float64), also the affine read's, lower for sm_90."""
    cases = []
    for src_t, grad_t, acc_t, flags, small in BACKWARD_CASES:
        const = dict(CD=64, CH=64, CW=64, BLOCK=1024, WIDE=not small, GRAD_FLAT=not small,
                     **{f: f in flags for f in FLAGS})
        if small:  # also a strided gradient whose W stride is 1
            const.update(s_w=1, C=1, seed_hi=1, g_2=1)  # a seed whose high half is 1
        ptrs = dict(grad_ptr=f"*{grad_t}", acc_ptr=f"*{acc_t}", src_ptr=f"*{src_t}", affine_ptr="*fp64",
                    box_ptr="*i32", origins_ptr="*i64",
                    index_ptr="*i64", rot_ptr="*i64", mask_ptr="*i1", scale_ptr="*fp64", shift_ptr="*fp64",
                    params_ptr="*fp64")
        cases.append(dict(kernel="_extract_cubes_backward_kernel", const=const, ptrs=ptrs, small_ints=small,
                          src=src_t, out=acc_t))
    _lower(cases)


AFFINE_CASES = [
    ("fp32", "fp32", ("HAS_ROT", "HAS_INDEX", "HAS_SCALE", "HAS_SHIFT", "HAS_LO", "HAS_HI"), True),
    ("bf16", "bf16", ("HAS_ROT", "HAS_MASK", "KEEP_RANDOM", "HAS_INDEX"), True),
    ("i16", "fp16", ("HAS_ROT", "HAS_SCALE", "HAS_SHIFT", "VIA_F32", "HAS_MASK"), True),
    ("fp64", "fp32", ("HAS_ROT", "F64", "PARAMS_IN_TENSOR", "HAS_LO", "HAS_MASK"), False),
    ("fp32", "fp32", ("HAS_ROT", "HAS_INDEX", "HAS_INTENSITY", "HAS_LO", "HAS_MASK", "KEEP_RANDOM"), True),
    ("fp64", "fp64", ("F64", "PARAMS_IN_TENSOR", "HAS_INTENSITY"), False),
]


def test_affine_kernel_lowers_for_sm90():
    """The affine read (float64 positions and interpolation, eight gathers) lowers for sm_90."""
    cases = []
    for src_t, out_t, flags, small in AFFINE_CASES:
        const = dict(CD=64, CH=64, CW=64, BLOCK=1024, WIDE=not small, **{f: f in flags for f in FLAGS})
        if small:
            const.update(s_w=1, C=1, seed_hi=1)
        ptrs = dict(src_ptr=f"*{src_t}", out_ptr=f"*{out_t}", affine_ptr="*fp64", box_ptr="*i32",
                    origins_ptr="*i64",
                    index_ptr="*i64", rot_ptr="*i64", mask_ptr="*i1", scale_ptr="*fp64", shift_ptr="*fp32",
                    params_ptr="*fp64", intensity_ptr="*fp64")
        cases.append(dict(kernel="_extract_cubes_affine_kernel", const=const, ptrs=ptrs, small_ints=small,
                          src=src_t, out=out_t))
    _lower(cases)
