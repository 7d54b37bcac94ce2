"""minimagen against imagen-pytorch, side by side in one run on one torch: training images/s, peak memory,
model FLOPs per training step and, on a GPU, MFU; and seconds per guided sampling step.

Runs in the environment `bash bench/imagen_pytorch_env.sh` makes (imagen-pytorch needs torchvision, which the
project's own CPU torch cannot have beside it):

    bench/.venv-imagen/bin/python bench/bench_imagen_pytorch.py                   # the CPU half, base-s
    bench/.venv-imagen/bin/python bench/bench_imagen_pytorch.py --device cuda --config base-s dim128

Both libraries build the same U-Net as far as imagen-pytorch's options allow (`CONFIGS` and `COMMON`: width,
levels, ResNet blocks per level, where self- and cross-attention sit, heads, the width of the conditioning
and of the text tokens, the Efficient U-Net order, nearest-neighbour upsampling, a skip from the stem to
the output) and train it on the same batch of 64 px images with the same text embeddings passed in
directly (24 tokens of width 384, MiniLM's shape), each through the trainer a user of that library runs:
minimagen's `Trainer` and imagen-pytorch's `ImagenTrainer`, with the same learning rate, caption dropout
(10%), gradient clipping and loss (plain MSE on eps). What their options cannot make equal is listed in
`DIFFERENCES` and printed; the FLOPs column shows how much arithmetic each step does, so a speed ratio can
be told apart from a difference in work. Each library runs in a fresh process of its own, so that peak
memory is its own. Writes bench/results/imagen_pytorch_<device>.json.

imagen-pytorch asks the model hub for T5's config when it is imported (a default argument calls
`T5Config.from_pretrained`). Offline, this script answers that call with t5-v1_1-base's shape; the U-Nets
here are given the text width explicitly, so the answer is never used.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

_t5_config = transformers.T5Config.from_pretrained.__func__


def _offline_t5_config(cls, name, *args, **kwargs):
    if name == "google/t5-v1_1-base":
        return transformers.T5Config(d_model=768, d_ff=2048, num_layers=12, num_heads=12)
    return _t5_config(cls, name, *args, **kwargs)


transformers.T5Config.from_pretrained = classmethod(_offline_t5_config)

import imagen_pytorch  # noqa: E402  (after the offline T5 answer)
from imagen_pytorch import Imagen, ImagenTrainer, Unet  # noqa: E402

from bench_train_paths import TOKENS, WIDTH, FixedText, Images  # noqa: E402  (the same data stand-ins as the fast-path bench)
from minimagen.guidance import guided_model_fn  # noqa: E402
from minimagen.schedules import NoiseSchedule  # noqa: E402
from minimagen.train import TrainConfig, Trainer  # noqa: E402
from minimagen.unet import PRESETS, UNet, UNetConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "imagen_pytorch_{device}.json"

_minimagen_models: list = []  # the U-Nets `ours` built, for the FLOP count's attention switch
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM parts

# name -> (our UNetConfig, imagen-pytorch's Unet keyword arguments), the same network as far as both allow.
CONFIGS = {
    # minimagen's shipped base U-Net (2.3 M parameters)
    # (imagen-pytorch adds one cross-attention ResNet block to every level before its num_resnet_blocks)
    "base-s": (PRESETS["base-s"], dict(dim=32, dim_mults=(1, 2, 3), num_resnet_blocks=(0, 1, 1), cond_dim=128,
                                       layer_attns=(False, False, True), layer_cross_attns=(False, True, True),
                                       attn_heads=4, attn_dim_head=24)),
    # a GPU-size base: width 128 and four levels
    "dim128": (UNetConfig(image_size=64, channels=128, channel_mults=(1, 2, 3, 4), blocks_per_level=(1, 2, 3, 4),
                              self_attention_levels=(False, False, True, True),
                              cross_attention_levels=(False, True, True, True), text_dim=WIDTH, num_heads=8,
                              skip_scale=2**-0.5, efficient_updown=True),
                   dict(dim=128, dim_mults=(1, 2, 3, 4), num_resnet_blocks=(0, 1, 2, 3), cond_dim=512,
                        layer_attns=(False, False, True, True), layer_cross_attns=(False, True, True, True),
                        attn_heads=8, attn_dim_head=64)),
}
# Shared by every imagen-pytorch U-Net here: its options set to minimagen's choices where it has one.
COMMON = dict(text_embed_dim=WIDTH, max_text_len=TOKENS, memory_efficient=True, init_cross_embed=False,
              init_conv_kernel_size=3, use_global_context_attn=False, attn_pool_text=False,
              layer_attns_add_text_cond=False, scale_skip_connection=True, final_resnet_block=True,
              attend_at_middle=True, pixel_shuffle_upsample=False, init_conv_to_final_conv_residual=True)
DIFFERENCES = [
    "blocks: imagen-pytorch's levels open with a ResNet block that cross-attends to the text, and it keeps a skip "
    "per block; minimagen cross-attends after a level's blocks and keeps one skip per level",
    "attention: imagen-pytorch's transformer blocks add a feed-forward layer (ff_mult 2) after self-attention, its "
    "cross-attention has a single key/value head, both middle blocks cross-attend, and its last block has "
    "global-context attention; minimagen's attention blocks have none of these",
    "downsampling: imagen-pytorch folds 2x2 pixels into channels and mixes them with a 1x1 convolution; minimagen "
    "uses a strided 3x3 convolution",
    "optimiser: imagen-pytorch's ImagenTrainer runs Adam (betas 0.9, 0.99, no weight decay) under HuggingFace "
    "accelerate; minimagen's Trainer AdamW (betas 0.9, 0.999, weight decay 0) directly",
    "EMA: imagen-pytorch's (ema-pytorch) updates every 10 steps after the first 100; minimagen's every step",
    "on a GPU minimagen runs its fast path (device draws, channels-last, fused AdamW), which imagen-pytorch has no "
    "options for; on a CPU both run their plain paths",
    "guided sampling: imagen-pytorch runs the conditional and unconditional passes one after the other (timed "
    "without its parallel-component removal); minimagen runs them as one doubled batch (its two-pass time is in "
    "the JSON as guided_step_two_passes_s)",
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Memory:
    """Peak memory of a block: the GPU's allocator peak, or on a CPU the rise of the process's peak RSS over
    its resident size when the block began (each library is measured in a process of its own)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start


