"""The ``minimagen`` command.

    minimagen demo --out out/demo.png        train a small unconditional model on Shapes, sample a grid
    minimagen train --stage base --out runs/base64 ...   train a stage (resumes from runs/base64)

Every subcommand validates its arguments before any heavy work starts.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time
from typing import Sequence

import torch

DEMO_UNET = dict(
    image_size=32,
    channels=32,
    channel_mults=(1, 2, 2),
    blocks_per_level=(1, 1, 1),
    self_attention_levels=(False, False, True),
    cross_attention_levels=(False, False, False),
    text_dim=None,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def demo(args: argparse.Namespace) -> pathlib.Path:
    """Train a small unconditional U-Net on one-object Shapes at 32 px, then DDIM-sample a grid."""
    from minimagen.data import Shapes
    from minimagen.plot import save_grid
    from minimagen.samplers import ddim_sample
    from minimagen.schedules import NoiseSchedule
    from minimagen.train import TrainConfig, Trainer
    from minimagen.unet import UNet, UNetConfig

    torch.manual_seed(args.seed)  # the model's initial weights
    model = UNet(UNetConfig(**DEMO_UNET))
    data = Shapes(size=32, length=50_000, seed=args.seed, max_objects=1, textures=("plain",))
    schedule = NoiseSchedule.cosine(1000)
    config = TrainConfig(
        steps=args.steps, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.995,
        checkpoint_every=0, seed=args.seed,
    )
    run_dir = pathlib.Path(args.out).with_suffix("")
    trainer = Trainer(model, data, schedule, config, run_dir / "checkpoints")
    print(f"demo: training a {model.num_parameters() / 1e6:.2f} M-parameter U-Net for {args.steps} steps")
    trainer.fit(progress=not args.quiet)
    images = ddim_sample(
        trainer.ema, (args.n, 3, 32, 32), schedule, steps=50,
        generator=torch.Generator().manual_seed(args.seed), progress=not args.quiet,
    )
    path = save_grid(images, args.out)
    print(f"demo: final loss {trainer.history[-1][1]:.4f}, {trainer.wall_time:.0f} s of training; wrote {path}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimagen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train a small model on Shapes and write a grid of samples")
    p.add_argument("--out", default="out/demo.png", help="PNG file to write")
    p.add_argument("--steps", type=_positive_int, default=1500, help="training steps")
    p.add_argument("--n", type=_positive_int, default=16, help="number of samples in the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "minimagen " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    args.func(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
