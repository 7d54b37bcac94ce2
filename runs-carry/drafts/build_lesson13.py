"""Builds lessons/13_training_at_scale.ipynb (cells only; execute with nbconvert afterwards)."""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s, **meta: cells.append(new_code_cell(s.strip("\n"), metadata=meta))

md(r"""
# 13 · Training at scale: one GPU, then many processes

Every model in these lessons trained on two CPU cores. Imagen's base model trained on 256 TPU-v4 chips,
its SR stages on 128 each, with a batch of 2048 (§4.1). Between the two lie the steps a learner takes when
the laptop is outgrown: one GPU, then several GPUs or machines. The same `minimagen train` command takes
them there. This lesson shows what changes and what must not:

1. **Many processes, one model.** `torchrun` starts the command once per process and PyTorch's
   DistributedDataParallel (DDP) keeps the copies identical. Shown live on two CPU processes: the copies
   agree exactly, and the run equals one process with the same batch.
2. **The fast path on one device**: switches that make a step cheaper without changing what it computes,
   each measured, each tested equal to the plain path.
3. **Against the code a learner would otherwise pick**, imagen-pytorch, on the same U-Net configuration.

**Paper map.**
- [Imagen](https://arxiv.org/abs/2205.11487) §4.1 (training details: batch 2048, 2.5 M steps, 256 and 128
  TPU-v4 chips), appendix F (the optimiser settings).
- [PyTorch Distributed: Experiences on Accelerating Data Parallel Training](https://arxiv.org/abs/2006.15704)
  (Li et al. 2020, the DDP paper): §3 gradient averaging by all-reduce, bucketing, overlap with the
  backward pass.
- [Mixed Precision Training](https://arxiv.org/abs/1710.03740) for why a lower precision works at all
  (bfloat16 keeps fp32's exponent range, so it needs no loss scaling).
""")

code(r"""
DEVICE = "cpu"  # "cuda" on a GPU
SCALE = 1  # 1 = the stored CPU run
STEPS = 3 * SCALE  # training steps of the live two-process run
""", tags=["parameters"])

code(r"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import matplotlib.pyplot as plt
import torch

from minimagen.cascade import StageRecipe
from minimagen.checkpoint import TrainingState, list_checkpoints
from minimagen.distributed import Ranks
from minimagen.train import TrainConfig

BENCH = pathlib.Path("../bench/results")
WORK = pathlib.Path(tempfile.mkdtemp(prefix="minimagen-13-"))  # the runs of this lesson
torch.manual_seed(0)
""")

md(r"""
## Data parallelism in one paragraph

Each of $N$ processes holds a full copy of the U-Net. A step's batch of $B$ images is cut into $N$ slices;
each process runs forward and backward on its own $B/N$ images, then the processes **average their
gradients** (an all-reduce: NCCL between GPUs, gloo between CPU processes) and every copy takes the same
AdamW step. Since the loss is a mean over images, the average of the slices' gradients is the gradient of
the whole batch: $N$ processes with a batch of $B$ compute what one process with $B$ would, $N$ times as
fast if communication is free. minimagen adds one rule: every process draws the *whole* batch's random
numbers (which images, $t$, $\epsilon$, caption dropout, augmentation) from the same seeded generator and
keeps its slice (`minimagen.distributed.Ranks.local`), so the generator's state is the same everywhere and
a run resumes on any number of processes.
""")

code(r"""
for world in (1, 2, 4):
    print(f"{world} process(es), batch 16: slices {[Ranks(r, world).local(16) for r in range(world)]}")
try:
    Ranks(0, 3).local(16)
except ValueError as error:
    print("3 processes, batch 16:", error)
""")

md(r"""
## Two processes on this CPU, live

`torchrun --nproc_per_node 2 -m minimagen train ...` is the whole change on the command line. Below, two
gloo processes train the base U-Net (`base-s`, at 16 px to keep it quick) for a few steps with a global
batch of 4 (2 images each), and one process trains the same run with a batch of 4 (at full learning rate
from the first step, `--warmup-steps 1`, so that a few steps move the weights). Each process uses one
CPU thread. Only rank 0 writes checkpoints and prints.
""")

code(r"""
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out, processes):
    args = ["train", "--out", str(WORK / out), "--unet", "base-s", "--image-size", "16", "--batch-size", "4",
            "--steps", str(STEPS), "--warmup-steps", "1", "--checkpoint-every", str(STEPS), "--sample-every", "0",
            "--threads", "1", "--quiet"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                 str(free_port()), "-m", "minimagen"] if processes > 1 else [sys.executable, "-m", "minimagen"])
    start = time.perf_counter()
    done = subprocess.run(launcher + args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"{processes} process(es): {time.perf_counter() - start:.1f} s;", done.stdout.strip().splitlines()[-1])
    return TrainingState(list_checkpoints(WORK / out)[-1])


