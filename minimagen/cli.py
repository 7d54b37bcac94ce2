"""The ``minimagen`` command.

    minimagen demo --out out/demo.png        train a small unconditional model on Shapes, sample a grid
    minimagen train --stage base --out runs/base64 ...   train a stage (resumes from runs/base64)
    minimagen export runs/base64 data/checkpoints/base64.safetensors   ship the EMA weights (fp16)

Each command is a few lines over the library. Arguments are checked before any heavy work starts, and
every bad input, whether argparse or the library finds it, ends in one line, ``minimagen <command>: error:
...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Sequence

import torch

from minimagen import distributed, grading
from minimagen.augmentation import KINDS, LEVELS, augmentation_sweep, plot_augmentation, write_sweep
from minimagen.cascade import STAGES, Imagen, StageRecipe, add_to_cascade, sampling_defaults
from minimagen.checkpoint import SHIPPED_DIR, atomic_write_bytes, export_run, hardware_description, list_checkpoints
from minimagen.classifier import classifier_accuracy, save_noisy_classifier, train_noisy_classifier
from minimagen.drawings import (frechet_reference, guidance_sweep as drawing_guidance_sweep, held_out_retrieval,
                                load_drawing_encoder, plot_sweep as plot_drawing_sweep, read_sweep as read_drawing_sweep,
                                save_drawing_encoder, train_drawing_encoder, training_seconds,
                                write_sweep as write_drawing_sweep)
from minimagen.encoders import (PROMPT_SETS, measure_model, mismatched_alignment, plot_encoders, prompt_set,
                                plot_guidance, read_comment, read_rows, summarize, write_rows)
from minimagen.evaluate import (
    base_imagen, card_record, per_image_path, plot_steps, plot_sweep, read_csv, sr_quality, steps_sweep, threshold_sweep,
    write_csv,
)
from minimagen.metrics import load_probe, probe_accuracy, save_probe, train_probe
from minimagen.plot import save_grid
from minimagen.samplers import ddpm_sample
from minimagen.schedules import schedule_from_spec
from minimagen.texture import load_texture_probe, save_texture_probe, texture_probe_accuracy, train_texture_probe
from minimagen.thresholding import resolve_threshold
from minimagen.train import TrainConfig, demo_trainer, save_demo
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


THRESHOLDS = ["none", "static", "dynamic"]


def _threshold(text: str) -> str:
    """An argparse type: a thresholding mode, or a dynamic one with settings ("dynamic:p=0.9:max_s=2")."""
    try:
        resolve_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _from_options(cls, args: argparse.Namespace, **overrides):
    """The dataclass ``cls`` built from the options of the same names (``--batch-size`` gives ``batch_size``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **overrides})


def demo(args: argparse.Namespace) -> None:
    """Train a small unconditional U-Net on one-object Shapes at 32 px, then DDPM-sample a grid."""
    trainer = demo_trainer(args.steps, args.seed, pathlib.Path(args.out).with_suffix("") / "checkpoints")
    print(f"demo: training a {trainer.model.num_parameters() / 1e6:.2f} M-parameter U-Net for {args.steps} steps")
    trainer.fit(progress=not args.quiet)
    # DDPM's reference sampler clips x0_hat to [-1, 1] at every step: static thresholding (lesson 07).
    images = ddpm_sample(trainer.ema, (args.n, 3, 32, 32), trainer.schedule, threshold="static",
                         generator=torch.Generator().manual_seed(args.seed), progress=not args.quiet)
    path = save_grid(images, args.out)
    print(f"demo: final loss {trainer.history[-1][1]:.4f}, {trainer.wall_time:.0f} s of training; wrote {path}")
    if args.save:
        save_demo(trainer, args.save, command=args.command_line)
        print(f"demo: saved the EMA weights to {args.save}")


def train(args: argparse.Namespace) -> None:
    """Train a stage with the Trainer; resumes from the newest checkpoint in --out. Under ``torchrun`` each
    process takes a share of every batch (``minimagen.distributed``) and rank 0 alone writes and prints."""
    schedule = {"kind": args.schedule, "T": args.T, "max_beta": args.max_beta}
    recipe = _from_options(StageRecipe, args, schedule=schedule)
    config = _from_options(TrainConfig, args, max_aug_level=min(args.max_aug_level, args.T))
    ranks = distributed.from_environment()
    if ranks is not None:
        ranks.local(config.batch_size)  # checked before the processes join: the batch must divide
    device = distributed.start(ranks, args.device) if ranks is not None else args.device
    say = print if ranks is None or ranks.is_main else (lambda *_: None)
    trainer = None
    try:
        trainer = recipe.trainer(config, args.out, device=device, workers=args.workers, cache_size=args.cache_size,
                                 command=args.command_line, parallel=ranks)
        if trainer.resume():
            say(f"train: resumed {args.out} at step {trainer.step}")
        say(f"train: {args.stage} U-Net {args.unet}, {trainer.model.num_parameters() / 1e6:.2f} M parameters, "
            f"{args.steps} steps of batch {args.batch_size}, predicting {trainer.model.config.prediction}"
            + (f", on {ranks.world} processes ({args.batch_size // ranks.world} images each per step)" if ranks else ""))
        trainer.fit(progress=not args.quiet, time_limit=args.time_limit)
    except RuntimeError as error:
        if ranks is None:
            raise
        # A collective failed: another process died or the group timed out. Say so in one line; the
        # checkpoints rank 0 wrote are whole (written atomically), and the same command resumes.
        last = list_checkpoints(pathlib.Path(args.out))
        step = trainer.step if trainer is not None else 0
        raise ValueError(f"process {ranks.rank} of {ranks.world} stopped at step {step}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; last checkpoint: "
                         f"{last[-1] if last else 'none'}; run the same command to resume") from None
    finally:
        distributed.stop()


