"""Fixtures shared by the train/ script tests."""
import pytest

from .helpers import smooth_volumes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four smooth 36x40x34 NIfTI volumes with a bright 'head' (one folder per test module)."""
    return smooth_volumes(tmp_path_factory.mktemp("scans"))
