"""python -m rubikops.info: the optional integrations' lines."""
import numpy as np

from rubikops.info import OPTIONAL, _versions, describe


def test_optional_packages_are_named_with_their_version_or_the_install_line():
    assert _versions(["numpy"], "x") == f"numpy {np.__version__}"
    assert _versions(["numpy", "no-such-package-rubikops"], "pip install it") == \
        "no-such-package-rubikops not installed (pip install it)"
    text = describe()
    for what, _, _ in OPTIONAL:
        assert what in text


def test_the_compiled_kernels_line_names_what_the_build_has(monkeypatch):
    import rubikops

    real = rubikops.available_backends()
    for sampler, draws in ((True, True), (True, False), (False, True)):
        fake = {k: dict(v) for k, v in real.items()}
        fake["compiled"].update(loaded=True, cpu=True, cpu_backward=True, cpu_sampler=sampler, cpu_draws=draws)
        monkeypatch.setattr(rubikops, "available_backends", lambda fake=fake: fake)
        line = next(line for line in describe().splitlines() if line.startswith("compiled CPU kernel:"))
        assert ("puzzle sampler" in line) == sampler and ("augmentation draws" in line) == draws, line