def export(args: argparse.Namespace) -> None:
    """Write the EMA weights of a run's newest checkpoint as fp16 safetensors + a JSON model card."""
    evaluation = [card_record(path) for path in args.evaluation or []]  # `minimagen eval` CSVs of this model
    model, step = export_run(args.run, args.dest, hardware=args.hardware, evaluation=evaluation)
    print(f"export: wrote {args.dest} ({model.num_parameters() / 1e6:.2f} M parameters, step {step})")
    if args.cascade:
        stages = add_to_cascade(args.dest)
        print(f"export: {pathlib.Path(args.dest).parent / 'imagen.json'} lists {', '.join(stages)}")


def sample(args: argparse.Namespace) -> None:
    """Run the whole cascade for one or more prompts and write each stage's images as PNGs."""
    if not all(p.strip() for p in args.prompts):
        raise ValueError(f"expected a non-empty prompt, got {args.prompts!r}")
    imagen = Imagen.from_pretrained(args.models or SHIPPED_DIR, device=args.device)
    steps, eta = sampling_defaults(imagen.stages)  # ancestral; 25 steps, 10 at 1024 px (measured: see there)
    steps = args.steps if args.steps is not None else steps
    eta = args.eta if args.eta is not None else eta
    start = time.perf_counter()
    images = imagen.sample(args.prompts, guidance=args.guidance, steps=steps, threshold=args.threshold,
                           eta=eta, aug_level=args.aug_level, seed=args.seed, device=args.device,
                           progress=not args.quiet, precision=args.precision)
    out, nrow = pathlib.Path(args.out), len(args.prompts)
    written = [save_grid(images[-1], out, nrow=nrow)]
    if args.all_stages:
        for stage, x in zip(imagen.stages[:-1], images[:-1]):
            written.append(save_grid(x, out.with_name(f"{out.stem}_{stage.name}{out.suffix}"), nrow=nrow))
    sizes = " -> ".join(f"{s.size}px" for s in imagen.stages)
    print(f"sample: {sizes} in {time.perf_counter() - start:.0f} s; wrote {', '.join(map(str, written))}")


# The readers: small networks trained on renders that read what an image shows (the metrics' probe, the SR
# stages' texture probe, classifier guidance's noisy classifier): train, measure on held-out scenes, ship.
READERS = {
    "probe": (train_probe, probe_accuracy, save_probe),
    "texture-probe": (train_texture_probe, texture_probe_accuracy, save_texture_probe),
    "classifier": (train_noisy_classifier, classifier_accuracy, save_noisy_classifier),
    "drawing-encoder": (train_drawing_encoder, held_out_retrieval, save_drawing_encoder),
}


def reader(args: argparse.Namespace) -> None:
    """``probe``, ``texture-probe``, ``classifier`` or ``drawing-encoder``: train it, measure it on held-out
    scenes (drawings), write it with a card."""
    fit, measure, save = READERS[args.command]
    if args.command == "classifier":  # it reads noisy images: trained and measured on the base model's schedule
        spec = {"kind": args.schedule, "T": args.T, "max_beta": args.max_beta}
        schedule = schedule_from_spec(spec)
        fit, measure, save = (functools.partial(fit, schedule), functools.partial(measure, schedule=schedule),
                              functools.partial(save, schedule_spec=spec))
    options = {"width": args.width} if "width" in args else {}
    state = _reader_state(args.out) if "time_limit" in args else None  # a reader that can stop and resume
    if state is not None:
        options.update(state_path=state, time_limit=args.time_limit)
        if state.is_file():
            print(f"{args.command}: resuming from {state}")
    start = time.perf_counter()
    model, losses = fit(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        progress=not args.quiet, **options)
    if model is None:
        print(f"{args.command}: time limit reached at step {len(losses)} of {args.steps}; the training state is in "
              f"{state}: the same command resumes it")
        return
    seconds = training_seconds(state) if state is not None else time.perf_counter() - start
    training = {"command": args.command_line, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed, "wall_time_s": round(seconds, 1), "hardware": hardware_description()}
    accuracy = measure(model, n=args.eval_n)
    save(model, args.out, losses=losses, training=training, accuracy=accuracy, eval_n=args.eval_n)
    if state is not None:
        state.unlink()
    for name, value in accuracy.items():
        table = ", ".join(f"{k} {v:.4f}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.4f}"
        print(f"{args.command}: held-out accuracy ({name}) {table}")
    print(f"{args.command}: wrote {args.out}")


def _reader_state(out: str) -> pathlib.Path:
    """Where a resumable reader keeps its training state until it is written to ``out``."""
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".partial.pt")


