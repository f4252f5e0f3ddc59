"""`python -m rubikops.info`: versions and which backends this installation has."""
from __future__ import annotations

import platform

import torch


def describe() -> str:
    import rubikops
    from rubikops import ops

    b = rubikops.available_backends()
    lines = [
        f"rubikops {rubikops.__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"compiled CPU kernel:  {'yes' if b['compiled_cpu'] else 'no'}"
        + (" (forward and backward)" if b["compiled_cpu_backward"] else "")
        + (", puzzle sampler" if b["compiled_cpu_sampler"] else ""),
        f"compiled CUDA kernel: {'yes' if b['compiled_cuda'] else 'no'}"
        + (" (forward and backward)" if b["compiled_cuda_backward"] else "")
        + (", puzzle sampler" if b["compiled_cuda_sampler"] else ""),
        f"triton:               {_triton_version() or 'not installed'}"
        + (" (interpreter on: TRITON_INTERPRET=1)" if ops.interpreter_enabled() else ""),
        "torch reference:      yes",
        f"CUDA device:          {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}",
    ]
    if b["load_error"]:
        lines.append(f"compiled library failed to load: {b['load_error']}")
    default_cuda = "CUDA C++" if b["compiled_cuda"] else ("Triton" if b["triton"] else "none")
    lines.append(f"default on CPU tensors: compiled C++ kernel; on CUDA tensors: {default_cuda}")
    return "\n".join(lines)


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    print(describe())
