import dataclasses
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import rubikops
from rubikops.models import BACKBONES, SiameseOctad, build_encoder, puzzle_loss, puzzle_metrics


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("grid,pool,cube_heads", [((2, 2, 2), "flatten", True), ((3, 3, 3), "avg", True),
                                                   ((2, 2, 2), "avg", False), ((2, 2, 2), "grid", True)])
def test_shapes_for_each_backbone_and_grid(backbone, grid, pool, cube_heads):
    torch.manual_seed(0)
    M = grid[0] * grid[1] * grid[2]
    enc = build_encoder(backbone, in_channels=2, width=4)
    net = SiameseOctad(enc, M, 10, mask_head=True, hidden=16, in_channels=2, cube_size=(16, 12, 16), pool=pool,
                       cube_heads=cube_heads)
    out = net(torch.randn(3, M, 2, 16, 12, 16))
    assert out.permutation.shape == (3, 10) and out.rotation.shape == (3, M, 2) and out.mask.shape == (3, M)
    stages = enc.stages(torch.randn(1, 2, 16, 16, 16))
    assert [s.shape[1] for s in stages] == enc.stage_channels and stages[-1].shape[1] == enc.out_channels
    net_all = SiameseOctad(enc, M, 10, rotation_mode="all", hidden=0, in_channels=2, cube_size=(16, 12, 16))
    assert net_all(torch.randn(1, M, 2, 16, 12, 16)).rotation.shape == (1, M, 24)


def test_any_module_as_encoder():
    enc = torch.nn.Sequential(torch.nn.Conv3d(1, 5, 3, stride=2), torch.nn.ReLU())  # no out_channels attribute
    net = SiameseOctad(enc, 8, 6, hidden=8, cube_size=(9, 9, 9), pool="avg")
    assert net(torch.randn(2, 8, 1, 9, 9, 9)).permutation.shape == (2, 6)
    net = SiameseOctad(enc, 8, 6, hidden=8, cube_size=(9, 9, 9), pool="flatten")
    assert net.permutation_head[0].in_features == 8 * 5 * 4 * 4 * 4


@pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="MONAI is an optional integration")
def test_monai_encoder():
    enc = build_encoder("monai:SegResNet", spatial_dims=3, in_channels=1,
                        out_channels=4, init_filters=8)
    net = SiameseOctad(enc, 8, 6, hidden=8, cube_size=(16, 16, 16), pool="avg")
    assert net(torch.randn(1, 8, 1, 16, 16, 16)).permutation.shape == (1, 6)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        build_encoder("vit")
    with pytest.raises(ValueError, match="pool must be"):
        SiameseOctad(build_encoder("vgg", width=2), 8, 4, pool="max", cube_size=(8, 8, 8))


def _batch(seed=0, B=6):
    vol = torch.randn(4, 1, 40, 40, 40, generator=torch.Generator().manual_seed(seed)).cumsum(2).cumsum(3)
    puzzle = rubikops.RubikCube(cube_size=12, gap=(0, 2), num_permutations=6, mask_prob=0.5)
    return puzzle, puzzle(vol, torch.arange(B) % 4, torch.Generator().manual_seed(seed))


def test_loss_and_metrics_against_hand_computation():
    puzzle, (cubes, t) = _batch()
    torch.manual_seed(1)
    net = SiameseOctad(build_encoder("vgg", width=4), 8, 6, mask_head=True, hidden=8, cube_size=(12, 12, 12))
    out = net(cubes)
    loss, parts = puzzle_loss(out, t, "paper", alpha=0.7, beta=0.2, mask_weight=0.5, cube_loss="mean")
    ce = F.cross_entropy(out.permutation, t.permutation)
    bce = F.binary_cross_entropy_with_logits(out.rotation, t.rotation)
    mb = F.binary_cross_entropy_with_logits(out.mask, t.mask)
    torch.testing.assert_close(loss, 0.7 * ce + 0.2 * bce + 0.5 * mb)
    m = puzzle_metrics(out, t, "paper")
    assert float(m["order_acc"]) == float((out.permutation.argmax(1) == t.permutation).float().mean())
    p = torch.sigmoid(out.rotation)
    state_pred = [[0 if max(p[b, i]) <= 0.5 else 1 + int(p[b, i].argmax()) for i in range(8)] for b in range(6)]
    state_true = [[int(t.rotation[b, i, 0] + 2 * t.rotation[b, i, 1]) for i in range(8)] for b in range(6)]
    expect = sum(a == b for r, s in zip(state_pred, state_true) for a, b in zip(r, s)) / 48
    assert abs(float(m["orient_acc"]) - expect) < 1e-6
    assert abs(float(m["mask_acc"]) - float(((out.mask > 0).float() == t.mask).float().mean())) < 1e-6


