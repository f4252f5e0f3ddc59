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
            (", puzzle sampler" if compiled[f"{device}_sampler"] else "") + \
            (", augmentation draws" if compiled[f"{device}_draws"] else "")

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
    lines += [f"{what:22s}{_versions(packages, hint)}" for what, packages, hint in OPTIONAL]
    return "\n".join(lines)


# what the optional integrations need, and the line that installs it
OPTIONAL = [
    ("NRRD, MetaImage:", ["SimpleITK"], "pip install -r requirements-formats.txt"),
    ("DICOM series:", ["pydicom"], "pip install -r requirements-formats.txt"),
    ("nnU-Net backbones:", ["dynamic-network-architectures", "nnunetv2"],
     "pip install --no-deps -r requirements-nnunet.txt"),
    ("MONAI interop:", ["monai"], "pip install monai"),
]


def _versions(packages: list, hint: str) -> str:
    """Installed versions, read from the package metadata (nothing is imported), or what to install."""
    from importlib import metadata
    found, missing = [], []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    return ", ".join(found) if not missing else f"{', '.join(missing)} not installed ({hint})"


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    print(describe())
