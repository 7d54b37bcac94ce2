"""How fast does the base stage sample, and what do channels-last weights and bf16 autocast buy?

Times DDIM sampling of the shipped 64 px base model with classifier-free guidance (one doubled batch per
step) three ways, on the same prompts and noise:

* ``plain``: the U-Net as loaded (contiguous weights), float32 -- what `Imagen.sample` did before;
* ``fp32``: `Imagen.sample(precision="fp32")`, which puts the weights in channels-last layout;
* ``bf16``: `Imagen.sample(precision="bf16")`, the U-Net under bfloat16 autocast.

Prints seconds per image (at 50 steps), the speed-up of each over ``plain``, and how far the images of
``fp32`` and ``bf16`` are from ``plain`` (mean absolute pixel difference), then writes
bench/results/sampling.json. The evaluation sweeps of lessons 07 and 08 were sampled with ``bf16``.

    python bench/bench_sampling.py --batch 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from minimagen.checkpoint import load_unet, shipped_checkpoint
from minimagen.evaluate import base_imagen, eval_prompts
from minimagen.guidance import guided_model_fn
from minimagen.samplers import ddim_sample

RESULTS = Path(__file__).resolve().parent / "results" / "sampling.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="prompts sampled together")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps timed (reported per 50 steps)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    imagen = base_imagen(shipped_checkpoint("base64"))
    captions, _ = eval_prompts(args.batch)
    stage = imagen.stages[0]
    plain_unet, _ = load_unet(shipped_checkpoint("base64"))  # a separate copy that stays contiguous
    plain_unet.eval()

    def plain():
        text, mask = imagen.text_encoder.encode(captions)
        model_fn = guided_model_fn(plain_unet, text, mask, args.guidance)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = ddim_sample(model_fn, (args.batch, 3, stage.size, stage.size), stage.schedule, steps=args.steps,
                            threshold="static", generator=generator, progress=False)
        return x.clamp(-1, 1)

    def library(precision):
        return lambda: imagen.sample(captions, guidance=args.guidance, threshold="static", steps=args.steps, seed=0,
                                     progress=False, precision=precision)[0]

    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "batch": args.batch, "steps_timed": args.steps,
               "guidance": args.guidance, "modes": {}}
    images = {}
    for name, run in [("plain", plain), ("fp32", library("fp32")), ("bf16", library("bf16"))]:
        run()  # warm-up (first-call allocations, oneDNN kernel choice)
        start = time.perf_counter()
        images[name] = run()
        per_image = (time.perf_counter() - start) / args.batch * 50 / args.steps
        diff = (images[name] - images["plain"]).abs().mean().item()
        speedup = results["modes"]["plain"]["seconds_per_image_50_steps"] / per_image if name != "plain" else 1.0
        results["modes"][name] = {"seconds_per_image_50_steps": round(per_image, 3), "speedup_vs_plain": round(speedup, 2),
                                  "mean_abs_pixel_difference_vs_plain": round(diff, 5)}
        print(f"{name:5s} {per_image:6.3f} s/image at 50 steps (w = {args.guidance:g})  speed-up vs plain {speedup:4.2f}x  "
              f"mean |pixel - plain| {diff:.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