def _shown(path: str) -> str:
    """A path as a record shows it: relative to the working folder when inside it (the shipped defaults are
    absolute, so that they work from anywhere)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _resumed_rows(partial: pathlib.Path, command_line: str, read, name: str) -> list:
    """The rows an interrupted sweep saved in ``partial``, if the same command wrote them (its first line is
    ``# <command>``); none otherwise, and the sweep starts over."""
    if not partial.is_file():
        return []
    if partial.read_text().splitlines()[:1] != [f"# {command_line}"]:
        print(f"{name}: {partial} was written by another command; starting over")
        return []
    done = read(partial)
    print(f"{name}: resuming {partial}: {len(done)} settings already measured")
    return done


def evaluate_sweep(args: argparse.Namespace) -> None:
    """``eval thresholding`` (guidance weight x thresholding mode, Imagen Fig. A.9) or ``eval steps`` (1000-step
    DDPM against DDIM with fewer steps, lesson 08), measured by the probe: a CSV (with the command) + figure.

    Each finished setting is saved at once to ``<out>.partial.csv``; the same command run again after an
    interruption keeps those rows and samples only the rest."""
    imagen, probe = base_imagen(args.model, device=args.device), load_probe(args.probe)
    out = pathlib.Path(args.out)
    partial = out.with_name(out.stem + ".partial.csv")
    done = _resumed_rows(partial, args.command_line, read_csv, "eval")
    save = lambda rows: write_csv(rows, partial, comment=args.command_line)  # noqa: E731
    common = dict(n=args.n, seed=args.seed, max_objects=args.max_objects, batch_size=args.batch_size,
                  device=args.device, progress=not args.quiet, precision=args.precision, modes=args.modes,
                  done=done, on_row=save)
    if args.what == "thresholding":
        rows = threshold_sweep(imagen, probe, weights=args.weights, steps=args.steps, sampler=args.sampler, **common)
        plot, setting = plot_sweep, f"{'DDIM' if args.sampler == 'ddim' else 'ancestral'} {args.steps} steps"
    else:
        rows = steps_sweep(imagen, probe, step_counts=args.step_counts, guidance=args.guidance, ddpm=not args.no_ddpm,
                           ancestral_counts=args.ancestral_steps, **common)
        plot, setting = plot_steps, f"guidance w = {args.guidance:g}"
    wall = sum(r.seconds_per_image * r.n for r in rows)  # sampling time, over every run that made a row
    comment = (f"{args.command_line}\nmodel {_shown(args.model)}, probe {_shown(args.probe)}, {args.n} held-out prompts per row "
               f"(1 to {args.max_objects} objects), {setting}, {args.precision}, {wall:.0f} s of sampling on "
               f"{args.device} ({torch.get_num_threads()} threads)")
    write_csv(rows, out, comment=comment)  # and the per-image values, to per_image_path(out)
    partial.unlink(missing_ok=True)
    per_image_path(partial).unlink(missing_ok=True)
    figure = pathlib.Path(args.figure) if args.figure else out.with_suffix(".png")
    plot(rows, title=f"{pathlib.Path(args.model).name}: {args.n} prompts per point, {setting}").savefig(figure, dpi=120)
    print(*rows, sep="\n")
    print(f"eval: {len(rows)} settings, {wall:.0f} s of sampling; wrote {out}, {per_image_path(out)} and {figure}")


def _sr_cascade(args: argparse.Namespace):
    """The cascade an SR evaluation measures (``--weights`` in place of ``--stage``) and its texture probe."""
    imagen = Imagen.from_pretrained(args.models or SHIPPED_DIR, device=args.device)
    if args.weights:
        imagen = imagen.replace_stage(args.stage, args.weights)
    texture = load_texture_probe(args.texture_probe) if args.texture_probe != "none" else None
    return imagen, texture


def evaluate_sr(args: argparse.Namespace) -> None:
    """``eval sr``: one SR stage against bicubic upsampling and the real renders, written as JSON."""
    imagen, texture = _sr_cascade(args)
    result = sr_quality(imagen, args.stage, n=args.n, steps=args.steps, guidance=args.guidance, eta=args.eta,
                        aug_level=args.aug_level, seed=args.seed, batch_size=args.batch_size, device=args.device,
                        precision=args.precision, threshold=args.threshold, progress=not args.quiet,
                        texture_probe=texture, inputs=args.inputs, base_guidance=args.base_guidance)
    for name, value in result.items():
        if not name.endswith("_se"):
            se = result.get(f"{name}_se")
            print(f"{args.stage}: {name:26s} {value:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
    out = pathlib.Path(args.out or f"data/results/{args.stage}.json")
    settings = ("stage", "weights", "inputs", "base_guidance", "n", "steps", "guidance", "aug_level", "threshold", "eta", "device")
    record = {"command": args.command_line, **{k: getattr(args, k) for k in settings},
              "threads": torch.get_num_threads(), "result": {k: round(v, 5) if v == v else None for k, v in result.items()}}  # NaN (the SE of a single scene): null
    atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
    print(f"eval sr: wrote {out}")


def evaluate_augmentation(args: argparse.Namespace) -> None:
    """``eval augmentation``: one SR stage on clean, grainy, blotchy and generated inputs at several
    augmentation levels (``minimagen.augmentation``), written as CSV with a figure."""
    imagen, texture = _sr_cascade(args)
    rows = augmentation_sweep(imagen, args.stage, levels=args.levels, kinds=args.kinds, n=args.n, steps=args.steps,
                              guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, device=args.device,
                              precision=args.precision, texture_probe=texture, base_guidance=args.base_guidance,
                              threshold=args.threshold, progress=not args.quiet)
    for row in rows:
        print(f"{args.stage}: {row['kind']:9s} s = {row['level']:3d}  " + "  ".join(
            f"{m} {row[m]:.4f} ± {row[m + '_se']:.4f}" for m in ("rmse_to_real", "kept", "downsample_error",
                                                                  "sharpness", "texture") if m in row))
    out = write_sweep(rows, args.out or f"data/results/{args.stage}_augmentation.csv", comment=args.command_line)
    figure = out.with_suffix(".png")
    plot_augmentation(rows, title=f"{args.weights or args.stage}: {args.n} scenes per point, ±1 standard error"
                      ).savefig(figure, dpi=120)
    print(f"eval augmentation: wrote {out} and {figure}")


def evaluate_drawings(args: argparse.Namespace) -> None:
    """``eval drawings``: an OpenMoji base model over guidance weights and thresholding modes, measured by the
    drawing encoder (``drawings.guidance_sweep``): a CSV (with the command) + figure. Each finished setting is
    saved at once to ``<out>.partial.csv``; the same command run again keeps those rows."""
    imagen, encoder = base_imagen(args.model, device=args.device), load_drawing_encoder(args.drawing_encoder)
    out = pathlib.Path(args.out)
    partial = out.with_name(out.stem + ".partial.csv")
    done = _resumed_rows(partial, args.command_line, read_drawing_sweep, "eval drawings")
    rows = drawing_guidance_sweep(
        imagen, encoder, weights=args.weights, modes=args.modes, n=args.n, steps=args.steps, eta=args.eta,
        seed=args.seed, batch_size=args.batch_size, device=args.device, precision=args.precision,
        progress=not args.quiet, done=done,
        on_row=lambda rows: write_drawing_sweep(rows, partial, comment=args.command_line))
    floor = frechet_reference(encoder, n=rows[0]["n"])  # at the rows' n: a Fréchet distance depends on it
    wall = sum(r["seconds_per_image"] * r["n"] for r in rows)
    sampler = f"{'ancestral' if args.eta == 1 else f'eta {args.eta:g}'}, {args.steps} steps"
    comment = (f"{args.command_line}\nmodel {_shown(args.model)}, drawing encoder {_shown(args.drawing_encoder)}, "
               f"{rows[0]['n']} held-out names per row among {rows[0]['candidates']} drawings, {sampler}, "
               f"{args.precision}, {wall:.0f} s of sampling on {hardware_description(args.device)}\n"
               f"Frechet reference (as many real drawings of other emojis against the held-out ones): {floor:.3f}")
    write_drawing_sweep(rows, out, comment=comment)
    partial.unlink(missing_ok=True)
    for r in rows:
        print(f"w = {r['guidance']:<5g} {r['threshold']:8s} top-1 {r['top1']:.3f} ± {r['top1_se']:.3f}  top-5 "
              f"{r['top5']:.3f} ± {r['top5_se']:.3f} (chance {r['chance_top5']:.3f})  Fréchet {r['frechet']:.2f}  "
              f"beyond ±1 {r['outside']:.4f}")
    print(f"Fréchet reference: {rows[0]['n']} real drawings of other emojis against the held-out ones: {floor:.3f}")
    figure = pathlib.Path(args.figure) if args.figure else out.with_suffix(".png")
    plot_drawing_sweep(rows, title=f"{pathlib.Path(args.model).name}: {rows[0]['n']} held-out names per point, "
                       f"{sampler}").savefig(figure, dpi=120)
    print(f"eval drawings: {len(rows)} settings, {wall:.0f} s of sampling; wrote {out} and {figure}")


def _encoder_model(text: str) -> tuple[str, str]:
    """``--model NAME=PATH``: an encoder's name (repeated for its training seeds) and a base model's weights."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. bow=runs/bow-s0.safetensors), got {text!r}")
    return name, path


def evaluate_encoders(args: argparse.Namespace) -> None:
    """``eval encoders``: base models that differ in their text encoder (or their U-Net), on the prompt sets of
    ``encoders.PROMPT_SETS``, with an interval over each name's training seeds (Imagen §4.4), at one guidance
    weight (a bar chart per set) or several (alignment against Fréchet distance, Imagen Fig. 4). With
    ``--append``, the models join the rows already in ``--out`` (a model measured again replaces its rows),
    which must have been measured with the same settings."""
    for _, path in args.model:
        if not pathlib.Path(path).is_file():
            raise ValueError(f"--model {path!r}: no such weights file")
    if len(set(args.guidance)) != len(args.guidance):
        raise ValueError(f"--guidance: expected different weights, got {' '.join(f'{w:g}' for w in args.guidance)}")
    out = pathlib.Path(args.out)
    weights = ", ".join(f"{w:g}" for w in args.guidance)
    settings = (f"{args.n} prompts per set, w = {weights}, {args.steps} steps, eta {args.eta:g}, "
                f"{args.threshold} thresholding, {args.precision}")
    kept, commands = [], []
    if args.append and out.is_file():
        comment = read_comment(out)
        if not comment or comment[-1] != settings:
            raise ValueError(f"--append: {out} was measured with {comment[-1] if comment else 'unknown settings'!r}, "
                             f"not {settings!r}; measure all models again, or match its settings")
        measured = {str(pathlib.Path(path)) for _, path in args.model}
        kept = [r for r in read_rows(out) if str(pathlib.Path(r.model)) not in measured]
        commands = comment[:-1]
    probe = load_probe(args.probe)
    sets = [prompt_set(name, args.n) for name in args.sets]
    rows = []
    for name, path in args.model:
        for w in args.guidance:
            rows += measure_model(path, name, probe, sets, guidance=w, steps=args.steps, eta=args.eta,
                                  threshold=args.threshold, seed=args.seed, batch_size=args.batch_size,
                                  precision=args.precision, device=args.device)
            for r in rows[-len(sets):]:
                print(f"{name:14s} w = {w:<4g} {r.prompt_set:13s} alignment {r.alignment:.3f} ± {r.alignment_se:.3f}  "
                      f"colour&shape {r.colour_and_shape:.3f} ± {r.colour_and_shape_se:.3f}  Fréchet "
                      f"{r.frechet:.2f}  ({path})")
    rows = kept + rows
    write_rows(rows, out, comment="\n".join(commands + [args.command_line, settings]))
    figure = pathlib.Path(args.figure) if args.figure else out.with_suffix(".png")
    title = f"{args.n} prompts per set, w = {weights}"
    if len(args.guidance) > 1:
        plot_guidance(rows, title=f"{title}; bold: mean over seeds, thin: each seed").savefig(figure, dpi=120)
    else:
        held_out = next((ps for ps in sets if ps.name == "held-out"), None) or prompt_set("held-out", args.n)
        floor = mismatched_alignment(probe, held_out)
        plot_encoders(rows, title=title, floor=floor).savefig(figure, dpi=120)
    for r in summarize(rows):
        print(f"{r['encoder']:14s} w = {r['guidance']:<4g} {r['prompt_set']:13s} alignment {r['alignment']:.3f} ± "
              f"{r['ci95']:.3f} (95% CI over {r['seeds']} seeds)")
    print(f"eval encoders: wrote {out} and {figure}")


def exercises(args: argparse.Namespace) -> int:
    """``exercises student OUT_DIR``: write the student versions; ``exercises grade PATH...``: grade submissions
    (exit status 1 unless every check passed)."""
    if args.action == "student":
        for path in grading.write_student_versions(args.sources or [grading.EXERCISES_DIR], args.out_dir):
            print(f"exercises: wrote {path}")
        return 0
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    missing = [p for p in args.paths if not pathlib.Path(p).exists()]
    if missing:
        raise ValueError(f"no such file or folder: {', '.join(missing)}")
    rows = grading.grade(args.paths, time_limit=args.time_limit)
    if not rows:
        raise ValueError(f"no notebook found in {', '.join(args.paths)}")
    grading.write_table(rows, args.csv, args.markdown)
    print(grading.markdown_table(rows), end="")
    passed = sum(r.passed for r in rows)
    print(f"exercises: {passed} of {len(rows)} checks passed; wrote {args.csv} and {args.markdown}")
    return 0 if passed == len(rows) else 1


# -- the parser ---------------------------------------------------------------------------------------------

def _command(sub, name: str, func, help: str, *, common: bool = True, device: bool = True) -> _Parser:
    """A subcommand running ``func``; ``common``: the options of every long-running command (seed, device,
    CPU threads, progress bars)."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func)
    if common:
        p.add_argument("--seed", type=int, default=0)
        if device:
            p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--threads", type=_non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _add_schedule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", choices=["cosine", "linear"], default="cosine")
    p.add_argument("--T", type=_positive_int, default=1000)
    p.add_argument("--max-beta", type=float, default=0.2, help="cosine schedule's cap on beta_t (the paper's 0.999 "
                   "makes x0_hat at the first sampling step eps's error x ~20,000; see minimagen.schedules)")


def _add_reader(sub, name: str, help: str, steps: int, batch_size: int, eval_n: int) -> _Parser:
    """``probe``, ``texture-probe``, ``classifier``: the training and held-out options every reader has."""
    p = _command(sub, name, reader, help, device=False)
    p.add_argument("--out", default=f"data/checkpoints/{name.replace('-', '_')}.safetensors")
    p.add_argument("--steps", type=_positive_int, default=steps)
    p.add_argument("--batch-size", type=_positive_int, default=batch_size)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-n", type=_positive_int, default=eval_n, help="held-out scenes for the accuracy table")
    return p


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="bf16: U-Nets under bfloat16 autocast, about 2x faster on CPUs with AVX-512 bf16")


