"""The ``minimagen`` command.

    minimagen demo --out out/demo.png        train a small unconditional model on Shapes, sample a grid
    minimagen train --stage base --out runs/base64 ...   train a stage (resumes from runs/base64)
    minimagen export runs/base64 data/checkpoints/base64.safetensors   ship the EMA weights (fp16)

Every subcommand validates its arguments before any heavy work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
import sys
import time
from typing import Sequence

import torch

from minimagen import grading
from minimagen.cascade import STAGES, Imagen, StageRecipe
from minimagen.checkpoint import SHIPPED_DIR, atomic_write_bytes, export_run, model_card, run_card, save_weights
from minimagen.classifier import classifier_accuracy, train_noisy_classifier
from minimagen.data import HELD_OUT_SEED
from minimagen.evaluate import (
    base_imagen,
    plot_steps,
    plot_sweep,
    read_csv,
    sr_quality,
    steps_sweep,
    threshold_sweep,
    write_csv,
)
from minimagen.metrics import load_probe, probe_accuracy, train_probe
from minimagen.plot import save_grid
from minimagen.samplers import ddpm_sample
from minimagen.schedules import schedule_from_spec
from minimagen.train import DEMO_SCHEDULE, TrainConfig, demo_trainer
from minimagen.unet import PRESETS

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``minimagen <command>: error: ...``, and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _number(kind: type, minimum: float, what: str):
    """An argparse type: ``kind(text)``, at least ``minimum`` (nan refused), else a message naming ``what``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1, "a positive integer")
_non_negative_int = _number(int, 0, "an integer >= 0")
_non_negative_float = _number(float, 0.0, "a number >= 0")


def demo(args: argparse.Namespace) -> pathlib.Path:
    """Train a small unconditional U-Net on one-object Shapes at 32 px, then DDPM-sample a grid."""
    trainer = demo_trainer(args.steps, args.seed, pathlib.Path(args.out).with_suffix("") / "checkpoints")
    print(f"demo: training a {trainer.model.num_parameters() / 1e6:.2f} M-parameter U-Net for {args.steps} steps")
    trainer.fit(progress=not args.quiet)
    # DDPM's reference sampler clips x0_hat to [-1, 1] at every step: static thresholding (lesson 07).
    images = ddpm_sample(
        trainer.ema, (args.n, 3, 32, 32), trainer.schedule, threshold="static",
        generator=torch.Generator().manual_seed(args.seed), progress=not args.quiet,
    )
    path = save_grid(images, args.out)
    print(f"demo: final loss {trainer.history[-1][1]:.4f}, {trainer.wall_time:.0f} s of training; wrote {path}")
    if args.save:
        card = run_card(
            "uncond32", trainer.model, schedule=DEMO_SCHEDULE,
            data={"dataset": "Shapes", "size": 32, "seed": args.seed, "max_objects": 1, "textures": ["plain"]},
            command=args.command_line, train_config=dataclasses.asdict(trainer.config), steps=trainer.step,
            wall_time=trainer.wall_time, history=trainer.history,
        )
        save_weights(trainer.ema, args.save, trainer.model.config.to_dict(), card=card,
                     extra={"stage": "uncond32", "schedule": DEMO_SCHEDULE})
        print(f"demo: saved the EMA weights to {args.save}")
    return path


def train(args: argparse.Namespace) -> None:
    """Train a stage with the Trainer; resumes from the newest checkpoint in --out."""
    recipe = StageRecipe(stage=args.stage, unet=args.unet, image_size=args.image_size, crop=args.crop,
                         prediction=args.prediction, schedule={"kind": args.schedule, "T": args.T, "max_beta": args.max_beta},
                         encoder=args.encoder, max_length=args.max_length, max_aug_level=args.max_aug_level,
                         seed=args.seed)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every, ema_decay=args.ema_decay, sample_every=args.sample_every,
        max_aug_level=min(args.max_aug_level, args.T), precision=args.precision,
    )
    trainer = recipe.trainer(config, args.out, device=args.device, workers=args.workers, cache_size=args.cache_size,
                             command=args.command_line)
    if trainer.resume():
        print(f"train: resumed {args.out} at step {trainer.step}")
    print(f"train: {args.stage} U-Net {args.unet}, {trainer.model.num_parameters() / 1e6:.2f} M parameters, "
          f"{args.steps} steps of batch {args.batch_size}, predicting {trainer.model.config.prediction}")
    trainer.fit(progress=not args.quiet, time_limit=args.time_limit)


