"""`python -m rubikops.info`: versions and which backends this installation has."""
from __future__ import annotations

import platform

import torch


def describe() -> str:
    import rubikops
    from rubikops import ops

    b = rubikops.available_backends()
    compiled, triton = b["compiled"], b["triton"]

    def kernel(device):
        if not compiled["loaded"] or not compiled[device]:
            return "no"
        return "yes" + (" (forward and backward)" if compiled[f"{device}_backward"] else "") + \
            (", puzzle sampler" if compiled[f"{device}_sampler"] else "")

    lines = [
        f"rubikops {rubikops.__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"compiled CPU kernel:  {kernel('cpu')}",
        f"compiled CUDA kernel: {kernel('cuda')}",
        f"triton:               {_triton_version() or 'not installed'}"
        + (" (interpreter on: TRITON_INTERPRET=1)" if ops.interpreter_enabled() else ""),
        "torch reference:      yes",
        f"CUDA device:          {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}",
    ]
    for name, info in b.items():
        if info["error"]:
            lines.append(f"{name} backend installed but failed to load: {info['error']}")
    has_cuda = compiled["loaded"] and compiled["cuda"]
    default_cuda = "CUDA C++" if has_cuda else ("Triton" if triton["loaded"] else "the torch reference")
    lines.append(f"default on CPU tensors: {'compiled C++ kernel' if compiled['loaded'] else 'the torch reference'}; "
                 f"on CUDA tensors: {default_cuda}")
    return "\n".join(lines)


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    print(describe())
