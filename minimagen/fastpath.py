"""The switches that make a training step faster on a GPU (lesson 13).

Each one is a field of ``TrainConfig`` (and a flag of ``minimagen train``), off by default, and each is
tested against the plain path in ``tests/test_fastpath.py``. Three compute what the plain path computes, up
to rounding; the first draws other random numbers from the same distributions:

- ``draws="device"``: the step's random draws (t, eps, the SR stages' augmentation levels and noise, caption
  dropout) come from a generator on the training device. The plain path draws them on the CPU and copies
  them over, so that a run is the same on any device; on a GPU that copy and the CPU's normal sampler can
  bound the step. A device generator gives another stream (seeded from the run's seed, but not equal to
  it), so a run is reproducible on the same device model (CUDA's random kernels lay their work out by the
  number of multiprocessors), and resuming is exact: the generator's state is in the checkpoint, which
  records the device, and a resume on another device type, or with the other ``draws``, is refused.
- ``channels_last``: the U-Net's weights and the step's images in NHWC memory order, which convolution
  kernels on GPUs with tensor cores (and oneDNN on CPUs) prefer. Same numbers up to summation order.
- ``fused_adamw``: AdamW's update of every parameter in one kernel instead of a loop of small ones
  (``torch.optim.AdamW(fused=True)``). Same update up to rounding.
- ``compile``: the U-Net (or its DistributedDataParallel wrapper, if any) compiled by ``torch.compile``.
  The first steps pay for the compilation; ``bench/bench_train_paths.py`` measures whether it pays back.

bf16 autocast (``precision``), PyTorch's fused attention (``UNetConfig.attention="sdpa"``), guidance as one
doubled batch (``guidance.guided_model_fn``) and encoding each caption once (``TextEncoder(cache=True)``)
are the other fast paths; they live where they act.
"""

from __future__ import annotations

import torch

from minimagen import checks

DRAWS = ("host", "device")
# The device generator's seed is the run's seed mixed with this constant: with the run's own seed, a CPU
# "device" generator would replay the host generator's stream, and its draws would repeat the batch indices'.
DEVICE_SEED_MIX = 0x5DEECE66D


def draw_generator(draws: str, seed: int, device: torch.device, host: torch.Generator) -> torch.Generator:
    """The generator of a step's random draws: the run's own ``host`` generator (``draws="host"``), or a new
    one on ``device`` seeded from ``seed`` (``draws="device"``)."""
    checks.choice("draws", draws, DRAWS)
    if draws == "host":
        return host
    return torch.Generator(device=device).manual_seed(seed ^ DEVICE_SEED_MIX)


def draws_record(draws: str, device: torch.device) -> dict:
    """What a checkpoint records of where its draws were made, for ``check_resume``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"draws": draws, "draws_device": name if draws == "device" else None}


def check_resume(stored: dict, draws: str, device: torch.device, path) -> None:
    """Refuse to resume a run whose draws were made elsewhere: with the other ``draws`` mode, or with device
    draws on another device (the generator's state would not load, or would continue another stream)."""
    if "draws" not in stored:  # written before the fast path existed: host draws
        stored = {"draws": "host", "draws_device": None}
    here = draws_record(draws, device)
    if stored["draws"] != draws:
        raise ValueError(f"checkpoint {str(path)!r} was written with draws={stored['draws']!r}; resume it with "
                         f"the same draws (--draws {stored['draws']}), or start a new run")
    if draws == "device" and stored["draws_device"] != here["draws_device"]:
        raise ValueError(f"checkpoint {str(path)!r} drew on {stored['draws_device']!r}, this run on "
                         f"{here['draws_device']!r}: device draws resume only on the same device model "
                         "(or start a new run)")


def adamw(params, *, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW, its update as one fused kernel when ``fused``."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in NHWC memory order when ``channels_last`` and it is an image batch (4-D); else unchanged."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model with its convolution weights in NHWC memory order when ``channels_last`` (in place)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compiled(net: torch.nn.Module, compile: bool) -> torch.nn.Module:
    """``net`` compiled by ``torch.compile`` when ``compile``; its parameters stay ``net``'s own."""
    return torch.compile(net) if compile else net


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (in place).

    A checkpoint stores tensors in the default (NCHW) order, so after loading, a channels-last parameter's
    AdamW moments are laid out differently from it; the fused kernel walks a parameter and its moments
    element by element in memory, so it would pair the wrong elements. Copying them into the parameter's
    layout makes a resumed run equal to one that never stopped.
    """
    for param, state in optimizer.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
