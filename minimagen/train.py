"""Training a diffusion U-Net: AdamW, EMA weights, caption dropout for classifier-free guidance,
checkpoints that resume exactly.

The loop is the one of DDPM Algorithm 1, repeated:

    x0, caption ~ data;  t ~ U{0..T-1};  eps ~ N(0, I)
    loss = || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t, text) ||^2

with three additions Imagen relies on: the caption is replaced by the null embedding for a fraction
of examples (so the same network learns eps(x_t, null) for classifier-free guidance), an exponential
moving average (EMA) of the weights is kept and used for sampling, and gradients are clipped.

Every random draw of a run (batch indices, t, eps, caption dropout) comes from one ``torch.Generator``
whose state is saved in each checkpoint, so a resumed run makes the same draws as one that never stopped.
(``TrainConfig.draws="device"`` moves all but the batch indices to a second generator on the training
device, also saved: see ``minimagen.fastpath`` for that and the other switches of the fast path.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Literal, Sequence

import torch
from tqdm import tqdm

from minimagen import checks
from minimagen.checkpoint import (
    CHECKPOINT_PREFIX, StopWatch, TrainingState, hardware_description, list_checkpoints, run_card, save_training_state,
    save_weights,
)
from minimagen.data import Shapes
from minimagen.diffusion import diffusion_loss, prediction_of
from minimagen.plot import save_grid
from minimagen.samplers import ddim_sample
from minimagen.schedules import NoiseSchedule, schedule_from_spec
from minimagen.unet import UNet, UNetConfig
# The switches of lesson 13's fast path (device-side draws, channels-last, fused AdamW, torch.compile).
from minimagen import fastpath
# The periodic sample grids use classifier-free guidance, lesson 06's idea one lesson early: a grid at
# w = 3 shows whether the model reads its captions long before an unguided one would.
from minimagen.guidance import as_eps, guided_model_fn



@dataclasses.dataclass
class TrainConfig:
    steps: int = 2000  # total optimizer steps of the run (resume continues up to this number)
    batch_size: int = 16
    lr: float = 3e-4  # AdamW peak learning rate, reached after `warmup_steps`
    warmup_steps: int = 100  # linear warm-up keeps the first, noisy updates small
    # >0: the rate falls linearly to 0 over the last lr_decay_steps of `steps` (annealing: smaller updates
    # average out the batch noise). A run resumed with a larger `steps` decays towards the new end.
    lr_decay_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # clip the global gradient norm (Imagen clips too)
    ema_decay: float = 0.999  # EMA of the weights, used for sampling
    text_drop_prob: float = 0.1  # Imagen trains with the caption dropped 10% of the time (CFG)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a GPU that has it, else fp32
    log_every: int = 25  # loss history granularity and progress-bar refresh, in steps
    checkpoint_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted once a newer one is safely on disk
    sample_every: int = 0  # write a grid of EMA samples every this many steps (0 = never)
    sample_guidance: float = 3.0  # classifier-free guidance weight of those grids (text models)
    max_aug_level: int = 250  # SR stages: the low-res input is noised at a level drawn from [0, max_aug_level)
    # >0: training timesteps are drawn from [0, max_t) only, so the run trains the low-noise end of the
    # process alone (an "expert" for those steps, eDiff-I §4; e.g. fine-tuning an SR stage from --init on the
    # steps that leave grain); 0: from every timestep, as DDPM does
    max_t: int = 0
    seed: int = 0
    # The fast path (minimagen.fastpath), each switch off by default:
    draws: Literal["host", "device"] = "host"  # where t, eps, augmentation and dropout are drawn
    channels_last: bool = False  # NHWC weights and images
    fused_adamw: bool = False  # AdamW's update as one kernel
    compile: bool = False  # torch.compile the U-Net

    def __post_init__(self) -> None:
        if self.lr_decay_steps < 0 or self.lr_decay_steps > self.steps:
            raise ValueError(f"TrainConfig.lr_decay_steps must be in [0, steps={self.steps}], got {self.lr_decay_steps}")
        positive = ("steps", "batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.text_drop_prob <= 1.0:
            raise ValueError(f"TrainConfig.text_drop_prob must be in [0, 1], got {self.text_drop_prob}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"TrainConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.max_t < 0:
            raise ValueError(f"TrainConfig.max_t must be >= 0 (0: every timestep), got {self.max_t}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"TrainConfig.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        checks.choice("TrainConfig.draws", self.draws, fastpath.DRAWS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast where it pays off (a GPU with bf16 support, or when asked), else nothing."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


class OneProcess:
    """How a Trainer shares its work with other processes: here, not at all. ``minimagen.distributed.Ranks``
    is the other kind: each process takes a slice of every batch, and only one writes files."""

    is_main = True  # the process that writes checkpoints, sample grids and progress
    world = 1  # processes sharing each step

    def local(self, batch_size: int) -> slice:
        """This process's share of a batch of ``batch_size``."""
        return slice(0, batch_size)

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is True on any process (so that all stop at the same step)."""
        return flag

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that runs the forward and backward passes."""
        return model


