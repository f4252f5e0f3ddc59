"""What train/pretrain.py reports: the fixed validation puzzles (or crops),
their evaluation, the example pictures, summary.json and the closing report."""
from __future__ import annotations

import os

import torch

import common
import rubikops
from rubikops.data import VolumeBank
from rubikops.tasks import DenseTask


def fixed_puzzles(bank: VolumeBank, puzzle: rubikops.tasks.PretextTask, n: int, seed: int, batch: int) -> list:
    """Held-out puzzles drawn once, with their own generator (so evaluating never moves the training stream)."""
    gen = rubikops.make_generator(seed, rank=10_000, device=bank.device)
    out = []
    for s in range(0, n, batch):
        cubes, t = bank.puzzles(puzzle, min(batch, n - s), gen, seed=seed + s + 1)
        out.append((cubes, t))
    return out


@torch.no_grad()
def evaluate(model, batches, puzzle, amp_ctx, loss_kwargs: dict) -> dict:
    was = model.training
    model.eval()
    sums, count = {}, 0
    for cubes, t in batches:
        with amp_ctx():
            out = model(cubes)
        loss, _ = puzzle.loss(out, t, **loss_kwargs)
        m = {k: float(v) for k, v in puzzle.metrics(out, t).items()}
        m["loss"] = float(loss)
        n = cubes.shape[0]
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * n
        count += n
    model.train(was)
    means = {f"eval/{k}": v / count for k, v in sums.items()}
    if isinstance(puzzle, DenseTask):  # the gain of the mean errors, not a mean of per-batch gains
        means["eval/restoration_gain"] = 1.0 - means["eval/mse"] / max(means["eval/identity_mse"], 1e-12)
    return means


def predict(model, inputs, amp_ctx):
    """The model's outputs in eval mode, without gradients, its mode restored after."""
    was = model.training
    model.eval()
    with torch.no_grad(), amp_ctx():
        out = model(inputs)
    model.train(was)
    return out


def draw_examples(model, bank, batches, puzzle, path, amp_ctx) -> None:
    """puzzles.png: one held-out puzzle of a grid task (rubik, jigsaw) with the network's answers; for a
    dense task, restorations.png beside it: held-out crops, corrupted, restored and untouched."""
    if isinstance(puzzle, DenseTask):
        from rubikops.viz import draw_restoration
        cubes, t = batches[0]
        out = predict(model, cubes[:4], amp_ctx)
        draw_restoration(cubes[:4], out, t.target[:4], os.path.join(os.path.dirname(path), "restorations.png"),
                         title=f"{puzzle.name}: held-out crops (central axial slice)")
        return
    if not isinstance(puzzle, rubikops.RubikCube):
        return
    from rubikops.viz import draw_puzzle
    cubes, t = batches[0]
    out = predict(model, cubes[:1], amp_ctx)
    pred = {"permutation": int(out.permutation[0].argmax())}
    if puzzle.rotation_mode == "paper":
        p = torch.sigmoid(out.rotation[0].float())
        pred["rotation"] = ["H" if (p[m].max() > 0.5 and p[m].argmax() == 0) else "V" if p[m].max() > 0.5 else "none"
                            for m in range(p.shape[0])]
    volume = dict(enumerate(getattr(bank, "names", ()))).get(int(t.index[0]), "a validation volume")
    draw_puzzle(bank, cubes, t, puzzle, path, sample=0, predictions=pred,
                source=f"A validation puzzle of {volume} with the network's answers (which may be wrong)")


def dense_lines(summary: dict) -> list:
    """The held-out reconstruction error against its two baselines: the corrupted input returned unchanged
    (identity) and one constant, the held-out crops' mean."""
    err, ident, mean = summary["mse"], summary["identity_mse"], summary["mean_mse"]
    if err is None:
        return ["  reconstruction: not evaluated"]
    verdict = lambda base: f"{base / err:.2f}x lower" if err < base else "NOT BELOW IT"  # noqa: E731
    return [f"  reconstruction MSE {err:.4f}: identity (input unchanged) {ident:.4f}, {verdict(ident)}; "
            f"the crops' mean everywhere {mean:.4f}, {verdict(mean)}"]


def finish(cfg, puzzle, last_eval, step, puzzles_per_s, logger, peak_rss: list, held_out: list,
           loss_kwargs: dict) -> None:
    """summary.json and the closing report: each metric against chance, or a dense task's errors."""
    frac = [float(r["batch_gen_fraction"]) for r in logger.rows if r.get("batch_gen_fraction") not in (None, "")]
    chance = puzzle.chance_levels()
    trained = puzzle.trained_metrics(**loss_kwargs)
    drawn = isinstance(puzzle, rubikops.RubikCube)
    pictures = os.path.join(cfg.out, "restorations.png") if isinstance(puzzle, DenseTask) else None
    summary = {
        "task": cfg.task, "steps": step, "encoder_step": step, "puzzles_per_s": puzzles_per_s,
        **{k: last_eval.get(f"eval/{k}") for k in chance},
        "num_permutations": getattr(puzzle, "num_permutations", None),
        **{f"chance_{k}": v for k, v in chance.items()},
        **{f"trained_{k.replace('_acc', '')}": trained[k] for k in chance},
        "batch_gen_fraction": sum(frac) / len(frac) if frac else None,
        "peak_host_rss_bytes": peak_rss,  # per rank
        "held_out": held_out, "eval_puzzles": cfg.eval_puzzles,  # the validation volumes, which chose the defaults
        "checkpoints": os.path.join(cfg.out, "checkpoints"), "encoder": os.path.join(cfg.out, "encoder.pt"),
        "puzzles_png": os.path.join(cfg.out, "puzzles.png") if drawn else None, "restorations_png": pictures,
        "metrics_csv": logger.csv_path,
    }
    dense = isinstance(puzzle, DenseTask)
    if dense:
        summary.update({k: last_eval.get(f"eval/{k}") for k in ("mse", "identity_mse", "mean_mse")})
    common.write_json(os.path.join(cfg.out, "summary.json"), summary)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = dense_lines(summary) if dense else []
    noun = "crops" if dense else "puzzles"
    for key, word in puzzle.metric_names().items():
        if chance.get(key) is None:
            continue
        acc = summary[key]
        verdict = ("not trained (its loss weight is 0)" if not trained[key] else
                   "STILL AT CHANCE: this task learned nothing" if acc is not None and acc < chance[key] + 0.02 else
                   f"{acc / chance[key]:.1f}x chance" if acc is not None else "not evaluated")
        lines.append(f"  {word:<12} {pct(acc):>6} (chance {pct(chance[key])}): {verdict}")
    rate = "no step run" if puzzles_per_s is None else f"{puzzles_per_s:.1f} puzzles/s"
    print(f"\ndone: {step} steps, {rate}, batch generation "
          f"{pct(summary['batch_gen_fraction'])} of step time\n"
          f"validation {noun} ({cfg.eval_puzzles} fixed {noun} of the held-out volume(s) "
          f"{', '.join(held_out) or 'none: training volumes'}), encoder of step {step}:\n"
          + "\n".join(lines) +
          f"\ncheckpoints: {summary['checkpoints']}\nencoder weights (step {step}): {summary['encoder']} "
          f"(+ encoder.json)" + (f"\nexample puzzles: {summary['puzzles_png']}" if drawn else "")
          + (f"\nexample restorations: {pictures}" if pictures else "")
          + f"\nlogs: {summary['metrics_csv']}" + (f", {os.path.join(cfg.out, 'tensorboard')}" if cfg.tensorboard else ""))
