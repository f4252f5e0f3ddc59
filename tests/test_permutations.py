import numpy as np
import pytest
import torch

from rubikops.permutations import hamming, load_permutation_set, min_distance, permutation_set, pgl2_7


def _is_perm_set(p, n):
    return bool((p.sort(1).values == torch.arange(n)).all()) and len(torch.unique(p, dim=0)) == len(p)


@pytest.mark.parametrize("k", [10, 100, 336])
def test_maxmin_reaches_distance_six_for_eight_cells(k):
    p = permutation_set(8, k)
    assert p.shape == (k, 8) and _is_perm_set(p, 8)
    assert min_distance(p) >= 6


def test_maxmin_beyond_336_and_other_grids():
    p = permutation_set(8, 1000)
    assert _is_perm_set(p, 8) and min_distance(p) >= 4  # what the greedy extension reaches (documented)
    q = permutation_set(27, 100)
    assert _is_perm_set(q, 27) and min_distance(q) >= 20


def test_pgl27_is_sharply_three_transitive():
    g = torch.from_numpy(pgl2_7())
    assert min_distance(g) == 6
    assert len({tuple(r[:3].tolist()) for r in g}) == 336  # each ordered triple of images exactly once


def test_maxmean_matches_its_definition():
    """Every permutation after the first maximises the mean distance to those before it."""
    import itertools
    p = permutation_set(5, 12, method="maxmean", seed=3)
    allp = torch.tensor(list(itertools.permutations(range(5))))
    for i in range(1, len(p)):
        chosen = p[:i]
        mean = hamming(allp, chosen).double().mean(1)
        taken = (hamming(allp, chosen) == 0).any(1)
        mean[taken] = -1
        assert mean[(allp == p[i]).all(1)].item() == mean.max().item()
    assert min_distance(permutation_set(8, 100, method="maxmean")) == 2  # like the published sets


def test_deterministic_and_seeded():
    assert torch.equal(permutation_set(8, 50, seed=1), permutation_set(8, 50, seed=1))
    assert not torch.equal(permutation_set(8, 50, seed=1), permutation_set(8, 50, seed=2))


def test_load_from_npy(tmp_path):
    p = permutation_set(8, 20)
    f = tmp_path / "perms.npy"
    np.save(f, p.numpy() + 1)  # 1-based, as MATLAB-made sets are
    assert torch.equal(load_permutation_set(f, 8), p)
    bad = tmp_path / "bad.npy"
    arr = p.numpy().copy()
    arr[3, 0] = arr[3, 1]
    np.save(bad, arr)
    with pytest.raises(ValueError, match="row 3 .* is not a permutation"):
        load_permutation_set(bad)
    np.save(bad, np.concatenate([p.numpy(), p.numpy()[:1]]))
    with pytest.raises(ValueError, match="holds repeated permutations"):
        load_permutation_set(bad)
    with pytest.raises(ValueError, match="has 8 cells per permutation, the grid has 27"):
        load_permutation_set(f, 27)
    with pytest.raises(FileNotFoundError):
        load_permutation_set(tmp_path / "missing.npy")
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_permutation_set(junk)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        permutation_set(8, 10, method="best")
    with pytest.raises(ValueError, match="exceeds"):
        permutation_set(3, 7)