two, one = train("ddp", 2), train("single", 1)
# the weights both runs started from: the recipe's U-Net at its seed, before any step
fresh = StageRecipe(image_size=16).trainer(TrainConfig(batch_size=4, steps=1), WORK / "fresh").model.state_dict()
""")

md(r"""
Both runs wrote one checkpoint. Compare their weights tensor by tensor, and the logged losses (each rank
logs the mean over its own two images; rank 0's log is what the checkpoint holds, so compare the
one-process loss with it loosely):
""")

code(r"""
weights_two, weights_one = two.section("model/"), one.section("model/")
assert weights_two.keys() == weights_one.keys() and two.meta["step"] == one.meta["step"] == STEPS
diffs = [(weights_two[k] - weights_one[k]).abs().max().item() for k in weights_one]
changed = [(weights_one[k] - fresh[k]).abs().max().item() for k in weights_one]
print(f"{len(diffs)} weight tensors after {STEPS} steps")
print(f"  largest change of a weight from its initial value: {max(changed):.2e}")
print(f"  largest |two processes - one process|:             {max(diffs):.2e}")
print("  the run's random generator state, saved by both:   ",
      "identical" if torch.equal(two.tensors["rng/generator"], one.tensors["rng/generator"]) else "different")
assert max(diffs) < 1e-3 * max(changed)
""")

md(r"""
The two runs agree to the last few bits: what differs is only the order in which the floating-point sums
of the all-reduce are taken. That is the contract `tests/test_distributed.py` checks on every commit, along
with two more: every rank holds *identical* weights after each step, and killing one process stops the
run with one line naming the step, leaving the last checkpoint whole.

On this CPU the two-process run is not faster: two processes on two cores each get one thread, which is
what one process with two threads already had, and they pay for the all-reduce and for loading everything
twice. Data parallelism pays when each process has its own device. Across machines the command is the same
with a rendezvous (shown in the README):

```bash
torchrun --nproc_per_node 8 -m minimagen train --out runs/base64 --batch-size 512 ...        # 8 GPUs, 64 each
torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
    -m minimagen train --out /shared/runs/base64 ...                                        # node 0 of 2
```

## The fast path on one device

A GPU step is cheap enough that work a CPU step hides becomes visible. `minimagen.fastpath` holds the
switches, each off by default and each tested equal to the plain path within its precision
(`tests/test_fastpath.py`):

| switch | what it changes |
|---|---|
| `--draws device` | $t$, $\epsilon$, augmentation noise and caption dropout drawn on the GPU, not the CPU |
| `--channels-last` | NHWC memory order, the layout convolution kernels prefer |
| `--precision bf16` | bfloat16 autocast (fp32 master weights; no loss scaling needed) |
| `--fused-adamw` | AdamW's update as one kernel over all parameters |
| `--compile` | `torch.compile`; its first steps compile |

and two on the sampling side: classifier-free guidance as one doubled batch instead of two passes, and a
caption's embedding encoded once and cached. `bench/bench_train_paths.py` measures each through the real
Trainer; the stored CPU run:
""")

code(r"""
paths = json.loads((BENCH / "train_paths_cpu.json").read_text())
plain = paths["training"][0]["images_per_s"]
print(f"{paths['preset']} at {paths['size']} px, batch {paths['batch']}, {paths['threads']} CPU threads, torch {paths['torch']}")
for row in paths["training"]:
    print(f"  {row['path']:22s} {row['images_per_s']:6.1f} images/s  {row['images_per_s'] / plain:5.2f}x plain")
g = paths["guided_step_s"]
print(f"guided sampling step: two passes {g['two_passes'] * 1e3:.0f} ms, one doubled batch {g['doubled'] * 1e3:.0f} ms")
e = paths["encoding"]
print(f"a caption: encoded {e['encode_s'] * 1e3:.1f} ms, from the cache {e['cached_s'] * 1e6:.0f} us")
fig, ax = plt.subplots(figsize=(6.5, 2.8))
ax.barh([r["path"] for r in paths["training"]], [r["images_per_s"] for r in paths["training"]])
ax.set_xlabel("training images per second (CPU, 2 threads)")
ax.set_title("What each switch buys on this CPU")
ax.invert_yaxis()
plt.show()
""")

md(r"""
On a CPU the switches that change the arithmetic pay and the others do not. bf16 autocast is the largest
single gain in this run, channels-last the next; drawing the random numbers
"on the device" changes nothing when the device *is* the CPU, and a fused optimiser step matters only where
launching a kernel per parameter is expensive, which is on a GPU. `torch.compile` buys little for a U-Net
whose time is in large convolutions. The guided step is the instructive surprise: on the CPU, one doubled
batch is *slower* than two passes (a batch twice as large is not cheaper per image on two cores), while on
a GPU, where a small batch leaves most of the chip idle, the doubled batch is the point. That is why each
switch is a flag, measured on the machine that runs it, and not assumed. The cache is unambiguous: a
caption is encoded once per run, not once per step.

