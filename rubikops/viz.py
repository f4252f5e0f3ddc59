"""Pictures of puzzles (matplotlib, optional dependency).

``draw_puzzle`` shows, for one sample: the cubes in output order (what the
network sees, with its labels), the puzzle solved (cubes put back in their
cells), and the original crop; optionally the network's answers."""
from __future__ import annotations

from typing import Optional

import torch

from .data.cache import atomic_path
from .puzzle import PuzzleTargets, RubikCube, assemble, solve


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("rubikops.viz needs matplotlib: pip install matplotlib") from exc


def _label(puzzle: RubikCube, targets: PuzzleTargets, b: int, m: int, cell: int) -> str:
    parts = [f"cube {m} <- cell {cell}"]
    if puzzle.rotation_mode == "paper":
        h, v = targets.rotation[b, m].tolist()
        parts.append("turned H" if h else "turned V" if v else "not turned")
    elif puzzle.rotation_mode == "all":
        parts.append(f"rotation #{int(targets.rotation[b, m])}")
    if targets.mask[b, m] > 0:
        parts.append("masked")
    return "\n".join(parts)


def draw_puzzle(volumes: torch.Tensor, cubes: torch.Tensor, targets: PuzzleTargets, puzzle: RubikCube, path: str,
                sample: int = 0, predictions: Optional[dict] = None, channel: int = 0) -> str:
    """Write a PNG of puzzle ``sample`` to ``path`` (atomically) and return the path.

    ``predictions`` (optional): {"permutation": int, "rotation": (M, 2) or (M,)} drawn beside the labels."""
    plt = _plt()
    b = sample
    cubes = cubes.detach().float().cpu()
    t = targets.to("cpu")
    M = cubes.shape[1]
    perms = puzzle.permutations
    order = perms[t.permutation[b]].tolist()
    solved = assemble(solve(cubes[b:b + 1], PuzzleTargets(**{k: v[b:b + 1] for k, v in vars(t).items()}), perms),
                      puzzle.grid)[0, channel]
    gz = puzzle.grid[0]
    d = puzzle.cube_size[0]
    n = int(t.index[b])
    start = t.origins[b].min(0).values.tolist()
    crop = volumes[n][channel].detach().float().cpu()[tuple(slice(s, s + c) for s, c in zip(start, puzzle.crop_size))]
    show = min(M, 9)
    cols = max(show, 2 * gz)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    vmin, vmax = float(cubes[b].min()), float(cubes[b].max())
    for m in range(show):
        ax = axes[0, m]
        ax.imshow(cubes[b, m, channel, d // 2].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        title = _label(puzzle, t, b, m, order[m])
        if predictions is not None and "rotation" in predictions:
            title += f"\npred {predictions['rotation'][m]}"
        ax.set_title(title, fontsize=7)
    for layer in range(gz):
        ax = axes[1, layer]
        ax.imshow(solved[layer * d + d // 2].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(f"solved, layer {layer}", fontsize=7)
        ax = axes[1, gz + layer]
        z = layer * puzzle.pitch[0] + d // 2
        ax.imshow(crop[min(z, crop.shape[0] - 1)].numpy(), cmap="gray")
        ax.set_title(f"original crop, layer {layer}", fontsize=7)
    perm_txt = f"permutation #{int(t.permutation[b])} of {puzzle.num_permutations}: {order}"
    if predictions is not None and "permutation" in predictions:
        perm_txt += f"   predicted #{predictions['permutation']}"
    fig.suptitle(f"Rubik's cube puzzle (top: cubes in output order, axial mid-slices). {perm_txt}", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
