"""Checkpoints that are safe to write and safe to read.

Two kinds of file, both safetensors (tensors + a string-to-string metadata header, never pickle):

- a *weights* file: one model's weights (fp16 for the shipped ones) with its config in the header, plus
  a JSON model card beside it (how it was trained, its metrics);
- a *training* checkpoint: weights, EMA weights, optimizer state, RNG states and the loss history, so a
  run resumes exactly where it stopped.

Every file is written to a temporary name in the same folder, flushed to disk and then renamed over the
destination: a run killed mid-write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import signal
import tempfile
import threading
import time
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

from minimagen.unet import UNet, UNetConfig

FORMAT_KEY = "minimagen_format"
FILE_MODE = 0o644  # mkstemp creates files readable by their owner only; checkpoints are meant to be shared


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """A safetensors file written through ``atomic_write_bytes``: a crash never leaves a truncated ``path``."""
    # safetensors refuses tensors that share memory or are not contiguous: copy them out.
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=metadata))


def read_safetensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and the JSON-decoded header of a minimagen file, or raise a ValueError that says why.

    ``kind`` is the expected value of the header's format key ("weights" or "training").
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file: {err}") from err
    if raw.get(FORMAT_KEY) != kind:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a minimagen {kind} file "
            f"(header {FORMAT_KEY}={raw.get(FORMAT_KEY)!r}, expected {kind!r})"
        )
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != FORMAT_KEY}
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {str(path)!r} has a corrupt metadata header: {err}") from err
    return tensors, meta


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict`` with an error that names the file and the mismatching keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors ({head(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({head(unexpected)})")
        if wrong_shape:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong_shape]
            problems.append(f"{len(wrong_shape)} tensors of the wrong shape ({head(shapes)})")
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float16,
    card: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save a model's weights (cast to ``dtype``) with its config; write ``card`` as JSON beside it.

    The card (training command, seed, steps, wall time, metrics) goes to ``path`` with ``.json`` suffix;
    ``extra`` entries (what a loader needs besides the config, e.g. the noise schedule) go in the header.
    """
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    header = {k: json.dumps(v) for k, v in (extra or {}).items()}
    header.update({FORMAT_KEY: "weights", "config": json.dumps(config)})
    atomic_save_safetensors(tensors, path, header)
    if card is not None:
        text = json.dumps(card, indent=2, sort_keys=False) + "\n"
        atomic_write_bytes(pathlib.Path(path).with_suffix(".json"), text.encode())


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file: ``(state_dict in float32, header)``; ``header["config"]`` is the model config."""
    tensors, meta = read_safetensors(path, "weights")
    if "config" not in meta:
        raise ValueError(f"checkpoint {str(path)!r} has no model config in its header")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, meta


def load_reader(path: str | os.PathLike, kind: str, build) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A small network written with ``save_weights`` whose config names its ``kind`` (a probe, a classifier, a
    drawing encoder): ``build(config)`` makes it, the weights (fp16 on disk) load in float32; returns it in eval
    mode with the file's header. ValueError if the file holds another kind."""
    state, header = read_weights(path)
    config = header.get("config", {})
    if config.get("kind") != kind:
        article = "an" if kind[0] in "AEIOU" else "a"
        raise ValueError(f"checkpoint {str(path)!r} holds a {config.get('kind')!r}, not {article} {kind}")
    module = build(config)
    load_state_strict(module, state, path)
    return module.eval(), header


# -- model cards ----------------------------------------------------------------------------------------------

FINAL_LOSS_WINDOW = 10  # a card's "final_loss" is the mean of the last this-many logged losses


def model_card(stage: str, config: dict[str, Any], parameters: int, *, training: dict[str, Any],
               losses: list[float], weights: str = "fp16", **sections: Any) -> dict[str, Any]:
    """The JSON card that goes beside a shipped weights file (``save_weights(card=...)``): what the model is
    (``stage``, ``config``, ``parameters`` and any other ``sections``: schedule, data, text, measurements),
    how it was trained (``training``: command, seed, steps, wall time, ...; the final loss is added here,
    one way for every card) and what the weights file holds."""
    tail = list(losses)[-FINAL_LOSS_WINDOW:]
    card = {"stage": stage, "config": config, "parameters": parameters, **sections}
    card["training"] = {**training, "final_loss": round(sum(tail) / max(1, len(tail)), 5)}
    card["weights"] = weights
    return card