def _add_sweep(evals, what: str, help: str) -> _Parser:
    """``eval thresholding`` and ``eval steps``: a base model and the probe over held-out prompts."""
    p = _command(evals, what, evaluate_sweep, help)
    p.add_argument("--model", default=str(SHIPPED_DIR / "base64.safetensors"), help="default: the shipped base64")
    p.add_argument("--probe", default=str(SHIPPED_DIR / "probe.safetensors"), help="default: the shipped probe")
    p.add_argument("--n", type=_positive_int, default=256, help="held-out prompts (samples) per setting")
    p.add_argument("--max-objects", type=int, choices=[1, 2], default=2, help="objects per prompt: 1, or 1 to 2")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--out", default=f"data/results/{what}.csv")
    p.add_argument("--figure", default=None, help="PNG (default: the CSV's name with .png)")
    _add_precision(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minimagen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = _command(sub, "demo", demo, "train a small model on Shapes and write a grid of samples", device=False)
    p.add_argument("--out", default="out/demo.png", help="PNG file to write")
    p.add_argument("--steps", type=_positive_int, default=1000, help="training steps")
    p.add_argument("--n", type=_positive_int, default=16, help="number of samples in the grid")
    p.add_argument("--save", default=None, help="also save the EMA weights (fp16 safetensors + JSON card)")

    p = _command(sub, "sample", sample, "text -> image with a saved cascade (every stage in turn)")
    p.add_argument("prompts", nargs="+", help="one or more prompts, e.g. \"a small red striped circle on the left\"")
    p.add_argument("--models", default=None, help="a cascade folder: imagen.json and its stages (Imagen.save_pretrained, "
                   "minimagen export --cascade; default: data/checkpoints)")
    p.add_argument("--out", default="out/sample.png", help="PNG of the last stage")
    p.add_argument("--all-stages", action="store_true", help="also write the smaller stages' images")
    p.add_argument("--guidance", type=_non_negative_float, nargs="+", default=None,
                   help="per stage, or one for all (default: 3 for the base stage, 1 for SR stages)")
    p.add_argument("--steps", type=_positive_int, nargs="+", default=None,
                   help="sampling steps, per stage or one for all (default: 25, and 10 for a 1024 px stage)")
    p.add_argument("--eta", type=_non_negative_float, nargs="+", default=None,
                   help="DDIM's noise level per stage, or one for all: 0 deterministic, 1 ancestral (default: 1, "
                        "ancestral, for every stage)")
    p.add_argument("--threshold", choices=THRESHOLDS, default="static",
                   help="static: on the shipped base model static and none agree at every guidance weight, and "
                        "dynamic falls behind from w = 4 (data/results/thresholding*.csv)")
    p.add_argument("--aug-level", type=_non_negative_int, default=50, help="noise augmentation of the SR stages' inputs")
    _add_precision(p)

    _add_reader(sub, "probe", "train the attribute probe (64 px) used by the metrics and ship it", 3000, 64, 1000)
    p = _add_reader(sub, "texture-probe", "train the texture probe (256 px) that measures the SR stages", 1500, 32, 500)
    p.add_argument("--width", type=_positive_int, default=16, help="channels of the first convolutions")
    p = _add_reader(sub, "drawing-encoder", "train the OpenMoji feature extractor that measures models of real "
                    "drawings (needs the openmoji extra)", 2000, 128, 209)
    p.add_argument("--width", type=_positive_int, default=32, help="channels of the first convolution (x2, x4, x4 below)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop after this long, keeping the training state in OUT's folder (OUT-STEM.partial.pt); "
                   "the same command resumes it")
    p = _add_reader(sub, "classifier", "train the noisy classifier that classifier guidance needs", 3000, 32, 500)
    p.add_argument("--width", type=_positive_int, default=16, help="channels of the first block (x2, x4, x4 below)")
    _add_schedule(p)  # must match the base model's

    p = _command(sub, "train", train, "train a stage on Shapes, OpenMoji or your own images (resumes from the newest "
                 "checkpoint in --out)")
    p.add_argument("--stage", choices=sorted(STAGES), default="base",
                   help="base (text -> 64 px), sr256 (64 -> 256 px) or sr1024 (256 -> 1024 px, on crops)")
    p.add_argument("--out", required=True, help="run folder for checkpoints")
    p.add_argument("--data", default="shapes", help="shapes (procedural scenes), openmoji (real drawings; needs the "
                   "openmoji extra) or a folder of images each with a caption file (photo.jpg + photo.txt)")
    p.add_argument("--unet", choices=sorted(PRESETS), default="base-s")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="start from these weights (minimagen export) "
                   "instead of random ones: fine-tune a trained stage (same --stage and --unet)")
    p.add_argument("--image-size", type=_positive_int, default=None, help="base stage only (default 64)")
    p.add_argument("--crop", type=_positive_int, default=None, help="SR stages: train on random crops of this "
                   "side (default: whole 256 px images for sr256, 256 px crops for sr1024)")
    p.add_argument("--max-aug-level", type=_positive_int, default=250,
                   help="SR stages: noise-conditioning augmentation levels are drawn from [0, this)")
    p.add_argument("--steps", type=_positive_int, default=20_000)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-t", type=_non_negative_int, default=0, help="draw training timesteps from [0, this) only: "
                   "train the low-noise end alone, e.g. to fine-tune a stage there; such a stage is only tested "
                   "below this (0: every timestep)")
    p.add_argument("--warmup-steps", type=_non_negative_int, default=100,
                   help="the learning rate rises linearly to --lr over the first this many steps")
    p.add_argument("--lr-decay-steps", type=_non_negative_int, default=0,
                   help="anneal: the learning rate falls linearly to 0 over the last this many of --steps (0: constant)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--text-drop-prob", type=float, default=0.1,
                   help="captions replaced by the null caption, for CFG (1: a stage trained without text)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on a GPU that has it, else fp32")
    _add_schedule(p)
    p.add_argument("--prediction", choices=["eps", "v"], default=None,
                   help="what the U-Net predicts (default: eps for the base stage, v for SR; see minimagen.diffusion)")
    p.add_argument("--workers", type=_non_negative_int, default=0, help="threads that render each batch (0: none)")
    fast = p.add_argument_group("fast path (minimagen.fastpath; each off by default, each tested against the plain path)")
    fast.add_argument("--draws", choices=["host", "device"], default="host",
                      help="where t, eps, augmentation and caption dropout are drawn: host (the same run on any "
                           "device) or the training device (no CPU sampling or copy; reproducible per device type)")
    fast.add_argument("--channels-last", action="store_true", help="NHWC memory order for weights and images")
    fast.add_argument("--fused-adamw", action="store_true", help="AdamW's update as one fused kernel")
    fast.add_argument("--compile", action="store_true",
                      help="torch.compile the U-Net (the first steps compile; see bench/bench_train_paths.py)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (with a checkpoint) after this many seconds; run the command again to continue")
    p.add_argument("--encoder", default="minilm",
                   help="minilm (frozen, pretrained), minilm-random (frozen, random weights), bow or transformer "
                        "(trained with the U-Net from token ids), or a local T5/BERT-family encoder (frozen)")
    p.add_argument("--max-length", type=_positive_int, default=24)
    p.add_argument("--hold-out-colour-shapes", action="store_true",
                   help="base stage: never draw the colour-shape pairs of data.HELD_OUT_COLOUR_SHAPES (lesson 12)")
    p.add_argument("--cache-size", type=_positive_int, default=50_000, help="text embeddings kept in memory")
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=500)
    p.add_argument("--sample-every", type=_non_negative_int, default=1000, help="sample grids to OUT/samples (0: never)")

    evals = sub.add_parser("eval", help="measure a base model with the attribute probe, or an SR stage")
    evals = evals.add_subparsers(dest="what", required=True)
    p = _add_sweep(evals, "thresholding", "guidance weight x thresholding mode sweep (Imagen Fig. A.9)")
    p.add_argument("--weights", type=_non_negative_float, nargs="+", default=[1, 1.25, 1.5, 1.75, 2, 3, 4, 5, 6, 8, 10])
    p.add_argument("--modes", nargs="+", type=_threshold, default=THRESHOLDS,
                   help="none, static, dynamic, or dynamic with its percentile and a cap on s: dynamic:p=0.9:max_s=2")
    p.add_argument("--steps", type=_positive_int, default=50, help="sampling steps")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim",
                   help="ddim: deterministic (eta = 0); ddpm: ancestral (eta = 1, fresh noise at every step)")
    p = _add_sweep(evals, "steps", "1000-step DDPM against DDIM with fewer steps (fast sampling)")
    p.add_argument("--step-counts", type=_positive_int, nargs="*", default=[250, 100, 50, 25, 10],
                   help="DDIM step counts (none: only ancestral rows)")
    p.add_argument("--ancestral-steps", type=_positive_int, nargs="*", default=[],
                   help="extra ancestral (eta = 1) rows at these step counts, besides the T-step DDPM row")
    p.add_argument("--modes", nargs="+", type=_threshold, default=["static", "dynamic"])
    p.add_argument("--guidance", type=_non_negative_float, default=3.0)
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM rows")
    p = _command(evals, "encoders", evaluate_encoders, "base models that differ in their text encoder (or U-Net), "
                 "on held-out, compositional and paraphrased prompts (Imagen §4.4, Fig. 4)")
    p.add_argument("--model", type=_encoder_model, nargs="+", required=True, metavar="NAME=PATH",
                   help="a name (the encoder, or what else tells the models apart) and a base model; repeat a "
                   "name for its other seeds")
    p.add_argument("--probe", default=str(SHIPPED_DIR / "probe.safetensors"), help="default: the shipped probe")
    p.add_argument("--sets", nargs="+", choices=PROMPT_SETS, default=list(PROMPT_SETS))
    p.add_argument("--n", type=_positive_int, default=128, help="prompts per set")
    p.add_argument("--guidance", type=_non_negative_float, nargs="+", default=[3.0],
                   help="guidance weights; several draw alignment against Fréchet distance (Imagen Fig. 4)")
    p.add_argument("--steps", type=_positive_int, default=25)
    p.add_argument("--eta", type=_non_negative_float, default=1.0, help="1: ancestral; 0: DDIM")
    p.add_argument("--threshold", choices=THRESHOLDS, default="static")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--out", default="data/results/encoders.csv")
    p.add_argument("--append", action="store_true", help="add these models to the rows already in --out (same "
                   "settings); a model measured again replaces its rows")
    p.add_argument("--figure", default=None, help="PNG (default: the CSV's name with .png)")
    _add_precision(p)
    p = _command(evals, "drawings", evaluate_drawings, "an OpenMoji base model over guidance weights and "
                 "thresholding modes: retrieval of held-out names' drawings, Fréchet distance (needs the openmoji extra)")
    p.add_argument("--model", default=str(SHIPPED_DIR / "openmoji" / "base64.safetensors"),
                   help="an OpenMoji base model (default: the shipped one)")
    p.add_argument("--drawing-encoder", default=str(SHIPPED_DIR / "drawing_encoder.safetensors"), metavar="PATH",
                   help="the feature extractor ('minimagen drawing-encoder'; default: the shipped one)")
    p.add_argument("--weights", type=_non_negative_float, nargs="+", default=[1, 2, 3, 5, 8], help="guidance weights")
    p.add_argument("--modes", nargs="+", type=_threshold, default=THRESHOLDS,
                   help="none, static, dynamic, or dynamic with its percentile and a cap on s: dynamic:p=0.9:max_s=2")
    p.add_argument("--n", type=_positive_int, default=None, help="held-out names (samples) per setting (default: all)")
    p.add_argument("--steps", type=_positive_int, default=25, help="sampling steps")
    p.add_argument("--eta", type=_non_negative_float, default=1.0, help="1: ancestral; 0: DDIM")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--out", default="data/results/openmoji_thresholding.csv")
    p.add_argument("--figure", default=None, help="PNG (default: the CSV's name with .png)")
    _add_precision(p)
    p = _command(evals, "sr", evaluate_sr, "one SR stage on real low-res renders: sharpness and consistency vs bicubic")
    p.add_argument("--models", default=None, help="folder with imagen.json (default: the shipped cascade)")
    p.add_argument("--stage", default="sr256", help="the SR stage to measure, e.g. sr256 or sr1024")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="measure these weights (minimagen export) as the stage, in place of the cascade's own")
    p.add_argument("--n", type=_positive_int, default=16, help="held-out scenes")
    p.add_argument("--steps", type=_positive_int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=_non_negative_float, default=1.0)
    p.add_argument("--aug-level", type=_non_negative_int, default=50, help="noise augmentation of the low-res input")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--threshold", choices=THRESHOLDS, default="static")
    p.add_argument("--eta", type=_non_negative_float, default=0.0, help="0: DDIM; 1: ancestral (fresh noise each step)")
    p.add_argument("--inputs", choices=["real", "generated"], default="real",
                   help="real low-res renders, or what the cascade's earlier stages draw for the same captions")
    p.add_argument("--base-guidance", type=_non_negative_float, default=3.0,
                   help="with --inputs generated: the base stage's guidance weight")
    p.add_argument("--texture-probe", default=str(SHIPPED_DIR / "texture_probe.safetensors"), metavar="PATH",
                   help="a probe from 'minimagen texture-probe' for the texture accuracy of SR, bicubic and real "
                        "(default: the shipped one; 'none' leaves texture out)")
    p.add_argument("--out", default=None, help="JSON to write (default: data/results/<stage>.json)")
    _add_precision(p)

    p = _command(evals, "augmentation", evaluate_augmentation,
                 "one SR stage on clean, grainy, blotchy and generated inputs at several augmentation levels")
    p.add_argument("--models", default=None, help="folder with imagen.json (default: the shipped cascade)")
    p.add_argument("--stage", default="sr256", help="the SR stage to measure")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="measure these weights (minimagen export) as the stage, in place of the cascade's own")
    p.add_argument("--levels", type=_non_negative_int, nargs="+", default=list(LEVELS))
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--n", type=_positive_int, default=16, help="held-out scenes per point")
    p.add_argument("--steps", type=_positive_int, default=20, help="DDIM steps of the SR stage")
    p.add_argument("--guidance", type=_non_negative_float, default=1.0)
    p.add_argument("--base-guidance", type=_non_negative_float, default=3.0,
                   help="the base stage's guidance weight, for generated inputs")
    p.add_argument("--threshold", choices=THRESHOLDS, default="static")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--texture-probe", default=str(SHIPPED_DIR / "texture_probe.safetensors"), metavar="PATH",
                   help="'none' leaves texture out")
    p.add_argument("--out", default=None,
                   help="CSV to write, the figure beside it (default: data/results/<stage>_augmentation.csv)")
    _add_precision(p)

    actions = sub.add_parser("exercises", help="classroom exercises: write student versions, grade submissions")
    actions = actions.add_subparsers(dest="action", required=True)
    p = _command(actions, "student", exercises, "write the student versions (solutions replaced by stubs)", common=False)
    p.add_argument("out_dir", help="folder to write the student notebooks to")
    p.add_argument("--from", dest="sources", nargs="+", default=None,
                   help="solution notebooks or folders (default: the shipped lessons/exercises)")
    p = _command(actions, "grade", exercises, "run submitted notebooks headless and tabulate every check", common=False)
    p.add_argument("paths", nargs="+", help="submitted notebooks, or folders of them")
    p.add_argument("--time-limit", type=float, default=180.0,
                   help="seconds each notebook may run (default 180)")
    p.add_argument("--csv", default="grades.csv", help="table to write (CSV)")
    p.add_argument("--markdown", default="grades.md", help="the same table as Markdown")

    p = _command(sub, "export", export, "ship a run's EMA weights as fp16 safetensors + JSON model card", common=False)
    p.add_argument("run", help="run folder written by `minimagen train`")
    p.add_argument("dest", help="weights file to write, e.g. data/checkpoints/base64.safetensors")
    p.add_argument("--hardware", default=None, help="what the run trained on, for the model card")
    p.add_argument("--evaluation", nargs="+", default=None,
                   help="CSV files written by `minimagen eval` for this model, copied onto its card")
    p.add_argument("--cascade", action="store_true", help="also list the stage in its folder's imagen.json, so that "
                   "`minimagen sample --models FOLDER` runs the folder's stages in turn")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "minimagen " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = " ".join(filter(None, (args.command, getattr(args, "what", None), getattr(args, "action", None))))
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        outputs = ("out", "figure", "csv", "markdown", "save") if args.command != "train" else ()
        for path in (getattr(args, n, None) for n in outputs):  # checked before any work
            if isinstance(path, str) and pathlib.Path(path).is_dir():
                raise ValueError(f"{path!r} is a folder; expected a file name to write")
        status = args.func(args)
    except (ValueError, TypeError, OSError, KeyError, ImportError) as error:
        # The library's errors name the argument and what it expected (an optional package missing: the command
        # that installs it); here they become one line.
        if args.debug:
            raise
        message = str(error) if not isinstance(error, KeyError) else f"missing entry {error}"
        print(f"minimagen {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
