"""What does each switch of the fast path buy on this machine? Training images/s of one stage through the real
Trainer, plain and with each switch of minimagen.fastpath (and bf16 autocast) on, then all together; and the
two sampling-side paths: guidance as one doubled batch against two passes, and a cached caption against
encoding it again. Writes bench/results/train_paths_<device>.json.

    python bench/bench_train_paths.py                              # base-s at 64 px, batch 16, this CPU
    python bench/bench_train_paths.py --device cuda --preset base-m --batch 64

The data are random images held in memory and the text fixed embeddings (MiniLM's shape), so the figures are
the U-Net step's and not the renderer's. Each configuration runs --warmup steps (compilation happens there),
then --rounds rounds of --steps timed ones that take the configurations in turn (so a drift of the machine's
speed falls on all alike); the median step is reported. torch.compile's one-off cost is the warm-up column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minimagen.cascade import native_bf16
from minimagen.guidance import guided_model_fn
from minimagen.schedules import NoiseSchedule
from minimagen.train import TrainConfig, Trainer
from minimagen.unet import PRESETS, UNet

RESULTS = Path(__file__).resolve().parent / "results" / "train_paths_{device}.json"
TOKENS, WIDTH = 24, 384  # MiniLM's embeddings, as minimagen train feeds them


class Images:
    """``n`` random images with captions "scene <i>", in memory."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.captions = [f"scene {i}" for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.captions[i]


class FixedText:
    """One fixed embedding per caption (what a cached encoder returns), made on the training device."""

    name, max_length, dim = "fixed", TOKENS, WIDTH

    def __init__(self, device):
        self.device = device

    def encode(self, prompts):
        g = torch.Generator().manual_seed(len(prompts))
        text = torch.randn(len(prompts), TOKENS, WIDTH, generator=g).to(self.device)
        return text, torch.ones(len(prompts), TOKENS, dtype=torch.bool, device=self.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_trainer(preset: str, size: int, batch: int, device: torch.device, out: str, **switches) -> Trainer:
    config = dataclasses.replace(PRESETS[preset], image_size=size)
    torch.manual_seed(0)
    train = TrainConfig(steps=10**6, batch_size=batch, warmup_steps=1, checkpoint_every=0, log_every=10**6,
                        **switches)
    return Trainer(UNet(config), Images(4 * batch, size), NoiseSchedule.cosine(1000), train, out,
                   text_encoder=FixedText(device), device=device)


def time_steps(step, device: torch.device, n: int) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(steps: dict, device: torch.device, warmup: int, n: int, rounds: int) -> dict:
    """Median seconds per call of each of ``steps`` (name -> callable), after ``warmup`` calls each, timed in
    ``rounds`` rounds of ``n`` calls that take the configurations in turn, so that a drift of the machine's
    speed (clock, other load) falls on all of them alike. Also the one-off warm-up time of each."""
    warm = {}
    for name, step in steps.items():
        sync(device)
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        sync(device)
        warm[name] = time.perf_counter() - start
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += time_steps(step, device, n)
    return {name: (statistics.median(t), warm[name]) for name, t in times.items()}


def guided_steps(preset: str, size: int, batch: int, device: torch.device) -> dict:
    """One guided (w = 3) U-Net evaluation at batch ``batch``: as one doubled batch and as two passes."""
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(PRESETS[preset], image_size=size)).to(device).eval()
    text, mask = FixedText(device).encode(["a"] * batch)
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.full((batch,), 500, device=device)
    fns = {name: guided_model_fn(model, text, mask, w=3.0, doubled=doubled)
           for name, doubled in (("doubled", True), ("two_passes", False))}
    return {name: (lambda fn=fn: torch.no_grad()(fn)(x, t)) for name, fn in fns.items()}


def time_encoding(batch: int, repeats: int) -> dict | None:
    """MiniLM encoding a batch of captions, fresh and from the cache (None if MiniLM is not installed)."""
    try:
        from minimagen.text import TextEncoder
        fresh, cached = TextEncoder("minilm", max_length=TOKENS, cache=False), TextEncoder("minilm", max_length=TOKENS)
    except (ImportError, ValueError, OSError) as error:
        print(f"encoding: skipped ({error})")
        return None
    prompts = [f"a red circle and {i} blue squares" for i in range(batch)]
    cached.encode(prompts)  # fill the cache
    out = {}
    for name, encoder in (("encode_s", fresh), ("cached_s", cached)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode(prompts)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base-s", choices=sorted(p for p in PRESETS if p.startswith("base")),
                        help="a base U-Net preset (the SR presets need a low-resolution input)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds taking the configurations in turn")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    for name in ("size", "batch", "steps", "warmup", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda" or native_bf16()

    rows = [("plain", {})]
    rows += [("draws on the device", {"draws": "device"}), ("channels-last", {"channels_last": True}),
             ("fused AdamW", {"fused_adamw": True})]
    if bf16:
        rows.append(("bf16 autocast", {"precision": "bf16"}))
    if not args.no_compile:
        rows.append(("torch.compile", {"compile": True}))
    everything = {"draws": "device", "channels_last": True, "fused_adamw": True, "compile": not args.no_compile}
    if bf16:
        everything["precision"] = "bf16"
    rows.append(("all of the above", everything))

    print(f"training {args.preset} at {args.size} px, batch {args.batch}, on {device} "
          f"({torch.get_num_threads()} threads, torch {torch.__version__}); precision fp32 unless the row says; "
          f"median of {args.rounds} x {args.steps} interleaved steps")
    with tempfile.TemporaryDirectory() as out:
        trainers = {name: build_trainer(args.preset, args.size, args.batch, device, out,
                                        **{"precision": "fp32", **switches}) for name, switches in rows}
        timed = time_interleaved({name: t.train_step for name, t in trainers.items()}, device, args.warmup,
                                 args.steps, args.rounds)
    print(f"{'path':<22} {'images/s':>9} {'x plain':>8} {'warm-up s':>10}")
    results = []
    for name, switches in rows:
        step, warm = timed[name]
        results.append({"path": name, "switches": {"precision": "fp32", **switches}, "images_per_s": args.batch / step,
                        "step_s": step, "warmup_s": warm})
        print(f"{name:<22} {args.batch / step:>9.1f} {timed['plain'][0] / step:>7.2f}x {warm:>10.1f}")

    guided = time_interleaved(guided_steps(args.preset, args.size, args.batch, device), device, 2, args.steps,
                              args.rounds)
    one, two = guided["doubled"][0], guided["two_passes"][0]
    print(f"guided sampling step (w = 3, batch {args.batch}): two passes {two * 1e3:.1f} ms, "
          f"one doubled batch {one * 1e3:.1f} ms ({two / one:.2f}x)")
    encoding = time_encoding(args.batch, args.steps)
    if encoding:
        print(f"MiniLM, {args.batch} captions: encoded {encoding['encode_s'] * 1e3:.1f} ms, "
              f"from the cache {encoding['cached_s'] * 1e3:.2f} ms ({encoding['encode_s'] / encoding['cached_s']:.0f}x)")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    record = {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "preset": args.preset, "size": args.size, "batch": args.batch,
              "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "training": results,
              "guided_step_s": {"two_passes": two, "doubled": one}, "encoding": encoding}
    path = Path(str(RESULTS).format(device=device.type))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
