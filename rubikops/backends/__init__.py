"""The registry of rubikops backends.

A backend is one module that, when imported, registers kernels for the ops
of :mod:`rubikops._library` (or provides callables for them) and exposes:

- ``extract_cubes``: called with the op's schema arguments, with an
  ``.out(*schema_args, out=...)`` variant;
- ``sample_puzzle``: called with the sampler's schema arguments;
- ``features()``: a dict of what this installation of it has.

Adding a backend is that module plus one :func:`register` line below.  An
installed backend (its package is importable) that fails to load is kept
with its error: :func:`load_errors` reports it, ``rubikops.info`` prints it,
and the test suite fails on it; it is never dropped silently."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import warnings
from types import ModuleType
from typing import Optional


@dataclasses.dataclass
class Backend:
    name: str
    module: str                # imported to load the backend
    requires: Optional[str]    # the module whose presence means "installed"; None: always installed
    description: str
    loaded: Optional[ModuleType] = None
    error: Optional[str] = None

    @property
    def installed(self) -> bool:
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ImportError, ValueError):
            return False


REGISTRY: dict[str, Backend] = {}


def register(name: str, module: str, requires: Optional[str], description: str) -> Backend:
    """Add a backend; loaded by :func:`load_all` in registration order (the compiled kernels before the
    Triton ones, which fill in the CUDA kernels the compiled library lacks)."""
    if name in REGISTRY:
        raise ValueError(f"rubikops.backends.register: backend {name!r} is already registered")
    REGISTRY[name] = Backend(name, module, requires, description)
    return REGISTRY[name]


register("compiled", "rubikops.backends.compiled", "rubikops._C", "C++ CPU and CUDA kernels (csrc/)")
register("triton", "rubikops.backends.triton", "triton", "Triton kernels (CUDA; the Triton interpreter on CPU)")
register("torch", "rubikops.backends.plain_torch", None, "the plain-torch reference, any device")


def load(backend: Backend) -> Optional[ModuleType]:
    """Import one backend once; a failure is recorded in ``backend.error`` and warned about, not raised,
    so that a broken optional backend does not break ``import rubikops``."""
    if backend.loaded is not None or backend.error is not None or not backend.installed:
        return backend.loaded
    try:
        backend.loaded = importlib.import_module(backend.module)
    except Exception as exc:  # noqa: BLE001 - kept and reported, see the module docstring
        backend.error = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"rubikops: the {backend.name} backend is installed but failed to load ({backend.error})",
                      RuntimeWarning, stacklevel=2)
    return backend.loaded


def load_all() -> None:
    for backend in REGISTRY.values():
        load(backend)


def load_errors() -> dict:
    """{name: error} of every installed backend that failed to load."""
    return {b.name: b.error for b in REGISTRY.values() if b.error is not None}


def get(name: str) -> ModuleType:
    """The loaded module of backend ``name``, or a RuntimeError that says why there is none."""
    backend = REGISTRY.get(name)
    if backend is None:
        raise ValueError(f"rubikops: unknown backend {name!r}; registered: {sorted(REGISTRY)}")
    if backend.loaded is None:
        why = backend.error or f"its package ({backend.requires}) is not installed"
        raise RuntimeError(f"rubikops: the {name} backend is not available: {why}")
    return backend.loaded