def test_summed_cube_loss_is_each_puzzles_negative_log_likelihood():
    """cube_loss='sum' against a loop: per puzzle, -log p(turn state) over its cubes with p = softmax(0, h, v)
    (and -log p(mask) per cube), averaged over puzzles; 'all' rotations the same with 24 ways."""
    puzzle, (cubes, t) = _batch(3)
    torch.manual_seed(2)
    net = SiameseOctad(build_encoder("vgg", width=4), 8, 6, mask_head=True, hidden=8, cube_size=(12, 12, 12))
    out = net(cubes)
    loss, parts = puzzle_loss(out, t, "paper", alpha=0.3, beta=0.9, mask_weight=0.4)
    rot = msk = 0.0
    B = cubes.shape[0]
    for b in range(B):
        for m in range(8):
            h, v = out.rotation[b, m].tolist()
            logp = torch.log_softmax(torch.tensor([0.0, h, v], dtype=torch.float64), 0)
            rot -= float(logp[int(t.rotation[b, m, 0] + 2 * t.rotation[b, m, 1])])
            q = torch.sigmoid(out.mask[b, m].detach().double())
            msk -= float(torch.log(q if t.mask[b, m] else 1 - q))
    ce = float(F.cross_entropy(out.permutation, t.permutation))
    assert abs(float(parts["rotation"]) - rot / B) < 1e-4 and abs(float(parts["mask"]) - msk / B) < 1e-4
    assert abs(float(loss) - (0.3 * ce + 0.9 * rot / B + 0.4 * msk / B)) < 1e-4
    logits = torch.randn(B, 8, 24, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(24, (B, 8), generator=torch.Generator().manual_seed(1))
    out_all = rubikops.models.OctadOutput(out.permutation, logits, None)
    t_all = dataclasses.replace(t, rotation=labels)
    _, parts = puzzle_loss(out_all, t_all, "all")
    expect = -sum(float(torch.log_softmax(logits[b, m], 0)[labels[b, m]]) for b in range(B) for m in range(8)) / B
    assert abs(float(parts["rotation"]) - expect) < 1e-4
    with pytest.raises(ValueError, match="cube_loss"):
        puzzle_loss(out, t, cube_loss="max")


def test_cube_heads_follow_the_cubes():
    """Shared per-cube heads: reordering the cubes reorders the turn and mask logits the same way
    (each cube's answer depends on its own content and the puzzle's order-free mean)."""
    puzzle, (cubes, t) = _batch(4)
    torch.manual_seed(3)
    net = SiameseOctad(build_encoder("vgg", width=4), 8, 6, mask_head=True, hidden=8, cube_size=(12, 12, 12)).eval()
    order = torch.tensor([3, 0, 7, 5, 1, 2, 6, 4])
    with torch.no_grad():
        a, b = net(cubes), net(cubes[:, order])
    torch.testing.assert_close(b.rotation, a.rotation[:, order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.mask, a.mask[:, order], atol=1e-5, rtol=1e-5)
    joint = SiameseOctad(build_encoder("vgg", width=4), 8, 6, hidden=8, cube_size=(12, 12, 12), cube_heads=False).eval()
    with torch.no_grad():
        assert not torch.allclose(joint(cubes[:, order]).rotation, joint(cubes).rotation[:, order], atol=1e-4)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(backbone):
    puzzle, (cubes, t) = _batch(2)
    torch.manual_seed(0)
    net = SiameseOctad(build_encoder(backbone, width=4), 8, 6, mask_head=True, hidden=16, dropout=0.0,
                       cube_size=(12, 12, 12))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = puzzle_loss(net(cubes), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses
