"""How fast does `Shapes` render? Prints images/s at 64, 256 and 1024 px and writes bench/results/data.json.

Rendering must never be what limits training: DESIGN.md measures a 1.1 M-parameter 64 px U-Net training
at ~57 images/s on the 2-core CI machine, so the 64 px rate is also shown as a multiple of that.

    python bench/bench_data.py --n 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from minimagen.data import Shapes

SIZES = (64, 256, 1024)
TRAIN_IMAGES_PER_S = 57.0  # DESIGN.md: 1.1 M-parameter 64 px U-Net, batch 16, 2-core CPU
RESULTS = Path(__file__).resolve().parent / "results" / "data.json"


def images_per_second(size: int, n: int, seed: int) -> float:
    """Time n dataset items (scene draw + render + caption) after one warm-up item."""
    dataset = Shapes(size=size, length=n + 1, seed=seed)
    dataset[n]  # warm-up: first calls pay for allocator and kernel set-up
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images timed per resolution (default 200)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as in a DataLoader worker; rendering itself is numpy)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.n < 1 or args.threads < 1:
        parser.error("--n and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    rows = []
    print(f"Shapes rendering, {args.n} images per size, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'size':>6} {'images/s':>10} {'ms/image':>10}")
    for size in SIZES:
        rate = images_per_second(size, args.n, args.seed)
        rows.append({"size": size, "images_per_s": round(rate, 1), "ms_per_image": round(1000 / rate, 3)})
        print(f"{size:>6} {rate:>10.1f} {1000 / rate:>10.2f}")
    ratio = rows[0]["images_per_s"] / TRAIN_IMAGES_PER_S
    print(f"64 px rendering is {ratio:.0f}x the ~{TRAIN_IMAGES_PER_S:.0f} images/s a small U-Net trains at")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "minimagen.data.Shapes: scene draw + render + caption per item",
        "n": args.n, "threads": args.threads, "seed": args.seed, "torch": torch.__version__,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "results": rows,
        "train_images_per_s": TRAIN_IMAGES_PER_S,
        "render_64_over_train": round(ratio, 1),
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