def timed(step, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def ours(config: UNetConfig, batch: int, device, precision: str, out: str):
    torch.manual_seed(0)
    model = UNet(config)
    train = TrainConfig(steps=10**6, batch_size=batch, lr=3e-4, warmup_steps=1, checkpoint_every=0,
                        log_every=10**6, precision=precision, draws="device" if device.type == "cuda" else "host",
                        fused_adamw=device.type == "cuda", channels_last=device.type == "cuda")
    trainer = Trainer(model, Images(4 * batch, config.image_size), NoiseSchedule.cosine(1000), train, out,
                      text_encoder=FixedText(device), device=device)
    _minimagen_models[:] = [trainer.model, trainer.ema]
    text, mask = FixedText(device).encode(["a"] * batch)
    guided = guided_model_fn(trainer.ema, text, mask, w=3.0, schedule=trainer.schedule)
    two_passes = guided_model_fn(trainer.ema, text, mask, w=3.0, schedule=trainer.schedule, doubled=False)
    return model.num_parameters(), trainer.train_step, guided, two_passes


def attention_impl(module: torch.nn.Module, impl: str) -> None:
    """Switch minimagen's attention layers between PyTorch's fused kernel and the written-out formula: the
    FLOP counter has no formula for the fused CPU kernel and would count its attention as free."""
    for m in module.modules():
        if hasattr(m, "impl"):
            m.impl = impl


def theirs(kwargs: dict, size: int, batch: int, device, precision: str):
    torch.manual_seed(0)
    unet = Unet(**COMMON, **kwargs)
    imagen = Imagen(unets=(unet,), image_sizes=(size,), timesteps=1000, text_embed_dim=WIDTH, cond_drop_prob=0.1,
                    auto_normalize_img=False, min_snr_loss_weight=False)
    trainer = ImagenTrainer(imagen, lr=3e-4, max_grad_norm=1.0, verbose=False,
                            precision="bf16" if precision == "bf16" else None,
                            accelerate_cpu=device.type == "cpu")
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    text, mask = FixedText(device).encode(["a"] * batch)

    def step():
        trainer(images, text_embeds=text, text_masks=mask, unet_number=1, max_batch_size=batch)
        trainer.update(unet_number=1)

    t = torch.full((batch,), 0.5, device=device)  # imagen-pytorch's continuous time

    def guided(x, _):
        return unet.forward_with_cond_scale(x, t, text_embeds=text, text_mask=mask, cond_scale=3.0,
                                            remove_parallel_component=False)

    return sum(p.numel() for p in unet.parameters()), step, guided, None


def measure(library: str, config_name: str, batch: int, device: str, precision: str, warmup: int, steps: int,
            threads: int) -> dict:
    """One library's figures for one configuration. Run in a fresh process (``in_child``), so that peak memory
    and allocator state are that library's alone."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    ours_config, their_kwargs = CONFIGS[config_name]
    size = ours_config.image_size
    with tempfile.TemporaryDirectory() as out:
        if library == "minimagen":
            params, step, guided, two_passes = ours(ours_config, batch, device, precision, out)
        else:
            params, step, guided, two_passes = theirs(their_kwargs, size, batch, device, precision)
        with Memory(device) as memory:
            step_s = timed(step, device, warmup, steps)
        if library == "minimagen":
            attention_impl(torch.nn.ModuleList(_minimagen_models), "manual")
        flops = step_flops(step)
        if library == "minimagen":
            attention_impl(torch.nn.ModuleList(_minimagen_models), "sdpa")
        x = torch.randn(batch, 3, size, size, device=device)
        t = torch.full((batch,), 500, device=device)
        with torch.no_grad():
            guided_s = timed(lambda: guided(x, t), device, 1, steps)
            two_s = timed(lambda: two_passes(x, t), device, 1, steps) if two_passes else None
    return {"library": library, "config": config_name, "batch": batch, "size": size, "parameters": params,
            "images_per_s": batch / step_s, "step_s": step_s, "peak_memory_bytes": memory.peak,
            "train_flops_per_step": flops, "guided_step_s": guided_s, "guided_step_two_passes_s": two_s}


def in_child(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["base-s"], choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="per configuration (default 16 on a CPU; 16 for base-s and 128 for dim128 on a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    defaults = {"base-s": 16, "dim128": 128 if device.type == "cuda" else 16}
    batches = args.batch or [defaults[c] for c in args.config]
    if len(batches) == 1:
        batches = batches * len(args.config)
    if len(batches) != len(args.config) or min(batches) < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch takes one positive size, or one per --config; --steps >= 1, --warmup >= 0")

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)
    print(f"minimagen vs imagen-pytorch {imagen_pytorch.__version__}, torch {torch.__version__}, on "
          f"{gpu or platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), {precision}")
    print("Not equal between the two, as far as their options go:")
    for d in DIFFERENCES:
        print(f"  - {d}")
    rows = []
    for config_name, batch in zip(args.config, batches):
        size = CONFIGS[config_name][0].image_size
        a, b = (in_child(library, config_name, batch, args.device, precision, args.warmup, args.steps, args.threads)
                for library in ("minimagen", "imagen-pytorch"))
        for r in (a, b):
            if peak:
                r["mfu"] = r["train_flops_per_step"] / r["step_s"] / (peak * 1e12)
        rows += [a, b]
        print(f"\n{config_name} at {size} px, batch {batch}")
        print(f"{'':<15} {'params':>8} {'images/s':>9} {'GFLOP/step':>11} {'peak MiB':>9} {'guided step':>12}"
              + ("  MFU" if peak else ""))
        for r in (a, b):
            print(f"{r['library']:<15} {r['parameters'] / 1e6:>7.2f}M {r['images_per_s']:>9.1f} "
                  f"{r['train_flops_per_step'] / 1e9:>11.2f} {r['peak_memory_bytes'] / 2**20:>9.0f} "
                  f"{r['guided_step_s'] * 1e3:>10.1f}ms" + (f" {r['mfu']:>5.1%}" if peak else ""))
        print(f"{'ours/theirs':<15} {a['parameters'] / b['parameters']:>7.2f}x {a['images_per_s'] / b['images_per_s']:>8.2f}x "
              f"{a['train_flops_per_step'] / b['train_flops_per_step']:>10.2f}x "
              f"{a['peak_memory_bytes'] / max(1, b['peak_memory_bytes']):>8.2f}x "
              f"{a['guided_step_s'] / b['guided_step_s']:>10.2f}x (time; < 1 is faster)")

    record = {"device": str(device), "device_name": gpu or platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "imagen_pytorch": imagen_pytorch.__version__, "precision": precision, "steps": args.steps,
              "warmup": args.warmup, "differences": DIFFERENCES, "rows": rows}
    path = Path(str(RESULTS).format(device=device.type))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
