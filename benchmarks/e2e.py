"""End-to-end pretraining steps: the same Siamese-Octad network fed (a) by
rubikops (VolumeBank + RubikCube on the training device, one launch per
batch) and (b) the way public code feeds it (a torch DataLoader whose workers
build each puzzle in NumPy, then a host-to-device copy)."""
from __future__ import annotations

import torch

import utils

import rubikops
from rubikops.baselines import NumpyPuzzleDataset
from rubikops.data import VolumeBank
from rubikops.models import SiameseOctad, build_encoder, puzzle_loss


def _volumes():
    """The default dataset at 2 mm when installed, else head phantoms."""
    try:
        from rubikops.data import Preprocessing, load_volumes
        from rubikops.data.default import pretraining_files
        r = load_volumes(pretraining_files(), Preprocessing.mri(spacing=2.0, crop_foreground=True))
        return [v.data for v in r.volumes], "default dataset @2mm"
    except Exception:  # data packages missing (e.g. a bare GPU machine)
        from rubikops.phantom import head_phantom
        return [head_phantom(96, seed=s)[None].numpy() for s in range(3)], "96^3 phantoms"


def bench_e2e(device: torch.device, quick: bool = False, workers: int = 2) -> list:
    cube, batch, width = (16, 16, 8) if device.type == "cpu" else (32, 32, 16)
    repeats = 8 if quick else 20
    vols, what = _volumes()
    puzzle = rubikops.RubikCube(cube_size=cube, gap=(0, 4), num_permutations=24, validate=False)
    torch.manual_seed(0)
    model = SiameseOctad(build_encoder("vgg", 1, width), 8, 24, hidden=128, cube_size=(cube,) * 3).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step(cubes, t):
        loss, _ = puzzle_loss(model(cubes), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bank = VolumeBank(vols, device)
    gen = torch.Generator(device).manual_seed(0)
    t_dev = utils.time_fn(lambda: train_step(*bank.puzzles(puzzle, batch, gen)), device, warmup=3, repeats=repeats)
    t_gen = utils.time_fn(lambda: bank.puzzles(puzzle, batch, gen), device, warmup=3, repeats=repeats)

    ds = NumpyPuzzleDataset(vols, puzzle)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    it = iter(loader)

    class T:  # the labels train_step needs
        pass

    def loader_step():
        cubes, perm, rot = next(it)
        t = T()
        t.permutation = perm.to(device, non_blocking=True)
        t.rotation = rot.to(device, non_blocking=True)
        t.mask = None
        train_step(cubes.to(device, non_blocking=True), t)

    t_dl = utils.time_fn(loader_step, device, warmup=3, repeats=repeats)
    nbytes = 2 * batch * 8 * cube ** 3 * 4
    wl = f"B={batch} {cube}^3 vgg w={width}, {what}"
    rows = [
        utils.Row(f"e2e: pretrain step, DataLoader {workers} workers NumPy", wl, t_dl, nbytes,
                  extra={"steps_per_s": 1 / t_dl.median_s}),
        utils.Row("e2e: pretrain step, rubikops on-device", wl, t_dev, nbytes, baseline_s=t_dl.median_s,
                  extra={"steps_per_s": 1 / t_dev.median_s}),
        utils.Row("e2e: batch generation alone (rubikops)", wl, t_gen, nbytes,
                  extra={"fraction_of_step": t_gen.median_s / t_dev.median_s}),
    ]
    print(f"pretraining steps/s: rubikops {1 / t_dev.median_s:.2f}, DataLoader+NumPy ({workers} workers) "
          f"{1 / t_dl.median_s:.2f} ({t_dl.median_s / t_dev.median_s:.2f}x); batch generation "
          f"{100 * t_gen.median_s / t_dev.median_s:.1f}% of a rubikops step")
    return rows