def export(args: argparse.Namespace) -> None:
    """Write the EMA weights of a run's newest checkpoint as fp16 safetensors + a JSON model card."""
    evaluation = []
    for csv_path in args.evaluation or []:  # measurements of this model (`minimagen eval ...`), kept on its card
        lines = pathlib.Path(csv_path).read_text().splitlines()
        evaluation.append({"made_by": [line[2:] for line in lines if line.startswith("# ")],
                           "rows": [dataclasses.asdict(r) for r in read_csv(csv_path)]})
    model, step = export_run(args.run, args.dest, hardware=args.hardware, evaluation=evaluation)
    print(f"export: wrote {args.dest} ({model.num_parameters() / 1e6:.2f} M parameters, step {step})")


def sample(args: argparse.Namespace) -> list[pathlib.Path]:
    """Run the whole cascade for one or more prompts and write each stage's images as PNGs."""
    if not args.prompts or not all(p.strip() for p in args.prompts):
        raise ValueError("give at least one non-empty prompt")
    imagen = Imagen.from_pretrained(args.models or SHIPPED_DIR, device=args.device)
    n = len(imagen.stages)
    guidance = args.guidance if args.guidance is None or len(args.guidance) > 1 else args.guidance * n
    steps = args.steps if args.steps is None or len(args.steps) > 1 else args.steps * n
    start = time.perf_counter()
    images = imagen.sample(args.prompts, guidance=guidance, steps=steps, threshold=args.threshold,
                           aug_level=args.aug_level, seed=args.seed, device=args.device, progress=not args.quiet,
                           precision=args.precision)
    out = pathlib.Path(args.out)
    written = [save_grid(images[-1], out, nrow=len(args.prompts))]
    if args.all_stages:
        for stage, x in zip(imagen.stages[:-1], images[:-1]):
            written.append(save_grid(x, out.with_name(f"{out.stem}_{stage.name}{out.suffix}"), nrow=len(args.prompts)))
    sizes = " -> ".join(f"{s.size}px" for s in imagen.stages)
    print(f"sample: {sizes} in {time.perf_counter() - start:.0f} s; wrote {', '.join(map(str, written))}")
    return written


def probe(args: argparse.Namespace) -> dict:
    """Train the attribute probe on clean renders, measure it on held-out scenes, ship it with a card."""
    start = time.perf_counter()
    model, losses = train_probe(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                progress=not args.quiet)
    wall = time.perf_counter() - start
    accuracy = probe_accuracy(model, n=args.eval_n)
    config = {"kind": "AttributeProbe", "width": 32, "feature_dim": 128}
    card = model_card(
        "probe", config, sum(p.numel() for p in model.parameters()), losses=losses,
        training={"command": args.command_line, "steps": args.steps, "batch_size": args.batch_size,
                  "lr": args.lr, "seed": args.seed, "wall_time_s": round(wall, 1)},
        data={"dataset": "Shapes", "size": 64, "seed": args.seed, "held_out_seed": HELD_OUT_SEED},
        held_out_accuracy=accuracy, held_out_images=args.eval_n,
    )
    save_weights(model, args.out, config, card=card, extra={"stage": "probe"})
    for kind, table in accuracy.items():
        print(f"probe: held-out accuracy ({kind}) " + ", ".join(f"{k} {v:.4f}" for k, v in table.items()))
    print(f"probe: wrote {args.out}")
    return accuracy