class StopWatch:
    """Running time for a model card: seconds since the watch started, less the time the process spent stopped
    by SIGTSTP (Ctrl-Z in a terminal, or ``kill -TSTP PID`` to pause a background run while something else
    needs the cores; ``kill -CONT PID`` or ``fg`` resumes it). Used as ``with StopWatch() as watch:``; inside,
    SIGTSTP stops the process as it always does and the watch notes for how long. Outside the main thread, or
    where there is no SIGTSTP, it measures plain wall time. SIGSTOP cannot be noticed: its pause counts. Python
    runs the handler between bytecodes, so a pause asked for during one long C call (a big convolution) begins
    when that call returns. One watch at a time: a watch entered inside another takes the signal over until it
    exits, and only the inner one counts that pause. Under ``torchrun`` pause every process of the run at once
    (``kill -TSTP -- -PGID``, the process group): a rank left running waits for the stopped ones and counts it.
    """

    def __init__(self) -> None:
        self.paused = 0.0  # seconds spent stopped so far
        self._start = time.perf_counter()
        self._installed, self._previous = False, None

    def elapsed(self) -> float:
        """Seconds since the watch started, without the pauses."""
        return time.perf_counter() - self._start - self.paused

    def __enter__(self) -> "StopWatch":
        if hasattr(signal, "SIGTSTP") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTSTP, self._stop)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:  # the previous handler may be None (set outside Python): restore SIG_DFL then
            signal.signal(signal.SIGTSTP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed, self._previous = False, None

    def _stop(self, signum, frame) -> None:
        stopped = time.perf_counter()
        os.kill(os.getpid(), signal.SIGSTOP)  # the process waits here for SIGCONT
        self.paused += time.perf_counter() - stopped


def hardware_description(device: str | torch.device = "cpu") -> str:
    """What this process computes on, for model cards: the GPU's name, or the CPU's model and torch's threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:  # not Linux
        pass
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use, not the host's
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    threads = torch.get_num_threads()
    return f"{model} ({cpus} CPUs), {threads} torch thread{'s' if threads != 1 else ''}"


def run_card(stage, model, *, schedule, data, command, train_config, steps, wall_time, history,
             text=None, hardware=None) -> dict:
    """The model card of a U-Net trained by the Trainer (``demo``, ``export``)."""
    sections = {"schedule": schedule, "data": data, **({"text": text} if text is not None else {})}
    training = {
        "command": command,
        "train_config": train_config,
        "seed": train_config["seed"],
        "steps": steps,
        "wall_time_s": round(wall_time, 1),
        "hardware": hardware or f"{hardware_description()} (where it was exported: the run did not record its own)",
        "loss_history": [[int(step), round(loss, 5)] for step, loss in history],
    }
    return model_card(stage, model.config.to_dict(), model.num_parameters(), training=training,
                      losses=[loss for _, loss in history], weights="EMA weights, fp16", **sections)


# -- training checkpoints ------------------------------------------------------------------------------------
#
# Layout of a "training" file: model/<key> and ema/<key> (the two state dicts), optim/<param index>/<name>
# (AdamW's per-parameter state), rng/generator (the run's generator) and rng/torch (the global RNG),
# history/step and history/loss (the logged losses); the header holds "step", "wall_time",
# "optimizer_param_groups" and whatever else the trainer records (configs, the command, the data).


def save_training_state(path: str | os.PathLike, *, model: torch.nn.Module, ema: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        history: list[tuple[int, float]], metadata: dict[str, Any],
                        draws: torch.Generator | None = None) -> None:
    """Write everything a run needs to resume exactly, atomically (the layout above). ``draws`` is the
    generator of a run that draws on its device (``TrainConfig.draws``), saved as rng/draws."""
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model/{k}": v for k, v in model.state_dict().items()})
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for name, value in state.items():
            tensors[f"optim/{index}/{name}"] = torch.as_tensor(value)
    tensors["rng/generator"] = generator.get_state()
    if draws is not None:
        tensors["rng/draws"] = draws.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    steps, losses = zip(*history) if history else ((), ())
    tensors["history/step"] = torch.tensor(steps, dtype=torch.int64)
    tensors["history/loss"] = torch.tensor(losses, dtype=torch.float64)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optim["param_groups"]]
    header = {k: json.dumps(v) for k, v in {**metadata, "optimizer_param_groups": groups}.items()}
    header[FORMAT_KEY] = "training"
    atomic_save_safetensors(tensors, path, header)


CHECKPOINT_PREFIX = "step_"  # a run folder's checkpoints are step_<8 digits>.safetensors


def list_checkpoints(out_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Complete training checkpoints in ``out_dir``, oldest first (temp files of a killed write are skipped)."""
    out_dir = pathlib.Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(out_dir.glob(f"{CHECKPOINT_PREFIX}*.safetensors"))


class TrainingState:
    """A training checkpoint read back: its header (``meta``), the two state dicts and the loss history."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = pathlib.Path(path)
        self.tensors, self.meta = read_safetensors(path, "training")

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def ema(self) -> dict[str, torch.Tensor]:
        return self.section("ema/")

    @property
    def history(self) -> list[tuple[int, float]]:
        return list(zip(self.tensors["history/step"].tolist(), self.tensors["history/loss"].tolist()))

    def restore(self, *, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, draws: torch.Generator | None = None) -> None:
        """Load the weights, the optimizer's state and the RNG states into a run built for this model.

        ``draws``, a run's device generator, continues from the saved one (the trainer first checks, with
        ``fastpath.check_resume``, that the checkpoint drew on the same kind of device)."""
        load_state_strict(model, self.section("model/"), self.path)
        load_state_strict(ema, self.ema, self.path)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.section("optim/").items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value  # load_state_dict moves them
        groups = self.meta["optimizer_param_groups"]
        if len(groups) != 1:
            raise ValueError(f"checkpoint {str(self.path)!r} has {len(groups)} optimizer groups, expected 1")
        groups[0]["params"] = list(range(len(list(model.parameters()))))
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        generator.set_state(self.tensors["rng/generator"])
        if draws is not None:
            draws.set_state(self.tensors["rng/draws"])
        torch.set_rng_state(self.tensors["rng/torch"])


def export_run(run: str | os.PathLike, dest: str | os.PathLike, *, hardware: str | None = None,
               evaluation: list[dict] = ()) -> tuple[UNet, int]:
    """Ship a run: the EMA weights of its newest checkpoint as fp16 ``dest`` with its model card (and any
    ``evaluation`` records of it); returns the model and the step it was taken at."""
    found = list_checkpoints(run)
    if not found:
        raise ValueError(f"no checkpoint in {str(run)!r} (expected a run folder written by `minimagen train`)")
    state = TrainingState(found[-1])
    meta = state.meta
    model = UNet(UNetConfig.from_dict(meta["model_config"]))
    load_state_strict(model, state.ema, found[-1])
    card = run_card(
        meta.get("stage"), model, schedule=meta.get("schedule"), data=meta.get("data"), text=meta.get("text"),
        command=meta.get("command"), train_config=meta["train_config"], steps=meta["step"],
        wall_time=meta.get("wall_time", 0.0), history=state.history,
        hardware=hardware or "; ".join(meta.get("hardware") or []) or None,
    )
    if evaluation:
        card["evaluation"] = list(evaluation)
    header = {k: meta.get(k) for k in ("stage", "schedule", "text", "size")}
    save_weights(model, dest, meta["model_config"], card=card, extra=header)
    return model, int(meta["step"])


# The checkpoints this repository ships (trained by its own commands; each has a JSON model card).
SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def shipped_checkpoint(name: str) -> pathlib.Path:
    """Path of a shipped weights file, e.g. ``shipped_checkpoint("base64")``; ValueError if it is absent."""
    path = SHIPPED_DIR / f"{name}.safetensors"
    if not path.is_file():
        available = sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors")) if SHIPPED_DIR.is_dir() else []
        raise ValueError(f"no shipped checkpoint named {name!r} in {SHIPPED_DIR}; available: {available}")
    return path


def load_unet(path: str | os.PathLike):
    """Build the U-Net a weights file describes and load its weights: returns ``(unet in eval mode, header)``.

    ``header`` holds what else the file records (e.g. ``header["schedule"]``, the noise schedule it was
    trained with).
    """
    state, header = read_weights(path)
    try:
        config = UNetConfig.from_dict(header["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid U-Net config: {err}") from err
    unet = UNet(config)
    load_state_strict(unet, state, path)
    return unet.eval(), header
