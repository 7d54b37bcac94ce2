"""How long does text -> 64 -> 256 -> 1024 take on this machine? Per stage, with the shipped stage sizes.

Times one prompt through each stage of the shipped cascade (data/checkpoints) at the default sampling
settings of `minimagen sample` (`cascade.sampling_defaults`: ancestral, 25 steps, 10 at 1024 px; guidance
on the base stage only, so only the base runs a doubled batch; static thresholding). `--random-weights` builds the stages from the
U-Net presets instead (speed does not depend on the weights), to size other presets. Compares the total with the goal of
issue 5 (at most 3 minutes for one prompt on the 2-core CPU) and each SR forward pass with DESIGN.md's
reference (a 16-channel SR U-Net without attention: ~1.7 s per 1024x1024 forward pass), and the total
with issue 14's target (at most 10 s for the whole job at the default settings).

    python bench/bench_cascade.py                    # writes bench/results/cascade_fp32.json
    python bench/bench_cascade.py --precision bf16   # writes bench/results/cascade_bf16.json
    python bench/bench_cascade.py --precision auto   # bf16 where the CPU has it in hardware, else fp32

bf16 is emulated (many times slower than fp32) on a CPU without AVX-512 bf16 or AMX; "auto" says which it
chose and why, and the result file is named after the precision that ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from minimagen.cascade import Imagen, Stage, native_bf16, resolve_precision, sampling_defaults
from minimagen.checkpoint import SHIPPED_DIR
from minimagen.unet import PRESETS, UNet

RESULTS = Path(__file__).resolve().parent / "results" / "cascade_{precision}.json"
GOAL_S = 180.0  # issue 5: one prompt, default steps, 2-core CPU
TARGET_S = 10.0  # issue 14: the same job, once sr1024 is resized
REFERENCE_1024_FORWARD_S = 1.7  # DESIGN.md: 16-channel SR U-Net without attention, one 1024 px pass


class RandomText:
    """MiniLM's shape (24 tokens of width 384) without loading it: speed is all we measure."""

    name, max_length, dim = "random", 24, 384

    def encode(self, prompts):
        return torch.randn(len(prompts), self.max_length, self.dim), torch.ones(len(prompts), self.max_length, dtype=torch.bool)


def unet(preset: str, size: int, sr: bool) -> UNet:
    return UNet(dataclasses.replace(PRESETS[preset], image_size=size, lowres_channels=3 if sr else 0,
                                    aug_level_conditioning=sr, prediction="v" if sr else "eps")).eval()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="base-s")
    parser.add_argument("--sr256", default="sr-s")
    parser.add_argument("--sr1024", default="sr-xs")
    parser.add_argument("--steps", type=int, nargs=3, default=None,
                        help="steps per stage (default: minimagen sample's, cascade.sampling_defaults)")
    parser.add_argument("--eta", type=float, nargs=3, default=None,
                        help="DDIM's noise level per stage (default: minimagen sample's, ancestral everywhere)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                        help="as `minimagen sample --precision`")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--random-weights", action="store_true",
                        help="build the stages from --base/--sr256/--sr1024 presets with random weights and random text")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    asked, args.precision = args.precision, resolve_precision(args.precision)
    native = native_bf16()
    print(f"precision {asked} -> {args.precision} (this CPU {'has' if native else 'has no'} bfloat16 in hardware"
          f"{'' if native else '; bf16 autocast would be emulated'})")
    if args.random_weights:
        spec = {"kind": "cosine", "T": 1000, "max_beta": 0.2}
        stages = [Stage("base64", unet(args.base, 64, False), spec, 64),
                  Stage("sr256", unet(args.sr256, 256, True), spec, 256),
                  Stage("sr1024", unet(args.sr1024, 256, True), spec, 1024)]  # built for 256 px crops, run whole
        imagen = Imagen(RandomText(), stages)
    else:
        imagen = Imagen.from_pretrained(SHIPPED_DIR)
        stages = imagen.stages
    results = {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "precision": args.precision, "precision_asked": asked, "native_bf16": native,
               "weights": "random (presets)" if args.random_weights else "shipped (data/checkpoints)", "stages": {}}
    default_steps, default_eta = sampling_defaults(stages)
    args.steps, args.eta = args.steps or default_steps, args.eta or default_eta
    results["sampling"] = {"steps": args.steps, "eta": args.eta}
    total = 0.0
    images = None
    for k, stage in enumerate(stages):
        # Run the cascade up to stage k, subtracting the stages before it (measured in earlier rounds).
        start = time.perf_counter()
        images = imagen.sample(["a small red striped circle on the left"], guidance=(3.0, 1.0, 1.0),
                               steps=args.steps, eta=args.eta, stages=k + 1, threshold="static", progress=False,
                               precision=args.precision)
        elapsed = time.perf_counter() - start - total
        total += elapsed
        params = sum(p.numel() for p in stage.unet.parameters())
        per_step = elapsed / args.steps[k]
        results["stages"][stage.name] = {"seconds": round(elapsed, 2), "steps": args.steps[k],
                                         "seconds_per_step": round(per_step, 3), "parameters": params}
        line = (f"{stage.name:7s} {stage.size:5d} px  {params / 1e6:5.2f} M params  {args.steps[k]:3d} steps  "
                f"{elapsed:7.1f} s  ({per_step:.2f} s/step)")
        if stage.size == 1024:
            line += f"  ratio to DESIGN's 1.7 s per 1024 px pass: {per_step / REFERENCE_1024_FORWARD_S:.2f}"
        print(line)
    results["total_seconds"] = round(total, 1)
    results["goal_seconds"], results["target_seconds"] = GOAL_S, TARGET_S
    print(f"total   {total:.1f} s for one prompt; goal {GOAL_S:.0f} s (ratio {total / GOAL_S:.2f}), target "
          f"{TARGET_S:.0f} s (ratio {total / TARGET_S:.2f}); output {tuple(images[-1].shape)}")
    out = Path(str(RESULTS).format(precision=args.precision))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