def classifier(args: argparse.Namespace) -> dict:
    """Train the noisy classifier for classifier guidance; measure it on held-out scenes at several t."""
    spec = {"kind": args.schedule, "T": args.T, "max_beta": args.max_beta}
    schedule = schedule_from_spec(spec)
    start = time.perf_counter()
    model, losses = train_noisy_classifier(schedule, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                           seed=args.seed, width=args.width, progress=not args.quiet)
    wall = time.perf_counter() - start
    accuracy = classifier_accuracy(model, schedule, n=args.eval_n)
    for level, row in accuracy.items():
        print(f"classifier: held-out accuracy at {level}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    config = {"kind": "NoisyClassifier", "width": model.width, "feature_dim": model.feature_dim}
    card = model_card(
        "classifier", config, sum(p.numel() for p in model.parameters()), losses=losses,
        training={"command": args.command_line, "steps": args.steps, "batch_size": args.batch_size,
                  "lr": args.lr, "seed": args.seed, "wall_time_s": round(wall, 1)},
        schedule=spec, held_out_accuracy=accuracy, held_out_images=args.eval_n, held_out_seed=HELD_OUT_SEED,
    )
    save_weights(model, args.out, config, card=card, extra={"stage": "classifier", "schedule": spec})
    print(f"classifier: wrote {args.out}")
    return accuracy


def evaluate_sweep(args: argparse.Namespace) -> pathlib.Path:
    """A sampling sweep measured by the probe, written as CSV (with the command) + figure.

    ``eval thresholding``: guidance weight x thresholding mode (Imagen Fig. A.9).
    ``eval steps``: 1000-step DDPM against DDIM with fewer steps (lesson 08).
    """
    imagen = base_imagen(args.model, device=args.device)
    probe = load_probe(args.probe)
    common = dict(n=args.n, seed=args.seed, max_objects=args.max_objects, batch_size=args.batch_size, device=args.device,
                  progress=not args.quiet, precision=args.precision)
    start = time.perf_counter()
    if args.what == "thresholding":
        rows = threshold_sweep(imagen, probe, weights=args.weights, modes=args.modes, steps=args.steps, **common)
        setting = f"DDIM {args.steps} steps"
    else:
        rows = steps_sweep(imagen, probe, step_counts=args.step_counts, modes=args.modes, guidance=args.guidance,
                           ddpm=not args.no_ddpm, ancestral_counts=args.ancestral_steps, **common)
        setting = f"guidance w = {args.guidance:g}"
    wall = time.perf_counter() - start
    comment = (f"{args.command_line}\nmodel {args.model}, probe {args.probe}, {args.n} held-out prompts per row "
               f"(1 to {args.max_objects} objects), "
               f"{setting}, {args.precision}, {wall:.0f} s on {args.device} ({torch.get_num_threads()} threads)")
    out = write_csv(rows, args.out, comment=comment)
    figure = pathlib.Path(args.figure) if args.figure else out.with_suffix(".png")
    plot = plot_sweep if args.what == "thresholding" else plot_steps
    plot(rows, title=f"{pathlib.Path(args.model).name}: {args.n} prompts per point, {setting}").savefig(figure, dpi=120)
    for r in rows:
        print(f"{r.sampler} {r.steps:4d} steps  w={r.guidance:<5g} {r.threshold:<8} alignment {r.alignment:.3f} "
              f"± {r.alignment_se:.3f}  FD {r.frechet:7.2f}  saturation {100 * r.saturation:5.2f}%  "
              f"colour&shape {r.colour_and_shape:.3f}  {r.seconds_per_image:.2f} s/image")
    print(f"eval: {len(rows)} settings in {wall:.0f} s; wrote {out} and {figure}")
    return out


def _usage_error(command: str, message: str) -> None:
    """Bad input: one line on stderr, exit status 2 (argparse's convention), never a traceback."""
    print(f"minimagen {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def exercises(args: argparse.Namespace) -> int:
    """``exercises student OUT_DIR``: write the student versions; ``exercises grade PATH...``: grade submissions."""
    if args.action == "student":
        try:
            written = grading.write_student_versions(args.sources or [grading.EXERCISES_DIR], args.out_dir)
        except (ValueError, OSError) as error:
            _usage_error("exercises student", str(error))
        for path in written:
            print(f"exercises: wrote {path}")
        return 0
    if args.time_limit <= 0:
        _usage_error("exercises grade", f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    missing = [p for p in args.paths if not pathlib.Path(p).exists()]
    if missing:
        _usage_error("exercises grade", f"no such file or folder: {', '.join(missing)}")
    rows = grading.grade(args.paths, time_limit=args.time_limit)
    if not rows:
        _usage_error("exercises grade", f"no notebook found in {', '.join(args.paths)}")
    grading.write_table(rows, args.csv, args.markdown)
    print(grading.markdown_table(rows), end="")
    passed = sum(r.passed for r in rows)
    print(f"exercises: {passed} of {len(rows)} checks passed; wrote {args.csv} and {args.markdown}")
    return 0 if passed == len(rows) else 1


def _add_common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """The options every long-running subcommand takes: seed, device, CPU threads, progress bars."""
    p.add_argument("--seed", type=int, default=0)
    if device:
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=_non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def evaluate_sr(args: argparse.Namespace) -> dict:
    """``eval sr``: one SR stage against bicubic upsampling and the real renders, written as JSON."""
    imagen = Imagen.from_pretrained(args.models or SHIPPED_DIR, device=args.device)
    result = sr_quality(imagen, args.stage, n=args.n, steps=args.steps, guidance=args.guidance,
                        aug_level=args.aug_level, seed=args.seed, batch_size=args.batch_size, device=args.device,
                        precision=args.precision, eta=args.eta,
                        threshold=args.threshold, progress=not args.quiet)
    for name, value in result.items():
        print(f"{args.stage}: {name:26s} {value:.4f}")
    out = pathlib.Path(args.out or f"data/results/{args.stage}.json")
    record = {"command": args.command_line, "stage": args.stage, "n": args.n, "steps": args.steps,
              "aug_level": args.aug_level, "threshold": args.threshold, "eta": args.eta, "device": args.device,
              "threads": torch.get_num_threads(),
              "result": {k: round(v, 5) for k, v in result.items()}}
    atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
    print(f"eval sr: wrote {out}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minimagen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train a small model on Shapes and write a grid of samples")
    p.add_argument("--out", default="out/demo.png", help="PNG file to write")
    p.add_argument("--steps", type=_positive_int, default=1000, help="training steps")
    p.add_argument("--n", type=_positive_int, default=16, help="number of samples in the grid")
    p.add_argument("--save", default=None, help="also save the EMA weights (fp16 safetensors + JSON card)")
    _add_common(p, device=False)
    p.set_defaults(func=demo)

    p = sub.add_parser("sample", help="text -> image with a saved cascade (every stage in turn)")
    p.add_argument("prompts", nargs="+", help="one or more prompts, e.g. \"a small red striped circle on the left\"")
    p.add_argument("--models", default=None,
                   help="folder written by Imagen.save_pretrained (default: the shipped cascade, data/checkpoints)")
    p.add_argument("--out", default="out/sample.png", help="PNG of the last stage")
    p.add_argument("--all-stages", action="store_true", help="also write the smaller stages' images")
    p.add_argument("--guidance", type=_non_negative_float, nargs="+", default=None,
                   help="per stage, or one for all (default: 3 for the base stage, 1 for SR stages)")
    p.add_argument("--steps", type=_positive_int, nargs="+", default=None,
                   help="DDIM steps, per stage or one for all (default: 50 for the base stage, 25 for SR stages)")
    p.add_argument("--threshold", choices=["none", "static", "dynamic"], default="static",
                   help="static beats dynamic with the shipped base model (data/results/thresholding.csv)")
    p.add_argument("--aug-level", type=int, default=50, help="noise augmentation of the SR stages' inputs")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: U-Nets under bfloat16 autocast, about 2x faster on CPUs with AVX-512 bf16")
    _add_common(p)
    p.set_defaults(func=sample)

    p = sub.add_parser("probe", help="train the attribute probe used by the metrics and ship it")
    p.add_argument("--out", default="data/checkpoints/probe.safetensors")
    p.add_argument("--steps", type=_positive_int, default=3000)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-n", type=_positive_int, default=1000, help="held-out images for the accuracy table")
    _add_common(p, device=False)
    p.set_defaults(func=probe)

    p = sub.add_parser("train", help="train a stage on Shapes (resumes from the newest checkpoint in --out)")
    p.add_argument("--stage", choices=sorted(STAGES), default="base",
                   help="base (text -> 64 px), sr256 (64 -> 256 px) or sr1024 (256 -> 1024 px, on crops)")
    p.add_argument("--out", required=True, help="run folder for checkpoints")
    p.add_argument("--unet", choices=sorted(PRESETS), default="base-s")
    p.add_argument("--image-size", type=_positive_int, default=None, help="base stage only (default 64)")
    p.add_argument("--crop", type=_positive_int, default=None,
                   help="SR stages: train on random crops of this side (default: whole 256 px images for sr256, "
                   "256 px crops for sr1024)")
    p.add_argument("--max-aug-level", type=_positive_int, default=250,
                   help="SR stages: noise-conditioning augmentation levels are drawn from [0, this)")
    p.add_argument("--steps", type=_positive_int, default=20_000)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on a GPU that has it, else fp32; bf16 is ~1.6x faster on CPUs with "
                        "AVX-512 bf16")
    p.add_argument("--schedule", choices=["cosine", "linear"], default="cosine")
    p.add_argument("--T", type=_positive_int, default=1000)
    p.add_argument(
        "--max-beta", type=float, default=0.2,
        help="cosine schedule's cap on beta_t. The paper's 0.999 leaves alpha_bar[T-1] ~ 2e-9, so x0_hat at the "
        "first sampling step is eps's error times ~20,000; 0.2 keeps alpha_bar[T-1] ~ 3e-5, like the linear "
        "schedule, and changes only the last ~10 of 1000 steps",
    )
    p.add_argument("--prediction", choices=["eps", "v"], default=None,
                   help="what the U-Net predicts; default eps for the base stage, v for SR stages (an eps model "
                   "learns x0 at high noise too weakly to keep the low-res content; see minimagen.diffusion)")
    p.add_argument("--workers", type=int, default=0, help="threads that render each batch's images (0: none)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (with a checkpoint) after this many seconds; run the command again to continue")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--max-length", type=_positive_int, default=24)
    p.add_argument("--cache-size", type=_positive_int, default=50_000, help="text embeddings kept in memory")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid to OUT/samples (0: never)")
    _add_common(p)
    p.set_defaults(func=train)

    p = sub.add_parser("classifier", help="train the noisy classifier that classifier guidance needs")
    p.add_argument("--out", default="data/checkpoints/classifier.safetensors")
    p.add_argument("--steps", type=_positive_int, default=3000)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--width", type=_positive_int, default=16, help="channels of the first block (x2, x4, x4 below)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=["cosine", "linear"], default="cosine", help="must match the base model's")
    p.add_argument("--T", type=_positive_int, default=1000)
    p.add_argument("--max-beta", type=float, default=0.2)
    p.add_argument("--eval-n", type=_positive_int, default=500, help="held-out images per noise level")
    _add_common(p, device=False)
    p.set_defaults(func=classifier)

    p = sub.add_parser("eval", help="measure a base model with the attribute probe")
    evals = p.add_subparsers(dest="what", required=True)
    for what in ("thresholding", "steps"):
        if what == "thresholding":
            p = evals.add_parser(what, help="guidance weight x thresholding mode sweep (Imagen Fig. A.9)")
            p.add_argument("--weights", type=_non_negative_float, nargs="+",
                           default=[1, 1.25, 1.5, 1.75, 2, 3, 4, 5, 6, 8, 10])
            p.add_argument("--modes", nargs="+", choices=["none", "static", "dynamic"],
                           default=["none", "static", "dynamic"])
            p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps")
        else:
            p = evals.add_parser(what, help="1000-step DDPM against DDIM with fewer steps (fast sampling)")
            p.add_argument("--step-counts", type=_positive_int, nargs="*", default=[250, 100, 50, 25, 10],
                           help="DDIM step counts (none: only ancestral rows)")
            p.add_argument("--ancestral-steps", type=_positive_int, nargs="*", default=[],
                           help="extra ancestral (eta = 1) rows at these step counts, besides the T-step DDPM row")
            p.add_argument("--modes", nargs="+", choices=["none", "static", "dynamic"], default=["static", "dynamic"])
            p.add_argument("--guidance", type=_non_negative_float, default=3.0)
            p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM rows")
        p.add_argument("--model", default=str(SHIPPED_DIR / "base64.safetensors"),
                       help="base model weights (default: the shipped base64)")
        p.add_argument("--probe", default=str(SHIPPED_DIR / "probe.safetensors"), help="default: the shipped probe")
        p.add_argument("--n", type=_positive_int, default=256, help="held-out prompts (samples) per setting")
        p.add_argument("--max-objects", type=int, choices=[1, 2], default=2, help="objects per prompt: 1, or 1 to 2")
        p.add_argument("--batch-size", type=_positive_int, default=64)
        p.add_argument("--out", default=f"data/results/{what}.csv")
        p.add_argument("--figure", default=None, help="PNG (default: the CSV's name with .png)")
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="bf16: U-Net under bfloat16 autocast, about 2x faster on CPUs with AVX-512 bf16")
        _add_common(p)
        p.set_defaults(func=evaluate_sweep)
    p = evals.add_parser("sr", help="one SR stage on real low-res renders: sharpness and consistency vs bicubic")
    p.add_argument("--models", default=None, help="folder with imagen.json (default: the shipped cascade)")
    p.add_argument("--stage", default="sr256", help="the SR stage to measure, e.g. sr256 or sr1024")
    p.add_argument("--n", type=_positive_int, default=16, help="held-out scenes")
    p.add_argument("--steps", type=_positive_int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=_non_negative_float, default=1.0)
    p.add_argument("--aug-level", type=int, default=50, help="noise augmentation of the low-res input")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threshold", choices=["none", "static", "dynamic"], default="static")
    p.add_argument("--eta", type=float, default=0.0, help="0: DDIM; 1: ancestral sampling (fresh noise each step)")
    p.add_argument("--out", default=None, help="JSON to write (default: data/results/<stage>.json)")
    _add_common(p)
    p.set_defaults(func=evaluate_sr)

    p = sub.add_parser("exercises", help="classroom exercises: write student versions, grade submissions")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("student", help="write the student versions (solutions replaced by stubs)")
    q.add_argument("out_dir", help="folder to write the student notebooks to")
    q.add_argument("--from", dest="sources", nargs="+", default=None,
                   help="solution notebooks or folders (default: the shipped lessons/exercises)")
    q.set_defaults(func=exercises)
    q = actions.add_parser("grade", help="run submitted notebooks headless and tabulate every check")
    q.add_argument("paths", nargs="+", help="submitted notebooks, or folders of them")
    q.add_argument("--time-limit", type=float, default=180.0, help="seconds each notebook may run (default 180)")
    q.add_argument("--csv", default="grades.csv", help="table to write (CSV)")
    q.add_argument("--markdown", default="grades.md", help="the same table as Markdown")
    q.set_defaults(func=exercises)

    p = sub.add_parser("export", help="ship a run's EMA weights as fp16 safetensors + JSON model card")
    p.add_argument("run", help="run folder written by `minimagen train`")
    p.add_argument("dest", help="weights file to write, e.g. data/checkpoints/base64.safetensors")
    p.add_argument("--hardware", default=None, help="what the run trained on, for the model card")
    p.add_argument("--evaluation", nargs="+", default=None,
                   help="CSV files written by `minimagen eval` for this model, copied onto its card")
    p.set_defaults(func=export)
    return parser


def _output_paths(args: argparse.Namespace) -> list[str]:
    """The files a command will write, checked before any work: none may be an existing folder."""
    names = ("out", "figure", "csv", "markdown", "save") if args.command != "train" else ()
    return [getattr(args, n) for n in names if isinstance(getattr(args, n, None), str)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "minimagen " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = " ".join(filter(None, (args.command, getattr(args, "what", None), getattr(args, "action", None))))
    if getattr(args, "threads", 0):  # every long-running command takes --threads (_add_common)
        torch.set_num_threads(args.threads)
    try:
        for path in _output_paths(args):
            if pathlib.Path(path).is_dir():
                raise ValueError(f"{path!r} is a folder; expected a file name to write")
        status = args.func(args)
    except (ValueError, TypeError, OSError, KeyError) as error:
        # The library's errors name the argument and what it expected; here they become one line.
        if args.debug:
            raise
        message = str(error) if not isinstance(error, KeyError) else f"missing entry {error}"
        print(f"minimagen {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
