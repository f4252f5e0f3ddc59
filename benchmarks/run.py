"""rubikops benchmarks: the op against copy ceilings and the pipelines users run today.

    python benchmarks/run.py                 # CPU, ~1-2 minutes on 2 cores
    python benchmarks/run.py --quick         # CPU, smaller, under 30 s
    python benchmarks/run.py --full          # + sweeps (batch, cube edge, dtype, threads) as PNG plots
    python benchmarks/run.py --device cuda   # GPU: both backends, ceilings, baselines
    python benchmarks/run.py --compare benchmarks/results/OLD.json
    python benchmarks/run.py --no-e2e --results-dir docs/results   # refresh the documented file
    python benchmarks/run.py --show docs/results/FILE.json          # print a saved run's table
    python benchmarks/run.py --scale         # only the scale section: 2,000 scans (~3 min on 2 idle cores)
    python benchmarks/run.py --scale --quick # the same at 40 scans, floors not enforced

Each run writes one JSON (machine, git revision, flags, every row) to
benchmarks/results/ or --results-dir, replacing the earlier file of the
same machine and flags (--quick, --full, --no-e2e, --scale) there.

Every row: median time with p20-p80 spread, effective GB/s (bytes read +
bytes written), % of the copy ceiling measured in the same run, and speed-up
against the baseline named in the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utils  # noqa: E402

import rubikops  # noqa: E402
from rubikops import reference  # noqa: E402
from rubikops._schema import ExtractCubesParams  # noqa: E402
from rubikops.baselines import numpy_puzzle_loop, torch_puzzle_loop as torch_loop  # noqa: E402
from pipelines import pipeline_rows  # noqa: E402
import scale  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_cpu(args) -> list[utils.Row]:
    dev = torch.device("cpu")
    B, M, cube, vol = (8, 8, 32, 96) if args.quick else (16, 8, 48, 128)
    rep = 5 if args.quick else 15
    source, origins, rot = utils.make_workload(B, M, cube, vol, torch.float32, dev)
    wl = f"B={B} M={M} {cube}^3 from {vol}^3 f32 paper-rot"
    out = torch.empty(B, M, 1, cube, cube, cube)
    nbytes = 2 * out.numel() * 4
    rows = []
    t_clone = utils.time_fn(lambda: out.clone(), dev, repeats=rep)
    src_buf = torch.randn_like(out)
    t_copy = utils.time_fn(lambda: out.copy_(src_buf), dev, repeats=rep)
    clone_gbs, copy_gbs = nbytes / t_clone.median_s / 1e9, nbytes / t_copy.median_s / 1e9
    rows.append(utils.Row("ceiling: torch.clone (allocating)", wl, t_clone, nbytes))
    rows.append(utils.Row("ceiling: copy_ into existing", wl, t_copy, nbytes))

    vols_np, org_np, rot_np = source.numpy(), origins.numpy(), rot.numpy()
    t_np = utils.time_fn(lambda: numpy_puzzle_loop(vols_np, org_np, rot_np, cube), dev, warmup=1, repeats=max(3, rep // 3))
    base = t_np.median_s
    rows.append(utils.Row("baseline: NumPy per-sample loop", wl, t_np, nbytes, baseline_s=base))
    t_tl = utils.time_fn(lambda: torch_loop(source, origins, rot, cube), dev, warmup=1, repeats=max(3, rep // 3))
    rows.append(utils.Row("baseline: torch per-sample loop", wl, t_tl, nbytes, baseline_s=base))
    t_g = utils.time_fn(lambda: reference.extract_cubes_gather(source, origins, (cube,) * 3, rotations=rot), dev,
                        warmup=1, repeats=max(3, rep // 3))
    rows.append(utils.Row("baseline: torch gather (advanced indexing)", wl, t_g, nbytes, baseline_s=base))

    kw = dict(rotations=rot, validate=False)
    t_ref = utils.time_fn(lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, backend="torch", **kw), dev,
                          warmup=1, repeats=max(3, rep // 3))
    rows.append(utils.Row("rubikops torch reference", wl, t_ref, nbytes, baseline_s=base))
    t_alloc = utils.time_fn(lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, **kw), dev, repeats=rep)
    rows.append(utils.Row("rubikops compiled CPU (allocating)", wl, t_alloc, nbytes, clone_gbs, base))
    t_out = utils.time_fn(lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, out=out, **kw), dev,
                          repeats=rep)
    rows.append(utils.Row("rubikops compiled CPU (out=)", wl, t_out, nbytes, copy_gbs, base))
    mask = torch.rand(B, M, generator=torch.Generator().manual_seed(1)) < 0.5
    t_full = utils.time_fn(lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, out=out, mask=mask,
                                                          keep_prob=0.3, seed=3, scale=0.01, shift=-0.5,
                                                          clamp=(-1.0, 1.0), **kw), dev, repeats=rep)
    rows.append(utils.Row("rubikops CPU out= +mask+keep+scale+clamp", wl, t_full, nbytes, copy_gbs, base))
    puzzle = _add_puzzle_rows(rows, dev, B, cube, vol, out, copy_gbs, base, rep)
    rows += pipeline_rows(dev, source, origins, rot, puzzle, cube, nbytes, base, clone_gbs, rep)
    rows += backward_rows(dev, B, M, cube, vol, repeats=max(3, rep // 3))
    return rows


def _add_puzzle_rows(rows, dev, B, cube, vol, out, ceiling, base, rep):
    """The whole puzzle (sampling + op) against the bare op on the same puzzles."""
    from rubikops.puzzle import RubikCube

    source = torch.randn(B, 1, vol, vol, vol, device=dev)
    puzzle = RubikCube(grid=(2, 2, 2), cube_size=cube, num_permutations=100, gap=(0, 10), rotations="paper",
                       normalize=None, validate=False)
    gen = torch.Generator(device=dev).manual_seed(0)
    wl = f"B={B} M=8 {cube}^3 from {vol}^3 f32 puzzle crops"
    nbytes = 2 * out.numel() * 4
    _, targets = puzzle(source, generator=gen, out=out)
    t_op = utils.time_fn(lambda: rubikops.extract_cubes(source, targets.origins, (cube,) * 3, rotations=targets.codes,
                                                        out=out, validate=False), dev, repeats=rep)
    rows.append(utils.Row("rubikops bare op on puzzle origins (out=)", wl, t_op, nbytes, ceiling, base))
    t = utils.time_fn(lambda: puzzle(source, generator=gen, out=out), dev, repeats=rep)
    rows.append(utils.Row("rubikops whole puzzle (sample + op, out=)", wl, t, nbytes, ceiling, base,
                          extra={"ratio_to_bare_op": t.median_s / t_op.median_s}))
    print(f"whole puzzle / bare op on the same kind of puzzles: {t.median_s / t_op.median_s:.2f}x")
    # Sampling alone: the fused sampler op against the plain-torch reference
    # (fifteen small ops), both with the same uniform draw and targets around them.
    settings = dict(grid=(2, 2, 2), cube_size=cube, num_permutations=100, gap=(0, 10), rotations="paper")
    reference_sampler = RubikCube(**settings, backend="torch")
    shapes = torch.tensor([vol] * 3, device=dev).expand(B, 3)
    index = torch.arange(B, device=dev)
    t_ref = utils.time_fn(lambda: reference_sampler.sample(B, shapes, index, gen), dev, repeats=rep)
    rows.append(utils.Row("puzzle sampling, plain-torch reference", wl, t_ref, 0))
    t_fused = utils.time_fn(lambda: puzzle.sample(B, shapes, index, gen), dev, repeats=rep)
    rows.append(utils.Row("puzzle sampling, rubikops::sample_puzzle", wl, t_fused, 0, baseline_s=t_ref.median_s))
    print(f"puzzle sampling: fused op {t_fused.median_s * 1e6:.1f} us, plain-torch reference "
          f"{t_ref.median_s * 1e6:.1f} us ({t_ref.median_s / t_fused.median_s:.1f}x)")
    _add_augment_rows(rows, dev, B, cube, vol, rep)
    _add_task_rows(rows, dev, B, cube, vol, rep)
    if dev.type == "cuda" and rubikops.ops.triton_available():  # what a build without the CUDA kernels samples with
        triton_sampler = RubikCube(**settings, backend="triton")
        t_tri = utils.time_fn(lambda: triton_sampler.sample(B, shapes, index, gen), dev, repeats=rep)
        rows.append(utils.Row("puzzle sampling, Triton kernel", wl, t_tri, 0, baseline_s=t_ref.median_s))
    return puzzle


def _add_task_rows(rows, dev, B, cube, vol, rep):
    """A batch of each other pretext task (sampling + its one op call), beside the Rubik's cube rows.
    The 3x3x3 grid tasks cut cubes of half the edge, so their crop (3 cubes + gaps) fits the volume."""
    from rubikops.tasks import Jigsaw3D, RelativePatchLocation3D, RotationPrediction3D

    source = torch.randn(B, 1, vol, vol, vol, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    half = cube // 2
    for task in (Jigsaw3D(cube_size=half, num_permutations=100, gap=(0, 10), validate=False),
                 RotationPrediction3D(cube_size=cube, validate=False),
                 RelativePatchLocation3D(cube_size=half, gap=(0, 10), validate=False)):
        edge = task.cube_size[0]
        out = torch.empty(B, task.num_cubes, 1, edge, edge, edge, device=dev)
        t = utils.time_fn(lambda: task(source, generator=gen, out=out), dev, repeats=rep)
        wl = f"B={B} M={task.num_cubes} {edge}^3 from {vol}^3 f32"
        rows.append(utils.Row(f"task {task.name} (sample + op, out=)", wl, t, 2 * out.numel() * 4))


def _add_augment_rows(rows, dev, B, cube, vol, rep):
    """Label-preserving augmentation on the batch's device, against the same puzzles cut from the
    bank without it: the crop's affine read and the per-cube intensity stage (contrast, gamma, bias
    field, noise), each inside the one cut, then both."""
    from rubikops.augment import CropAffine, IntensityAugment
    from rubikops.data import VolumeBank
    from rubikops.puzzle import RubikCube

    g = torch.Generator().manual_seed(5)
    bank = VolumeBank([torch.randn(1, vol, vol, vol, generator=g) for _ in range(4)], device=dev)
    puzzle = RubikCube(grid=(2, 2, 2), cube_size=cube, num_permutations=100, gap=(0, 10), rotations="paper",
                       normalize=None, validate=False)
    gen = torch.Generator(device=dev).manual_seed(0)
    wl = f"B={B} M=8 {cube}^3 from a bank of 4 x {vol}^3 f32"
    cubes, _ = bank.puzzles(puzzle, B, gen)
    nbytes = 2 * cubes.numel() * 4
    t_plain = utils.time_fn(lambda: bank.puzzles(puzzle, B, gen), dev, repeats=rep)
    rows.append(utils.Row("bank.puzzles, no augmentation", wl, t_plain, nbytes))
    crop, intensity = CropAffine(max_angle=10.0, zoom=(0.9, 1.1)), IntensityAugment()
    ratios = {}
    for name, kw in (("CropAffine (affine read in the cut)", dict(crop_transform=crop)),
                     ("IntensityAugment (intensity stage in the cut)", dict(intensity_transform=intensity)),
                     ("CropAffine + IntensityAugment (one cut)", dict(crop_transform=crop, intensity_transform=intensity))):
        t = utils.time_fn(lambda: bank.puzzles(puzzle, B, gen, **kw), dev, repeats=rep)
        ratios[name] = t.median_s / t_plain.median_s
        rows.append(utils.Row(f"bank.puzzles + {name}", wl, t, nbytes,
                              extra={"ratio_to_no_augmentation": ratios[name]}))
    print("augmentation, relative to cutting the same puzzles without it: " +
          ", ".join(f"{name.split(' (')[0]} {ratio:.2f}x" for name, ratio in ratios.items()))
    # The draws alone (each sample's crop affine, each cube's intensity row) from the same uniforms:
    # the two draw ops against their plain-torch reference.
    index = bank.sample_index(B, gen)
    u_crop = torch.rand(B, 7, generator=gen, device=dev, dtype=torch.float64)
    u_cube = torch.rand(B, puzzle.num_cubes, 11, generator=gen, device=dev, dtype=torch.float64)
    mean, sd = bank.stats[0][index], bank.stats[1][index]

    def draws(backend):
        rubikops.ops.draw_crop_affine(u_crop, bank.shapes, index, puzzle.crop_size, crop.max_angle, *crop.zoom,
                                      backend=backend)
        rubikops.ops.draw_cube_intensity(u_cube, mean, sd, intensity.contrast, intensity.gamma, intensity.bias_field,
                                         intensity.noise, intensity.p, intensity.window, backend=backend)

    t_ref = utils.time_fn(lambda: draws("torch"), dev, repeats=rep)
    rows.append(utils.Row("augmentation draws, plain-torch reference", wl, t_ref, 0))
    t_ops = utils.time_fn(lambda: draws(None), dev, repeats=rep)
    rows.append(utils.Row("augmentation draws, rubikops::draw_crop_affine + draw_cube_intensity", wl, t_ops, 0,
                          baseline_s=t_ref.median_s))
    print(f"augmentation draws: the two ops {t_ops.median_s * 1e6:.1f} us, plain-torch reference "
          f"{t_ref.median_s * 1e6:.1f} us ({t_ref.median_s / t_ops.median_s:.1f}x)")


def bench_cuda(args) -> list[utils.Row]:
    dev = torch.device("cuda")
    B, M, cube, vol = 32, 8, 64, 160
    rows = []
    backends = [("compiled", "rubikops CUDA C++")] if rubikops.ops.HAS_CUDA_KERNEL else []
    backends.append(("triton", "rubikops Triton"))
    for dtype in (torch.float32, torch.bfloat16):
        esize = torch.tensor([], dtype=dtype).element_size()
        tag = str(dtype).replace("torch.", "")
        source, origins, rot = utils.make_workload(B, M, cube, vol, dtype, dev, "paper")
        out = torch.empty(B, M, 1, cube, cube, cube, dtype=dtype, device=dev)
        nbytes = 2 * out.numel() * esize
        wl = f"B={B} M={M} {cube}^3 from {vol}^3 {tag}"
        t_clone = utils.time_fn(lambda: out.clone(), dev)
        ceil = nbytes / t_clone.median_s / 1e9
        rows.append(utils.Row(f"ceiling: torch.clone [{tag}]", wl, t_clone, nbytes))
        other = torch.empty_like(out)
        t_copy = utils.time_fn(lambda: out.copy_(other), dev)
        rows.append(utils.Row(f"reference: copy_ into an existing tensor [{tag}]", wl, t_copy, nbytes, ceil))
        t_naive = utils.time_fn(lambda: torch_loop(source, origins, rot, cube), dev, warmup=1, repeats=5)
        base = t_naive.median_s
        rows.append(utils.Row(f"baseline: torch per-sample loop [{tag}]", wl, t_naive, nbytes, ceil, base))
        t_g = utils.time_fn(lambda: reference.extract_cubes_gather(source, origins, (cube,) * 3, rotations=rot), dev)
        rows.append(utils.Row(f"baseline: torch gather [{tag}]", wl, t_g, nbytes, ceil, base))
        for codes in ("paper", "w-moving", "none"):
            _, _, rot_c = utils.make_workload(B, M, cube, vol, dtype, dev, codes)
            for name, label in backends:
                f = lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, rotations=rot_c,  # noqa: E731
                                                   validate=False, backend=name)
                t = utils.time_fn(f, dev)
                rows.append(utils.Row(f"{label} [{tag}, {codes}]", wl, t, nbytes, ceil, base))
                if codes == "paper":
                    f = lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, rotations=rot_c,  # noqa: E731
                                                       validate=False, backend=name, out=out)
                    t = utils.time_fn(f, dev)
                    rows.append(utils.Row(f"{label} out= [{tag}, {codes}]", wl, t, nbytes, ceil, base))
                    # One isolated call, host launch overhead included: the latency of a single
                    # batch, next to the device time of the queued row above.
                    t = utils.time_fn(f, dev, host_sync=True)
                    rows.append(utils.Row(f"{label} out= 1 call [{tag}, {codes}]", wl, t, nbytes, ceil, base))
        if dtype == torch.float32:
            puzzle = _add_puzzle_rows(rows, dev, B, cube, vol, out, ceil, base, 20)
            rows += pipeline_rows(dev, source, origins, rot, puzzle, cube, nbytes, base, ceil, 10)
    # int16 CT in, float32 out with the fused window (scale/shift/clamp).
    src16 = torch.randint(-1024, 3072, (B, 1, vol, vol, vol), dtype=torch.int16, device=dev)
    _, origins, rot = utils.make_workload(B, M, cube, vol, torch.float32, dev, "paper")
    nbytes = out.numel() * (2 + 4)
    wl = f"B={B} M={M} {cube}^3 from {vol}^3 int16->f32 window"
    out32 = torch.empty(B, M, 1, cube, cube, cube, device=dev)
    t_clone = utils.time_fn(lambda: out32.clone(), dev)
    ceil = 2 * out32.numel() * 4 / t_clone.median_s / 1e9
    for name, label in backends:
        f = lambda: rubikops.extract_cubes(src16, origins, (cube,) * 3, rotations=rot, validate=False,  # noqa: E731
                                           backend=name, scale=1 / 200, shift=-0.2, clamp=(-1.0, 1.0),
                                           out_dtype=torch.float32, out=out32)
        rows.append(utils.Row(f"{label} int16 window", wl, utils.time_fn(f, dev), nbytes, ceil))
    rows += backward_rows(dev, B, M, cube, vol)
    return rows


def backward_rows(dev, B, M, cube, vol, repeats=20):
    """Gradient w.r.t. the source, float32, paper codes: the generic
    scatter-add (an int64 offset per voxel, then index_add_) against the
    compiled kernel of the device (CPU: one thread per volume, no atomics;
    CUDA: atomics) and, on the GPU, the Triton kernel (atomics).  Bytes: grad
    read + gradient buffer zeroed and written."""
    source, origins, rot = utils.make_workload(B, M, cube, vol, torch.float32, dev, "paper")
    grad = torch.randn(B, M, 1, cube, cube, cube, device=dev)
    args = (grad, *ExtractCubesParams(source, origins, (cube,) * 3, rotations=rot).schema_args())
    nbytes = grad.numel() * 4 + source.numel() * 4 * 2  # grad in, buffer zeroed and written
    wl = f"B={B} M={M} {cube}^3 from {vol}^3 f32 backward"
    rows = []
    kernels = [("generic scatter-add", rubikops._library.extract_cubes_backward_generic)]
    if rubikops._library.has_kernel("rubikops::extract_cubes_backward", dev.type.upper()):
        label = "CUDA C++ atomics" if dev.type == "cuda" else "compiled C++"
        kernels.append((label, torch.ops.rubikops.extract_cubes_backward))
    if dev.type == "cuda":
        kernels.append(("Triton atomics", torch.ops.rubikops.extract_cubes_backward_triton))
    for label, op in kernels:
        t = utils.time_fn(lambda: op(*args), dev, repeats=repeats)
        rows.append(utils.Row(f"backward: {label}", wl, t, nbytes))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="smaller workload, no end-to-end rows, under 30 s")
    p.add_argument("--full", action="store_true", help="also sweep batch size, cube edge, dtype and threads (plots)")
    p.add_argument("--compare", metavar="FILE", help="print time ratios against an earlier results JSON")
    p.add_argument("--no-save", action="store_true", help="do not write a results JSON")
    p.add_argument("--results-dir", default=RESULTS, metavar="DIR",
                   help="where the results JSON goes (default benchmarks/results); it replaces the file of an "
                        "earlier run of the same machine and flags there, e.g. --results-dir docs/results")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end pretraining-step rows")
    p.add_argument("--show", metavar="FILE", help="print the table of a saved results JSON and exit")
    p.add_argument("--scale", action="store_true",
                   help="only the scale section (benchmarks/scale.py): a generated corpus of thousands of small "
                        "scans, preparing files/s, resident vs streaming bank puzzles/s, peak RSS per rank of a "
                        "2-rank run, with their floors; exits 1 when a floor fails")
    p.add_argument("--scale-dir", metavar="DIR", help="--scale: where the corpus and its prepared folders go "
                                                      "(reused while there; default in the temp folder)")
    p.add_argument("--scale-files", type=int, metavar="N", help="--scale: valid files in the corpus "
                                                                f"(default {scale.FILES}, --quick {scale.QUICK_FILES})")
    args = p.parse_args(argv)
    if args.show:
        rows = utils.load_rows(args.show)
        print(utils.format_table(rows))
        print(utils.format_extras(rows))
        with open(args.show) as f:
            section = json.load(f).get("scale")
        if section:
            print(scale.format_section(section))
        return rows
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    if args.scale and dev.type != "cpu":
        p.error("--scale measures this machine's CPUs and host memory: use it with --device cpu")
    info = utils.machine_info(dev)
    print(f"rubikops {rubikops.__version__} @ {utils.git_revision()} | " +
          ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"backends: {rubikops.available_backends()}")
    if args.scale:
        return run_scale(args, dev)
    rows = bench_cpu(args) if dev.type == "cpu" else bench_cuda(args)
    if args.full:
        from sweeps import run_sweeps
        import datetime as _dt
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        rows += run_sweeps(dev, RESULTS, stamp)
    if not args.no_e2e and not args.quick:
        from e2e import bench_e2e
        rows += bench_e2e(dev, quick=args.quick)
    print()
    print(utils.format_table(rows))
    print(utils.format_extras(rows))
    print("\n% ceil: GB/s against the copy ceiling of the same run (clone for allocating rows, copy_ for out= rows "
          "on CPU; clone on GPU). vs base: speed-up against the NumPy loop (CPU) or the torch loop (GPU).")
    if args.compare:  # before saving: the file compared against may be the one the save replaces
        print(utils.compare(rows, args.compare))
    if not args.no_save:
        print(f"results: {utils.write_results(rows, dev, _flags(args), args.results_dir)}")
    return rows


def _flags(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("results_dir", "show", "scale_dir")}


def run_scale(args, dev):
    """--scale: the scale section alone; its own results file (flag scale), exit 1 when a floor fails."""
    rows, section = scale.bench_scale(args)
    print()
    print(utils.format_table(rows))
    print(utils.format_extras(rows))
    print()
    print(scale.format_section(section))
    print(f"scale section: {section['seconds']:.0f} s")
    if not args.no_save:
        print(f"results: {utils.write_results(rows, dev, _flags(args), args.results_dir, {'scale': section})}")
    code = scale.exit_code(section)
    if code:
        print(f"FAILED: {', '.join(section['failed'])}", file=sys.stderr)
        raise SystemExit(code)
    return rows


if __name__ == "__main__":
    main()
