"""Issue 28 on the pretext tasks: bad arguments are one-line ValueError/TypeError naming the argument,
never an IndexError, a RuntimeError or a silently wrong result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rubikops.data import VolumeBank
from rubikops.tasks import get

V = torch.randn(3, 1, 30, 30, 30, generator=torch.Generator().manual_seed(0))
SMALL = {"rubik": dict(cube_size=6), "jigsaw": dict(cube_size=4, gap=0), "rotation": dict(cube_size=6),
         "relative_location": dict(cube_size=4, gap=0)}


def one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


# -- item 4: raw tracebacks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("index, match", [(torch.tensor([0, 5]), "out of range|is out of range"),
                                          (torch.tensor([0, -1]), "out of range|is out of range"),
                                          (torch.tensor([0.0, 1.0]), "index must be"),
                                          (torch.tensor([[0, 1]]), "index must be")])
def test_a_bad_index_is_a_clear_error_for_every_task(name, index, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        get(name)(**SMALL[name])(V, index=index)
    one_line(info)


def test_get_refuses_a_name_that_is_not_a_string():
    with pytest.raises(TypeError, match="the name must be a string"):
        get(["rubik"])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_volumes_on_the_meta_device_are_refused(name):
    with pytest.raises(ValueError, match="meta device"):
        get(name)(**SMALL[name])(torch.empty(3, 1, 30, 30, 30, device="meta"))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("cube", [10**6, 10**12])
def test_a_huge_cube_size_without_validation_is_refused(name, cube):
    bank = VolumeBank([np.random.default_rng(i).random((1, 30, 30, 30), dtype=np.float32) for i in range(3)])
    task = get(name)(**dict(SMALL[name], cube_size=cube), validate=False)
    with pytest.raises(ValueError, match="larger than the volumes' storage") as info:
        task(bank)
    one_line(info)


# -- item 5: numbers silently accepted ----------------------------------------------------------------------
@pytest.mark.parametrize("window", [("window", 0, float("inf")), ("window", float("-inf"), 1),
                                    ("window", float("nan"), 1), ("window", "0", "1")])
def test_a_window_that_is_not_two_finite_numbers_is_refused(window):
    with pytest.raises(ValueError, match="normalize window"):
        get("rotation")(cube_size=6, normalize=window)


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_volume_shapes_with_another_row_count_than_the_volumes_are_refused(rows):
    shapes = torch.tensor([[30, 30, 30]] * rows)
    with pytest.raises(ValueError, match=r"volume_shapes must be a \(3, 3\) int64 tensor") as info:
        get("rotation")(cube_size=6)(V, index=torch.tensor([0, 1, 2]), volume_shapes=shapes)
    one_line(info)


def test_float_volume_shapes_are_refused():
    with pytest.raises(ValueError, match="volume_shapes must be"):
        get("rotation")(cube_size=6)(V, volume_shapes=torch.full((3, 3), 30.0))


@pytest.mark.parametrize("name", ["rubik", "jigsaw"])
@pytest.mark.parametrize("count", [2.5, "10", True])
def test_num_permutations_must_be_an_int(name, count):
    with pytest.raises((ValueError, TypeError), match="num_permutations"):
        get(name)(cube_size=4, num_permutations=count)


@pytest.mark.parametrize("option", ["mask_prob", "mask_keep_prob", "mask_fill"])
def test_mask_options_must_be_numbers(option):
    with pytest.raises(TypeError, match=f"{option} must be a number"):
        get("rubik")(cube_size=4, **{option: "0.5"})


def test_zscore_of_a_quantised_tensor_uses_physical_statistics():
    """normalize='zscore' on an int16 tensor with its (scale, shift) and no stats: the cubes are z-scores of
    the physical values (reference: NumPy over stored * scale + shift), not of the stored integers."""
    rng = np.random.default_rng(3)
    stored = torch.from_numpy(rng.integers(-2000, 2000, size=(2, 1, 12, 12, 12)).astype(np.int16))
    scale, shift = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([100.0, -40.0], dtype=torch.float64)
    cubes, t = get("rotation")(cube_size=12, normalize="zscore")(stored, intensity=(scale, shift))
    for b in range(2):
        phys = stored[b].double().numpy() * float(scale[b]) + float(shift[b])
        expected = (phys - phys.mean()) / phys.std(ddof=1)
        got = cubes[b, 0].double().numpy()
        # the cube is the whole volume, rotated: compare the sorted values
        np.testing.assert_allclose(np.sort(got.ravel()), np.sort(expected.ravel()), rtol=1e-4, atol=1e-4)
