import itertools

import pytest
import torch

from rubikops import rotations as R


def test_codes_round_trip():
    for code in range(R.NUM_CODES):
        order, flips = R.decode(code)
        assert R.make_code(order, flips) == code
    assert R.make_code((0, 1, 2), 0b101) == R.ROT180_H


def test_named_codes_flip_the_right_axes():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(R.apply_code(x, R.ROT180_D), x.flip(2).flip(3))
    assert torch.equal(R.apply_code(x, R.ROT180_H), x.flip(1).flip(3))
    assert torch.equal(R.apply_code(x, R.ROT180_W), x.flip(1).flip(2))
    assert torch.equal(R.apply_code(x, R.IDENTITY), x)


def test_proper_rotations_are_the_rotation_group():
    """24 distinct rotations, closed under composition, determinant +1, and each is
    a product of 90-degree turns (torch.rot90)."""
    assert len(set(R.PROPER_ROTATIONS)) == 24
    for a, b in itertools.product(R.PROPER_ROTATIONS, repeat=2):
        assert R.compose(a, b) in R.PROPER_ROTATIONS
    x = torch.randn(4, 4, 4)
    frontier = [x]
    results = {tuple(x.flatten().tolist())}
    while frontier:
        nxt = []
        for y in frontier:
            for dims in ((0, 1), (1, 2), (0, 2)):
                z = torch.rot90(y, 1, dims)
                key = tuple(z.flatten().tolist())
                if key not in results:
                    results.add(key)
                    nxt.append(z)
        frontier = nxt
    assert len(results) == 24
    coded = {tuple(R.apply_code(x, c).flatten().tolist()) for c in R.PROPER_ROTATIONS}
    assert coded == results


@pytest.mark.parametrize("a,b", [(5, 3), (9, 17), (41, 30), (12, 47)])
def test_compose_and_inverse(a, b):
    x = torch.randn(3, 3, 3)
    assert torch.equal(R.apply_code(R.apply_code(x, a), b), R.apply_code(x, R.compose(a, b)))
    assert torch.equal(R.apply_code(R.apply_code(x, a), R.inverse(a)), x)


def test_bad_codes():
    with pytest.raises(ValueError, match="rotation code"):
        R.decode(48)
    with pytest.raises(ValueError, match="axis_order"):
        R.make_code((0, 0, 1))
    with pytest.raises(ValueError, match="flips"):
        R.make_code((0, 1, 2), 9)


def test_preserves_shape():
    assert R.preserves_shape(R.make_code((1, 0, 2)), (5, 5, 3))
    assert not R.preserves_shape(R.make_code((2, 1, 0)), (5, 5, 3))
    assert R.moves_w(R.make_code((2, 1, 0))) and not R.moves_w(R.ROT180_H)