class Trainer:
    """Train a (text-conditional or unconditional) U-Net on a dataset of ``(image, caption)`` pairs.

    ``model`` is called as ``model(x_t, t, text, text_mask, text_drop=...)``; with ``text_encoder=None``
    the model is trained unconditionally as ``model(x_t, t)``. Checkpoints go to ``out_dir``.

    ``parallel`` shares the work between processes (``minimagen.distributed``); by default there is one.
    Every process makes the random draws of the whole batch from the same generator and keeps its slice,
    so a run on N processes takes the same steps as a run on one with the same ``batch_size``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: Sequence,
        schedule: NoiseSchedule,
        config: TrainConfig,
        out_dir: str | pathlib.Path,
        *,
        text_encoder=None,
        device: str | torch.device = "cpu",
        extra_metadata: dict[str, Any] | None = None,
        sample_prompts: Sequence[str] | None = None,
        workers: int = 0,
        parallel=None,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.device = torch.device(device)
        self.model = fastpath.prepare(model.to(self.device), config.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.dataset = dataset
        self.schedule = schedule.to(self.device)
        self.config = config
        if config.max_t > schedule.T:
            raise ValueError(f"TrainConfig.max_t must be at most the schedule's T = {schedule.T}, got {config.max_t}")
        self.out_dir = pathlib.Path(out_dir)
        self.text_encoder = text_encoder
        self.extra_metadata = extra_metadata or {}
        self.hardware: list[str] = []  # what the run trained on, as checkpoints record it (hardware_description)
        # Fixed prompts for the periodic sample grids: by default the captions of the first 8 items.
        self.sample_prompts = list(sample_prompts or [dataset[i][-1] for i in range(min(8, len(dataset)))])
        self.optimizer = fastpath.adamw(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                        fused=config.fused_adamw)
        self.generator = torch.Generator().manual_seed(config.seed)  # batch indices, and by default every draw
        # t, eps, caption dropout and augmentation: this same generator, or one on the device (config.draws)
        self.draws = fastpath.draw_generator(config.draws, config.seed, self.device, self.generator)
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, mean loss over the last log_every steps)
        self.wall_time = 0.0  # seconds spent in fit(), summed over resumes
        checks.integer("workers", workers, 0)
        # Threads that render a batch's items in parallel (numpy drawing releases the GIL); the items and
        # their order are the same with any number of workers, so results do not depend on it.
        self._pool = ThreadPoolExecutor(workers) if workers else None
        self.parallel = parallel or OneProcess()
        self.local = self.parallel.local(config.batch_size)  # this process's slice of every batch
        # the model itself, or its DistributedDataParallel wrapper; compiled when config.compile
        self._net = fastpath.compiled(self.parallel.wrap(self.model), config.compile)

    # -- one step -----------------------------------------------------------------------------
    def _learning_rate(self, step: int) -> float:
        c = self.config
        warm = min(1.0, (step + 1) / max(1, c.warmup_steps))
        anneal = min(1.0, (c.steps - step) / c.lr_decay_steps) if c.lr_decay_steps else 1.0
        return c.lr * warm * anneal

    def _batch(self) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
        """Images, captions and the U-Net's extra inputs (``model_inputs``) of one batch."""
        idx = torch.randint(len(self.dataset), (self.config.batch_size,), generator=self.generator)
        indices = [int(i) for i in idx[self.local]]
        items = list(self._pool.map(self.dataset.__getitem__, indices)) if self._pool else [
            self.dataset[i] for i in indices]
        images = torch.stack([item[0] for item in items]).to(self.device)  # (B, 3, H, W)
        return images, [item[-1] for item in items], self.model_inputs(items, images.shape[-1])

    def draw(self, b: int, make) -> torch.Tensor:
        """A random draw ``make(n)`` (first dimension n) for a batch of ``b`` items of a training step: made for
        the whole batch and sliced to this process's share, so that every process advances the run's generator
        alike. Any other ``b`` (a batch that is not the step's) is drawn as is."""
        if b == self.local.stop - self.local.start:
            return make(self.config.batch_size)[self.local]
        return make(b)

    def randint(self, b: int, high: int) -> torch.Tensor:
        """``b`` integers from [0, high), drawn through ``draw`` by ``self.draws``, on the training device."""
        g = self.draws
        return self.draw(b, lambda n: torch.randint(high, (n,), generator=g, device=g.device)).to(self.device)

    def randn(self, b: int, shape: Sequence[int]) -> torch.Tensor:
        """A ``(b, *shape)`` standard normal draw, through ``draw`` by ``self.draws``, on the training device."""
        g = self.draws
        return self.draw(b, lambda n: torch.randn((n, *shape), generator=g, device=g.device)).to(self.device)

    def rand(self, b: int) -> torch.Tensor:
        """``b`` uniform draws from [0, 1), through ``draw`` by ``self.draws``, on the training device."""
        g = self.draws
        return self.draw(b, lambda n: torch.rand(n, generator=g, device=g.device)).to(self.device)

    def model_inputs(self, items: list[tuple], size: int) -> dict[str, torch.Tensor]:
        """What the U-Net gets besides x_t, t and the caption, for a batch of dataset ``items``: nothing
        here. A stage that needs more (``cascade.SuperResolutionTrainer``: the noised low-res image)
        overrides this, drawing any randomness through ``randint``/``randn``/``rand``."""
        return {}

    def sample_inputs(self, n: int, size: int, seed: int, aug_level: int) -> dict[str, torch.Tensor]:
        """The extra U-Net inputs of the periodic sample grids (``sample``): nothing here."""
        return {}

    def loss_on(self, images: torch.Tensor, captions: list[str],
                extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The diffusion loss of one batch, with caption dropout drawn from the run's generator.

        ``extra`` are the U-Net's extra inputs for this batch (``model_inputs``).
        """
        b = images.shape[0]
        channels_last = self.config.channels_last
        images = fastpath.memory_format(images, channels_last)
        extra = {k: fastpath.memory_format(v, channels_last) for k, v in (extra or {}).items()}
        if self.text_encoder is None:
            def model_fn(x_t, t):
                return self._net(x_t, t, **extra)
        else:
            text, mask = self.text_encoder.encode(captions)  # (B, L, D), (B, L)
            text, mask = text.to(self.device), mask.to(self.device)
            drop = self.rand(b) < self.config.text_drop_prob

            def model_fn(x_t, t):
                return self._net(x_t, t, text, mask, text_drop=drop, **extra)

        # By default t and eps are drawn on the CPU generator, so the run is the same on any device.
        t = self.randint(b, self.config.max_t or self.schedule.T)
        noise = fastpath.memory_format(self.randn(b, images.shape[1:]), channels_last)
        with autocast_context(self.config.precision, self.device):
            return diffusion_loss(model_fn, images, self.schedule, t=t, noise=noise,
                                  prediction=prediction_of(self.model))

    def train_step(self) -> float:
        self.model.train()
        images, captions, extra = self._batch()
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate(self.step)
        loss = self.loss_on(images, captions, extra)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm the decay up (as in many DDPM codebases) so early EMA weights are not stuck at init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers()):
            ema_b.copy_(b)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, progress: bool = True, time_limit: float | None = None) -> list[tuple[int, float]]:
        """Train until ``config.steps``, logging, checkpointing; returns the loss history.

        ``time_limit`` (seconds) stops the run early, with a checkpoint, once that much time has passed
        in this call: calling ``fit`` again (or resuming) continues from there. Time the process spends
        paused by SIGTSTP (``kill -TSTP PID``; ``kill -CONT PID`` resumes) counts neither towards the limit nor
        towards the card's wall time (``checkpoint.StopWatch``).
        """
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
        with StopWatch() as watch:  # a run paused with kill -TSTP neither counts the pause nor runs out of time in it
            self._fit(watch, progress, time_limit)
        return self.history

    def _fit(self, watch: StopWatch, progress: bool, time_limit: float | None) -> None:
        cfg = self.config
        main = self.parallel.is_main
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (progress and main),
                   dynamic_ncols=True)
        window: list[float] = []
        start, images_seen = watch.elapsed(), 0
        while self.step < cfg.steps:
            window.append(self.train_step())
            images_seen += cfg.batch_size
            bar.update(1)
            if self.step % cfg.log_every == 0:
                self.history.append((self.step, sum(window) / len(window)))
                window = []
                rate = images_seen / max(1e-9, watch.elapsed() - start)
                bar.set_postfix(loss=f"{self.history[-1][1]:.4f}", img_s=f"{rate:.1f}")
            if cfg.sample_every and self.step % cfg.sample_every == 0 and main:
                self.save_samples()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.wall_time += watch.elapsed() - start
                start, images_seen = watch.elapsed(), 0
                if main:
                    self.save_checkpoint()
            # the main process's clock decides for every rank (a rank waiting on a paused one would count the pause)
            out_of_time = main and time_limit is not None and watch.elapsed() > time_limit
            if time_limit is not None and self.parallel.any(out_of_time) and self.step < cfg.steps:
                if main:
                    print(f"train: time limit of {time_limit:g} s reached at step {self.step} of {cfg.steps}; "
                          "run again to continue")
                break
        bar.close()
        if window:
            self.history.append((self.step, sum(window) / len(window)))
        self.wall_time += watch.elapsed() - start
        if main:
            self.save_checkpoint()

    @torch.no_grad()
    def sample(self, prompts: Sequence[str] | None = None, steps: int = 50, seed: int = 0,
               aug_level: int = 0) -> torch.Tensor:
        """DDIM samples from the EMA weights (with CFG and dynamic thresholding for a text model).

        ``aug_level`` is for stages whose ``sample_inputs`` use it (the SR stages' fixed augmentation level).
        """
        prompts = list(prompts or self.sample_prompts)
        n = len(prompts)
        shape = (n, *self.dataset[0][0].shape)
        extra = self.sample_inputs(n, shape[-1], seed, aug_level)
        if self.text_encoder is None:
            def model_fn(x_t, t):
                return self.ema(x_t, t, **extra)
            model_fn = as_eps(model_fn, prediction_of(self.ema), self.schedule)
            threshold = "static"
        else:
            text, mask = self.text_encoder.encode(prompts)
            model_fn = guided_model_fn(self.ema, text.to(self.device), mask.to(self.device),
                                       self.config.sample_guidance, schedule=self.schedule, **extra)
            threshold = "dynamic"
        return ddim_sample(model_fn, shape, self.schedule, steps=steps, threshold=threshold, device=self.device,
                           generator=torch.Generator().manual_seed(seed), progress=False)

    def save_samples(self) -> pathlib.Path:
        """Write a grid of samples for the fixed prompts to ``out_dir/samples/step_XXXXXXXX.png``."""
        path = self.out_dir / "samples" / f"{CHECKPOINT_PREFIX}{self.step:08d}.png"
        save_grid(self.sample(), path, nrow=len(self.sample_prompts))
        (path.parent / "prompts.txt").write_text("\n".join(self.sample_prompts) + "\n")
        return path

    # -- checkpoints --------------------------------------------------------------------------
    def _machines(self) -> list[str]:
        """Every machine the run has trained on, in order (a resumed run may move): ``hardware_description``,
        with the number of processes under ``torchrun``."""
        here = hardware_description(self.device)
        if self.parallel.world > 1:
            here += f", {self.parallel.world} processes"
        return self.hardware if here in self.hardware else self.hardware + [here]

    def checkpoint_path(self, step: int) -> pathlib.Path:
        return self.out_dir / f"{CHECKPOINT_PREFIX}{step:08d}.safetensors"

    def save_checkpoint(self) -> pathlib.Path:
        """Write everything needed to resume (``checkpoint.save_training_state``), then prune old checkpoints."""
        metadata = {
            "step": self.step,
            "wall_time": self.wall_time,
            "train_config": dataclasses.asdict(self.config),
            "model_config": _model_config(self.model),
            **fastpath.draws_record(self.config.draws, self.device),
            **self.extra_metadata,
            "hardware": self._machines(),
        }
        path = self.checkpoint_path(self.step)
        save_training_state(path, model=self.model, ema=self.ema, optimizer=self.optimizer,
                            generator=self.generator, history=self.history, metadata=metadata,
                            draws=None if self.draws is self.generator else self.draws)
        for old in list_checkpoints(self.out_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def resume(self, path: str | pathlib.Path | None = None) -> bool:
        """Load ``path`` (default: the newest checkpoint in ``out_dir``); False if there is none.

        Raises ValueError for a corrupt file or one written for a different model.
        """
        if path is None:
            found = list_checkpoints(self.out_dir)
            if not found:
                return False
            path = found[-1]
        state = TrainingState(path)
        stored = state.meta.get("model_config")
        if stored is None or _model_config(self.model, stored) != _model_config(self.model):
            raise ValueError(
                f"checkpoint {str(path)!r} was written for a different model config: "
                f"{state.meta.get('model_config')} vs {_model_config(self.model)}"
            )
        was, now = (_data_source(d) for d in (state.meta.get("data"), self.extra_metadata.get("data")))
        if was and now and was != now:
            raise ValueError(f"checkpoint {str(path)!r} was trained on {was}, this run trains on {now}: "
                             f"give the run the data it started with, or a new output folder")
        fastpath.check_resume(state.meta, self.config.draws, self.device, path)
        state.restore(model=self.model, ema=self.ema, optimizer=self.optimizer, generator=self.generator,
                      draws=None if self.draws is self.generator else self.draws)
        fastpath.match_layouts(self.optimizer)  # a checkpoint keeps NCHW order; channels-last moments need NHWC
        self.step = int(state.meta["step"])
        self.wall_time = float(state.meta.get("wall_time", 0.0))
        self.history = state.history
        self.hardware = list(state.meta.get("hardware") or [])
        return True


def _data_source(data: dict[str, Any] | None) -> str | None:
    """Which images a run's metadata says it trains on ("Shapes", "OpenMoji", or a folder), for resume checks."""
    if not data or "dataset" not in data:
        return None
    if "root" in data:
        return f"{data['dataset']} {data['root']!r}"
    if "openmoji" in data:
        return f"{data['dataset']} {data['openmoji']} named with Unicode {data['unicode']}"
    return str(data["dataset"])


def _model_config(model: torch.nn.Module, stored: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The model's config as it reads back from JSON (tuples become lists), for comparisons.

    With ``stored`` (a config read from a checkpoint), that config instead, with the fields it predates
    filled in with their defaults, so a checkpoint written before a field existed still compares equal.
    """
    config = getattr(model, "config", None)
    if not hasattr(config, "to_dict"):
        return None
    if stored is not None:
        try:
            config = type(config).from_dict(stored)
        except (TypeError, ValueError):
            return stored
    return json.loads(json.dumps(config.to_dict()))



# -- the demo run ---------------------------------------------------------------------------------------------
#
# `minimagen demo` (and the shipped uncond32 of lesson 02): a small unconditional U-Net on one plain object
# per 32 px image, the smallest run that draws recognisable shapes in a few CPU minutes.
DEMO_UNET = UNetConfig(
    image_size=32, channels=32, channel_mults=(1, 2, 2), blocks_per_level=(1, 1, 1),
    self_attention_levels=(False, False, True), cross_attention_levels=(False, False, False), text_dim=None,
    skip_scale=2**-0.5, efficient_updown=True,
)
DEMO_SCHEDULE = {"kind": "cosine", "T": 1000, "max_beta": 0.2}  # see `minimagen train --max-beta`


def demo_trainer(steps: int, seed: int, out_dir: str | pathlib.Path) -> Trainer:
    """The Trainer of the demo run (``DEMO_UNET`` on one-object plain Shapes at 32 px), ready to ``fit``."""
    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
        torch.manual_seed(seed)
        model = UNet(DEMO_UNET)
    data = Shapes(size=32, length=50_000, seed=seed, max_objects=1, textures=("plain",))
    config = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.995,
                         checkpoint_every=0, seed=seed)
    return Trainer(model, data, schedule_from_spec(DEMO_SCHEDULE), config, out_dir)


def save_demo(trainer: Trainer, path: str | pathlib.Path, command: str = "") -> None:
    """Ship the demo run's EMA weights (``minimagen demo --save``; lesson 02's uncond32) with its card."""
    card = run_card(
        "uncond32", trainer.model, schedule=DEMO_SCHEDULE,
        data={"dataset": "Shapes", "size": 32, "seed": trainer.config.seed, "max_objects": 1, "textures": ["plain"]},
        command=command, train_config=dataclasses.asdict(trainer.config), steps=trainer.step,
        wall_time=trainer.wall_time, history=trainer.history, hardware="; ".join(trainer._machines()),
    )
    save_weights(trainer.ema, path, trainer.model.config.to_dict(), card=card,
                 extra={"stage": "uncond32", "schedule": DEMO_SCHEDULE})