## Against imagen-pytorch

`bench/bench_imagen_pytorch.py` builds the same U-Net configuration in minimagen and in imagen-pytorch
(the most used open implementation), feeds both the same text embeddings, and measures a training step
and a guided sampling step side by side (in its own environment, `bench/imagen_pytorch_env.sh`, because
imagen-pytorch's dependencies do not install beside the lessons' CPU torch). The configurations cannot be
identical; the benchmark lists what differs:
""")

code(r"""
peer = json.loads((BENCH / "imagen_pytorch_cpu.json").read_text())
rows = {r["library"]: r for r in peer["rows"]}
ours, theirs = rows["minimagen"], rows["imagen-pytorch"]
print(f"{peer['device']}, {peer['threads']} threads, {peer['precision']}, imagen-pytorch {peer['imagen_pytorch']}")
for key, label, scale, unit in [("parameters", "parameters", 1e6, "M"), ("images_per_s", "training", 1, "images/s"),
                                ("peak_memory_bytes", "peak memory", 2**20, "MiB"),
                                ("train_flops_per_step", "FLOPs per step", 1e9, "GFLOP"),
                                ("guided_step_s", "guided step", 1e-3, "ms")]:
    print(f"  {label:15s} minimagen {ours[key] / scale:8.1f} {unit:8s} imagen-pytorch {theirs[key] / scale:8.1f} {unit:8s}"
          f" ratio {ours[key] / theirs[key]:.2f}")
for d in peer["differences"]:
    print(" -", d)
""")

md(r"""
On the same configuration and the same CPU, minimagen trains about twice as many images per second with
roughly 0.6 of the peak memory (the ratio column above), and its guided step takes about three quarters of
the time. Part of the gap is work minimagen does not do (imagen-pytorch's U-Net carries 0.7 M more
parameters and spends more FLOPs per step; the differences above say where), and part is overhead outside
the arithmetic: the FLOP ratio is smaller than the speed ratio. Both libraries ran in one environment, the
benchmark's own, so the torch version is the same for both.

## On a GPU

The GPU half of the benchmarks (`python bench/bench_train_paths.py --device cuda`, `python
bench/bench_imagen_pytorch.py --device cuda`, which also reports model FLOPs utilisation) writes its JSON
beside the CPU files. The cell below lists what is recorded; where the list is empty, no GPU numbers exist
yet and this lesson shows none, rather than numbers from elsewhere. What to expect when they do: on a GPU
the step is short, so the random draws made on the CPU and copied over, one kernel launch per parameter in
the optimiser, and half-empty small batches are what the fast path removes.
""")

code(r"""
gpu_files = sorted(BENCH.glob("*cuda*.json"))
print("GPU results recorded:", [p.name for p in gpu_files] or "none")
print("this machine:", "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
""")

md(r"""
## Summary

- Data parallelism: $N$ processes, each with a full copy of the model and $1/N$ of every batch, average
  their gradients and take the same step. `torchrun --nproc_per_node N -m minimagen train ...` runs it;
  `--batch-size` is the global batch and must divide by $N$; only rank 0 writes.
- Live, two gloo processes with 2 images each against one process with 4: after 3 steps the weights
  differ by less than a thousandth of how far the steps moved them (the cell asserts it; here by four
  orders of magnitude less), and the saved random generator is identical, so the run resumes on any
  number of processes.
- On a CPU, bf16 autocast (1.18x) and channels-last (1.11x) pay, the GPU-minded switches do not, and all
  together give 1.22x; guidance as one doubled batch is slower than two passes here (168 ms against
  132 ms). A cached caption costs microseconds against 45.1 ms to encode.
- Against imagen-pytorch on the same configuration and CPU: 2.03x the training images per second at 0.59
  of the peak memory and 0.86 of the FLOPs per step, and 0.77 of the time per guided sampling step.
- No GPU numbers are recorded yet; the benchmarks' GPU commands write them beside the CPU ones.

## Exercises

1. Repeat the live comparison with 4 processes and a batch of 4 (one image each). Do the weights still
   agree? Then ask for a batch of 6 on 4 processes and read the error: why must the batch divide?
2. Resume the two-process run with *one* process for 2 more steps (`train("ddp", 1)` after raising
   `STEPS` to 5 for that call) and compare with a one-process run of 5 steps from scratch. Which of the
   run's state must a checkpoint hold for the two to agree? (`minimagen.checkpoint.save_training_state`.)
3. On your machine, `python bench/bench_train_paths.py --steps 3 --rounds 2`: which switches pay on your
   CPU, and does the doubled guided batch? If you have a GPU, add `--device cuda` and compare.
4. From the imagen-pytorch table: images per second per GFLOP of a step, for each library. How much of
   minimagen's speed-up is explained by doing fewer FLOPs, and how much by doing them with less overhead?
""")

nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}})
nbformat.write(nb, "lessons/13_training_at_scale.ipynb")
print(len(cells), "cells")
