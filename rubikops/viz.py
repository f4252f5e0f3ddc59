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


_CAPTION_BOX = dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.9)


def _label(puzzle: RubikCube, targets: PuzzleTargets, b: int, m: int, cell: int) -> str:
    parts = [f"cube {m} <- cell {cell}"]
    if puzzle.rotation_mode == "paper":
        h, v = targets.rotation[b, m].tolist()
        parts.append("turned H" if h else "turned V" if v else "not turned")
    elif puzzle.rotation_mode == "all":
        parts.append(f"rotation #{int(targets.rotation[b, m])}")
    if targets.mask[b, m] > 0:
        parts.append("MASKED")
    return "\n".join(parts)


def _shade(value: float, vmin: float, vmax: float) -> str:
    """The grey a value is drawn with on a [vmin, vmax] grey scale, in words."""
    f = 0.5 if vmax <= vmin else (value - vmin) / (vmax - vmin)
    return "black" if f <= 0.1 else "white" if f >= 0.9 else "dark grey" if f < 0.4 else "light grey" if f > 0.6 \
        else "mid grey"


def _legend(puzzle: RubikCube, predictions: Optional[dict], fill_shade: str = "") -> str:
    lines = ["Top row: the cubes in the order the network sees them (axial mid-slices); 'cube m <- cell c': "
             "solving puts cube m back into grid cell c."]
    if puzzle.rotation_mode == "paper":
        lines.append("turned H / turned V: the cube was turned 180 degrees about the horizontal (H) or vertical (W) "
                     "axis; the network must undo it.")
    elif puzzle.rotation_mode == "all":
        lines.append("rotation #r: the cube was turned by proper rotation r of 24.")
    if puzzle.mask_prob > 0:
        lines.append(f"MASKED (red frame): {100 * puzzle.mask_keep_prob:.0f}% of its voxels kept, the rest set to "
                     f"{puzzle.mask_fill:g}" + (f", drawn {fill_shade} on this picture's grey scale" if fill_shade else "")
                     + " (Rubik's Cube+): it looks like noise on purpose.")
    if predictions is not None:
        lines.append("net: the network's answer for that cube ('not turned' when it predicts no turn); "
                     "the title gives its permutation class beside the true one.")
    lines.append("Bottom row: the cubes put back in place by the labels (solved), and the original crop.")
    return "\n".join(lines)


def draw_puzzle(volumes: torch.Tensor, cubes: torch.Tensor, targets: PuzzleTargets, puzzle: RubikCube, path: str,
                sample: int = 0, predictions: Optional[dict] = None, channel: int = 0, source: str = "") -> str:
    """Write a PNG of puzzle ``sample`` to ``path`` (atomically) and return the path.

    ``predictions`` (optional): {"permutation": int, "rotation": one "H", "V" or "none" per cube} drawn beside
    the labels.  ``source`` (optional) heads the picture, e.g. which volume the puzzle was cut from.
    A legend under the pictures says what the captions mean."""
    from matplotlib.patches import Rectangle
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
    vmin, vmax = float(cubes[b].min()), float(cubes[b].max())
    legend = _legend(puzzle, predictions, _shade(puzzle.mask_fill, vmin, vmax))
    # constrained layout sizes each row's space to its captions, so multi-line captions never cover the row above
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 5.2 + 0.16 * legend.count("\n")), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    turn_words = {"H": "turned H", "V": "turned V", "none": "not turned"}
    for m in range(show):
        ax = axes[0, m]
        ax.imshow(cubes[b, m, channel, d // 2].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        title = _label(puzzle, t, b, m, order[m])
        if predictions is not None and "rotation" in predictions:
            answer = predictions["rotation"][m]
            title += f"\nnet: {turn_words.get(answer, answer)}"
        if t.mask[b, m] > 0:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor="red", linewidth=3))
        ax.set_title(title, fontsize=7, bbox=_CAPTION_BOX)
    for layer in range(gz):
        ax = axes[1, layer]
        ax.imshow(solved[layer * d + d // 2].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(f"solved, layer {layer}", fontsize=7, bbox=_CAPTION_BOX)
        ax = axes[1, gz + layer]
        z = layer * puzzle.pitch[0] + d // 2
        ax.imshow(crop[min(z, crop.shape[0] - 1)].numpy(), cmap="gray")
        ax.set_title(f"original crop, layer {layer}", fontsize=7, bbox=_CAPTION_BOX)
    perm_txt = f"permutation #{int(t.permutation[b])} of {puzzle.num_permutations} (cell order {order})"
    if predictions is not None and "permutation" in predictions:
        guess = int(predictions["permutation"])
        perm_txt += (f"; the network's answer: #{guess} "
                     f"({'right' if guess == int(t.permutation[b]) else 'wrong'})")
    fig.suptitle((f"{source}\n" if source else "") + f"Rubik's cube puzzle: {perm_txt}", fontsize=8)
    fig.supxlabel(legend, fontsize=6.5, ha="left", x=0.01, linespacing=1.4)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def draw_restoration(inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, path: str,
                     samples: int = 4, title: str = "") -> None:
    """A dense task's examples: per sample (row), the central axial slice of the
    corrupted input, the network's restoration and the untouched crop, on one
    grey scale per row (the target's range).  inputs (B, 1, C, d, h, w) or
    (B, C, d, h, w), outputs and targets (B, C, d, h, w); channel 0 is shown."""
    plt = _plt()
    inputs = inputs[:, 0] if inputs.dim() == 6 else inputs
    n = min(samples, inputs.shape[0])
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for b in range(n):
        mid = inputs.shape[2] // 2
        images = [x[b, 0, mid].detach().float().cpu() for x in (inputs, outputs, targets)]
        lo, hi = float(images[2].min()), float(images[2].max())
        for ax, img, name in zip(axes[b], images, ("corrupted input", "network's restoration", "untouched crop")):
            ax.imshow(img.numpy(), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
