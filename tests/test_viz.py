"""The puzzle picture (issue 16, item 13): captions never cover another
picture and stay readable on dark images, masked cubes are marked as such,
and the legend explains every caption word a reader meets ('net:', 'turned',
'MASKED', the network's permutation answer)."""
import pytest
import torch

pytest.importorskip("matplotlib")
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rubikops import RubikCube  # noqa: E402
from rubikops.viz import draw_puzzle  # noqa: E402


def _drawn_figure(tmp_path, monkeypatch, predictions):
    """Draw a puzzle whose cubes are all masked; the saved figure, its renderer and the targets."""
    saved = []
    original = Figure.savefig

    def keep(fig, *args, **kw):
        result = original(fig, *args, **kw)
        saved.append((fig, fig.canvas.get_renderer()))  # the renderer of the saved layout, before the close
        return result

    monkeypatch.setattr(Figure, "savefig", keep)
    puzzle = RubikCube(grid=(2, 2, 2), cube_size=8, gap=(0, 2), num_permutations=10, rotations="paper",
                       mask_prob=1.0, mask_keep_prob=0.3)
    volumes = torch.randn(2, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0)) - 5  # dark images
    cubes, targets = puzzle(volumes, generator=torch.Generator().manual_seed(1))
    path = draw_puzzle(volumes, cubes, targets, puzzle, str(tmp_path / "p.png"), predictions=predictions)
    assert (tmp_path / "p.png").stat().st_size > 10_000 and path == str(tmp_path / "p.png")
    (saved,) = saved
    return (*saved, targets)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_captions_cover_no_picture_and_sit_on_a_white_box(tmp_path, monkeypatch):
    fig, renderer, _ = _drawn_figure(tmp_path, monkeypatch, {"permutation": 3, "rotation": ["H", "V", "none"] * 3})
    pictures = [ax for ax in fig.axes if ax.images]
    assert len(pictures) == 8 + 4  # the 8 cubes; 2 solved and 2 original layers
    for ax in pictures:
        title = ax.title
        assert title.get_text()
        box = title.get_window_extent(renderer)
        for other in pictures:
            if other is not ax:
                assert not _overlap(box, other.get_window_extent(renderer)), (title.get_text(), other.title.get_text())
    for ax in pictures:  # readable on a dark image
        assert ax.title.get_bbox_patch() is not None, ax.title.get_text()
        assert to_rgba(ax.title.get_bbox_patch().get_facecolor())[:3] == (1.0, 1.0, 1.0), ax.title.get_text()
    legend = fig.get_supxlabel()
    assert legend and not any(_overlap(fig._supxlabel.get_window_extent(renderer), ax.get_window_extent(renderer))
                              for ax in pictures)


def test_masked_cubes_are_framed_and_every_caption_word_is_explained(tmp_path, monkeypatch):
    fig, _, targets = _drawn_figure(tmp_path, monkeypatch, {"permutation": 3, "rotation": ["H", "V", "none"] * 3})
    assert bool((targets.mask[0] > 0).all())
    cubes_row = [ax for ax in fig.axes if ax.images and ax.title.get_text().startswith("cube ")]
    assert len(cubes_row) == 8
    for ax in cubes_row:
        assert "MASKED" in ax.title.get_text() and "net: " in ax.title.get_text()
        frames = [p for p in ax.patches if isinstance(p, Rectangle) and to_rgba(p.get_edgecolor())[:3] == (1, 0, 0)]
        assert frames, ax.title.get_text()
    legend = fig.get_supxlabel()
    for word in ("cube m <- cell c", "turned H / turned V", "MASKED (red frame)", "30% of its voxels kept",
                 "net: the network's answer", "Bottom row"):
        assert word in legend, word
    title = fig.get_suptitle()
    assert "the network's answer: #3" in title and ("right" in title or "wrong" in title)
    assert "pred none" not in title and "predicted #" not in title


def test_the_legend_names_the_grey_that_masked_voxels_are_drawn_with(tmp_path, monkeypatch):
    """Masked voxels hold the fill value (0); on these dark images 0 is the brightest value drawn, so the
    legend must say white, as the image's own colour scale maps it."""
    fig, _, targets = _drawn_figure(tmp_path, monkeypatch, None)
    cube_ax = next(ax for ax in fig.axes if ax.images and ax.title.get_text().startswith("cube "))
    image = cube_ax.images[0]
    assert float(image.norm(0.0)) >= 0.9  # the grey scale the picture uses puts 0 at its white end
    assert "set to 0, drawn white on this picture's grey scale" in fig.get_supxlabel()


def test_source_heads_the_picture(tmp_path, monkeypatch):
    puzzle = RubikCube(grid=(2, 2, 2), cube_size=8, gap=(0, 2), num_permutations=10)
    volumes = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    cubes, targets = puzzle(volumes, generator=torch.Generator().manual_seed(1))
    import matplotlib.pyplot as plt
    seen = []
    monkey = Figure.suptitle

    def keep(fig, text, **kw):
        seen.append(text)
        return monkey(fig, text, **kw)
    monkeypatch.setattr(Figure, "suptitle", keep)
    draw_puzzle(volumes, cubes, targets, puzzle, str(tmp_path / "p.png"), source="A validation puzzle of head.nii")
    plt.close("all")
    assert seen and seen[0].startswith("A validation puzzle of head.nii\nRubik's cube puzzle:")
