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
