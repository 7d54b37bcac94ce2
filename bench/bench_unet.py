"""How fast does a U-Net train on this machine? Prints images/s per preset and order, writes bench/results/unet.json.

One training step = forward + backward + AdamW update on a batch of 64 px images with 24 text tokens
(MiniLM width, 384). DESIGN.md's reference figures on the 2-core CI machine are ~57 images/s for a
1.1 M-parameter U-Net and ~19 for a 4.3 M one; each row prints its ratio to the reference figure of the
nearest size, and the Efficient U-Net order's speed-up over the classic order of the same preset.

    python bench/bench_unet.py --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from minimagen.unet import PRESETS, UNet, UNetConfig

REFERENCE = {1.1e6: 57.0, 4.3e6: 19.0}  # parameters -> images/s, DESIGN.md
RESULTS = Path(__file__).resolve().parent / "results" / "unet.json"


def images_per_second(config: UNetConfig, batch: int, steps: int) -> float:
    model = UNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, config.image_size, config.image_size)
    t = torch.randint(0, 1000, (batch,))
    text, mask = torch.randn(batch, 24, 384), torch.ones(batch, 24, dtype=torch.bool)
    times = []
    for _ in range(steps + 1):  # the first step pays for allocation and is not counted
        start = time.perf_counter()
        loss = model(x, t, text, mask).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch / min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (best is kept)")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1")

    rows = []
    print(f"U-Net training throughput, 64 px, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'preset':>8} {'order':>10} {'params':>8} {'images/s':>9} {'vs ref':>8} {'speed-up':>9}")
    for name, preset in PRESETS.items():
        classic = None
        for order in ("classic", "efficient"):
            # every preset as a 64 px base U-Net, as the table has always compared them
            config = dataclasses.replace(preset, image_size=64, efficient_updown=order == "efficient",
                                         lowres_channels=0, aug_level_conditioning=False, prediction="eps")
            params = UNet(config).num_parameters()
            rate = images_per_second(config, args.batch, args.steps)
            nearest = min(REFERENCE, key=lambda p: abs(p - params))
            classic = classic or rate
            rows.append(dict(preset=name, order=order, parameters=params, images_per_s=round(rate, 1),
                             reference_images_per_s=REFERENCE[nearest], speedup_over_classic=round(rate / classic, 2)))
            print(f"{name:>8} {order:>10} {params / 1e6:>7.2f}M {rate:>9.1f} {rate / REFERENCE[nearest]:>7.2f}x "
                  f"{rate / classic:>8.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.machine(), "threads": torch.get_num_threads(),
                                   "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
