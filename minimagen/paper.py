"""What the Imagen paper reports about its own cascade, set beside a minimagen cascade (lesson 11).

The figures are the paper's (Saharia et al. 2022, arXiv:2205.11487): §4.1 for the stage sizes, the batch,
the training steps, the chips and the data; §4.4 for T5-XXL's 4.6 B parameters; appendix F for the
layouts. The width of T5-XXL's token embeddings (4096) is T5 v1.1 XXL's d_model, which the paper does
not print. `compare_with_imagen` reads the other column from a cascade and its model cards, so the table
is always the shipped models'.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

# Per stage: output side, parameters, batch, training steps, hardware (Imagen §4.1).
IMAGEN_STAGES: dict[str, dict[str, Any]] = {
    "base64": {"size": 64, "parameters": 2.0e9, "batch_size": 2048, "steps": 2_500_000,
               "hardware": "256 TPU-v4 chips"},
    "sr256": {"size": 256, "parameters": 600e6, "batch_size": 2048, "steps": 2_500_000,
              "hardware": "128 TPU-v4 chips"},
    "sr1024": {"size": 1024, "parameters": 400e6, "batch_size": 2048, "steps": 2_500_000,
               "hardware": "128 TPU-v4 chips"},
}
IMAGEN_ENCODER = {"name": "T5-XXL (frozen)", "parameters": 4.6e9, "width": 4096}
IMAGEN_DATA = "~460 M internal + ~400 M LAION image-text pairs"


def _count(n: float) -> str:
    """4.6e9 -> '4.6 B', 2.32e6 -> '2.32 M', 5.12e9 -> '5.12 B'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def compare_with_imagen(imagen, folder: str | pathlib.Path) -> list[tuple[str, str, str, str]]:
    """Rows ``(quantity, this cascade, Imagen, Imagen / this)`` for a cascade and the folder of its cards.

    ``imagen`` is a loaded `minimagen.cascade.Imagen` (its stages and text encoder are counted);
    ``folder`` holds ``<stage>.json`` for each stage, as `Imagen.save_pretrained` writes them (the
    training steps, batch, hardware and wall time come from there).
    """
    folder = pathlib.Path(folder)
    encoder = imagen.text_encoder
    encoder_params = sum(p.numel() for p in encoder.model.parameters())
    rows = [
        ("text encoder", f"{encoder.name} (frozen)", IMAGEN_ENCODER["name"], ""),
        ("encoder parameters", _count(encoder_params), _count(IMAGEN_ENCODER["parameters"]),
         _ratio(IMAGEN_ENCODER["parameters"], encoder_params)),
        ("token width", str(encoder.dim), str(IMAGEN_ENCODER["width"]), _ratio(IMAGEN_ENCODER["width"], encoder.dim)),
    ]
    datasets = set()
    for stage in imagen.stages:
        card_path = folder / f"{stage.name}.json"
        if not card_path.is_file():
            raise ValueError(f"folder {str(folder)!r} has no model card {card_path.name} for stage {stage.name!r}")
        card = json.loads(card_path.read_text())
        training = card["training"]
        batch, steps = training["train_config"]["batch_size"], training["steps"]
        datasets.add(card["data"]["dataset"])
        theirs = IMAGEN_STAGES.get(stage.name, {})
        params = sum(p.numel() for p in stage.unet.parameters())
        crop = card["data"].get("crop")
        seen = _count(steps * batch) + (f" ({crop} px crops)" if crop and crop < stage.size else "")
        numbers = [  # (quantity, ours as text, ours, Imagen's, Imagen's as text)
            ("U-Net parameters", _count(params), params, theirs.get("parameters"), _count),
            ("batch", str(batch), batch, theirs.get("batch_size"), str),
            ("training steps", f"{steps:,}", steps, theirs.get("steps"), lambda n: f"{n:,}"),
            ("images seen", seen, steps * batch, theirs and theirs["steps"] * theirs["batch_size"], _count),
        ]
        rows += [(f"{stage.name}: {name}", text, show(them) if them else "-", _ratio(them, ours) if them else "")
                 for name, text, ours, them, show in numbers]
        rows.append((f"{stage.name}: trained on",
                     f"{training['hardware'].split(':')[0]}, {training['wall_time_s'] / 3600:.2g} h",
                     theirs.get("hardware", "-"), ""))
    rows.append(("data", ", ".join(sorted(datasets)) + " (rendered on the fly, unlimited)", IMAGEN_DATA, ""))
    return rows


def _ratio(theirs: float, ours: float) -> str:
    return f"{theirs / ours:,.0f}x" if theirs / ours >= 10 else f"{theirs / ours:.2g}x"


def format_table(rows: list[tuple[str, ...]], headers=("", "this cascade", "Imagen", "Imagen / this")) -> str:
    """The rows as aligned text columns."""
    table = [tuple(headers)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)
