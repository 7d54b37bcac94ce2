"""Builds lessons/12_text_encoders.ipynb (cells only; run nbconvert --execute afterwards)."""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s, **meta: cells.append(new_code_cell(s.strip("\n"), metadata=meta))

md(r"""
# 12 · Why a pretrained language model: the text encoder, tested

Imagen's first design decision is its text encoder: a large language model, **pretrained on text alone and
frozen** (T5-XXL, 4.6 B parameters), where GLIDE trains a text Transformer of its own from scratch, jointly
with the diffusion model, on image-caption pairs. The paper gives two reasons to prefer the frozen one:
an encoder that already understands language lets the diffusion model learn only the image side, and a
text-only corpus is far larger than any set of captioned images. Its analysis (§4.4, Fig. 4a) adds that
making the *encoder* larger helps more than making the *U-Net* larger (Fig. 4b).

Every earlier lesson used a frozen pretrained encoder (MiniLM, lesson 04) without asking whether it
mattered. This lesson asks. Four base models, identical except for the text encoder, each trained with
three seeds, are tested on prompts that ask different things of the encoder, and scored by the attribute
probe against what each prompt *means*.

**Paper map.**
- [Imagen](https://arxiv.org/abs/2205.11487) §2.1 (pretrained text encoders; T5-XXL frozen), §4.4 and
  Fig. 4a/4b (encoder size against U-Net size), Fig. A.5 (T5-XXL against CLIP).
- [GLIDE](https://arxiv.org/abs/2112.10741) §2.3 and §4: a text Transformer trained with the diffusion model.
- [MiniLM](https://arxiv.org/abs/2002.10957) and the sentence-embedding model minimagen ships (lesson 04).
""")

code(r"""
DEVICE = "cpu"  # "cuda" on a GPU
SCALE = 1  # 1 = the stored CPU run
N_LIVE = 16 * SCALE  # prompts per set in the live re-measurement (the recorded table has 64)
PRECISION = "auto"  # bf16 autocast where the CPU/GPU has bfloat16 in hardware, else fp32
""", tags=["parameters"])

code(r"""
import json
import pathlib

import matplotlib.pyplot as plt
import torch

from minimagen.checkpoint import SHIPPED_DIR, load_unet, shipped_checkpoint
from minimagen.data import HELD_OUT_COLOUR_SHAPES, Shapes, caption, paraphrase_words
from minimagen.encoders import measure_model, plot_encoders, prompt_set, read_rows, summarize
from minimagen.evaluate import base_imagen, sample_in_batches
from minimagen.metrics import alignment, load_probe
from minimagen.paper import IMAGEN_ENCODER
from minimagen.plot import show_images
from minimagen.text import TextEncoder

torch.manual_seed(0)
ENCODERS = ("minilm", "minilm-random", "transformer", "bow")
MODELS = {name: SHIPPED_DIR / "encoders" / f"{name}.safetensors" for name in ENCODERS}
RESULTS = pathlib.Path("../data/results/encoders.csv")
probe = load_probe(shipped_checkpoint("probe"))
""")

md(r"""
## Four ways to read a caption

All four models use the same tokenizer (MiniLM's WordPiece ids) and the same U-Net (`base-s`, 32 px,
predicting $v$); only what turns the ids into the tokens the U-Net attends to differs
(`minimagen train --encoder ...`, `minimagen.text`):

| `--encoder` | what it is | trained? |
|---|---|---|
| `minilm` | MiniLM, pretrained on sentence pairs: Imagen's way, at small scale | frozen |
| `minilm-random` | MiniLM's architecture with random weights: is it the *pretraining* or the architecture? | frozen |
| `transformer` | a small Transformer over the token ids (`TokenTransformer`): GLIDE's way | with the U-Net |
| `bow` | a learned vector per token, no context (`BagOfWords`): the weakest reader | with the U-Net |

The shipped checkpoints (one per encoder, seed 0) say what they are on their cards:
""")

code(r"""
for name, path in MODELS.items():
    unet, header = load_unet(path)
    card = json.loads(path.with_suffix(".json").read_text())
    text_model = unet.text_model
    own = sum(p.numel() for p in text_model.parameters()) if text_model is not None else 0
    print(f"{name:14s} encoder {header['text']['encoder']:13s} U-Net {unet.config.image_size} px, "
          f"{unet.num_parameters() / 1e6:.2f} M parameters (of which {own / 1e6:.2f} M text model), "
          f"{card['training']['steps']} steps x {card['training']['train_config']['batch_size']}, "
          f"{card['training']['wall_time_s'] / 60:.0f} min")
print(json.loads(MODELS["minilm"].with_suffix(".json").read_text())["training"]["command"])
""")

md(r"""
The frozen MiniLM adds 22.7 M parameters that are never trained; the jointly trained text models are a
few hundred thousand parameters inside the U-Net's checkpoint. Why 32 px and 4,000 steps: every attribute
the probe reads (colour, shape, size, position) is visible at 32 px (the probe reads the samples upsampled
to 64), and a run takes about 20 minutes on one CPU core, so twelve runs fit a working session.

## What the prompts ask

Four prompt sets of 64 held-out scenes (`minimagen.encoders.prompt_set`), scored against the scene each
prompt describes:
""")

code(r"""
sets = {name: prompt_set(name, 64) for name in ("held-out", "compositions", "synonyms", "reordered")}
for name, ps in sets.items():
    print(f"{name:13s} {ps.prompts[1]!r}")
    if ps.prompts[1] != ps.captions[1]:
        print(f"{'':13s} means {ps.captions[1]!r}")
print("colour-shape pairs never drawn in training:", sorted(HELD_OUT_COLOUR_SHAPES))
words = paraphrase_words()
print("synonyms of the colours:", {k: v for k, v in words["colour"].items()})
""")

md(r"""
- **held-out**: new scenes in the training grammar: every model has seen the like of these.
- **compositions**: every object is a colour-shape pair no training caption contained (the models were
  trained with `--hold-out-colour-shapes`; `tests/test_cascade.py` checks the pairs never occur). Each word
  was seen, never these two together.
- **synonyms**: the same scenes as held-out in words the captions never use (`data/paraphrases.json`).
  Only an encoder that knows "crimson" is a kind of red can help here.
- **reordered**: the caption's own words, phrases moved ("at the top, a large blue dotted triangle").

The score is the probe's **alignment** (lesson 05): per image, the fraction of the caption's checks
(something at each object's position, of its colour, shape and size) the probe reads back. To know what a
low score means, score the real renders of these scenes against *another* scene's caption: that is what
an image that ignores its prompt gets.
""")

code(r"""
ps = sets["held-out"]
shuffled = [ps.captions[(i + 1) % len(ps.captions)] for i in range(len(ps.captions))]
floor = alignment(probe, ps.real, shuffled).mean().item()
ceiling = alignment(probe, ps.real, ps.captions).mean().item()
print(f"real renders scored against their own captions: {ceiling:.3f}; against another scene's caption: {floor:.3f}")
""")

md(r"""
## The experiment

`scripts/train_encoders.sh` trains the twelve models (four encoders × seeds 0, 1, 2; the same command,
only `--encoder` and `--seed` change), and one command measures them all on the four sets, sampling every
model from the same noise (64 prompts per set, $w = 3$, 25 ancestral steps, static thresholding), and
writes the table and the figure below:
""")

code(r"""
rows = read_rows(RESULTS)
print(RESULTS.read_text().splitlines()[0].lstrip("# "))
table = summarize(rows)
print(f"\n{'':14s}" + "".join(f"{s:>22s}" for s in sets))
for encoder in ENCODERS:
    mine = {r["prompt_set"]: r for r in table if r["encoder"] == encoder}
    print(f"{encoder:14s}" + "".join(f"{mine[s]['alignment']:>13.3f} ± {mine[s]['ci95']:.3f}" for s in sets)
          + f"   ({mine['held-out']['seeds']} seeds)")
fig = plot_encoders(rows, title="alignment by encoder and prompt set (64 prompts, w = 3)")
plt.show()
""")

md(r"""
Each bar is the mean over three training seeds, with a 95% confidence interval over the seeds (Student's
t with 2 degrees of freedom: wide, because three seeds is few). The colour-and-shape rate (both right on
an object) tells the same story with less of the position and size checks that every model gets right:
""")

code(r"""
cs = summarize(rows, "colour_and_shape")
print(f"{'colour & shape':14s}" + "".join(f"{s:>22s}" for s in sets))
for encoder in ENCODERS:
    mine = {r["prompt_set"]: r for r in cs if r["encoder"] == encoder}
    print(f"{encoder:14s}" + "".join(f"{mine[s]['colour_and_shape']:>13.3f} ± {mine[s]['ci95']:.3f}" for s in sets))
print(f"chance for colour & shape together: 1/6 x 1/5 = {1 / 30:.3f}")
""")

md(r"""
READING-PLACEHOLDER
""")

md(r"""
## Checking the recorded table live

The shipped seed-0 models, re-measured here on the first `N_LIVE` prompts of two sets, starting from the
same noise as the recorded run. With fewer prompts the numbers move within their standard errors:
""")

code(r"""
live_sets = [prompt_set(name, N_LIVE) for name in ("held-out", "synonyms")]
recorded = {(r.encoder, r.prompt_set): r for r in rows if r.model.endswith("-s0.safetensors")}
live = {}
for encoder in ("minilm", "bow"):
    for r in measure_model(MODELS[encoder], encoder, probe, live_sets, precision=PRECISION, device=DEVICE,
                           batch_size=N_LIVE):
        live[encoder, r.prompt_set] = r
        rec = recorded[encoder, r.prompt_set]
        print(f"{encoder:8s} {r.prompt_set:9s} live ({r.n} prompts) {r.alignment:.3f} ± {r.alignment_se:.3f}   "
              f"recorded (seed 0, {rec.n}) {rec.alignment:.3f} ± {rec.alignment_se:.3f}")
        assert abs(r.alignment - rec.alignment) < 3 * (r.alignment_se ** 2 + rec.alignment_se ** 2) ** 0.5 + 0.02
""")

md(r"""
## The same prompts, four encoders

One prompt from each set, drawn by each model from the same noise (rows: encoders; columns: prompt sets).
""")

code(r"""
picks = [(name, sets[name].prompts[i]) for name, i in (("held-out", 1), ("compositions", 1), ("synonyms", 1),
                                                          ("reordered", 1))]
images, titles = [], []
for encoder in ENCODERS:
    imagen = base_imagen(MODELS[encoder], device=DEVICE)
    x = sample_in_batches(imagen, [p for _, p in picks], guidance=3.0, threshold="static", steps=25, seed=0,
                          eta=1.0, precision=PRECISION, device=DEVICE)
    images.append(x.cpu())
    titles += [f"{encoder}: {name}" for name, _ in picks]
show_images(torch.cat(images), titles, nrow=len(picks), size=2.2,
            suptitle="rows: minilm, minilm-random, transformer, bow; the prompts are printed below")
plt.show()
for name, prompt in picks:
    print(f"{name:13s} {prompt}")
""")

md(r"""
## Why synonyms fail: what the frozen encoder makes of "crimson"

A frozen encoder can carry a synonym only if it places "crimson" near "red". Ask MiniLM directly: encode
"a crimson circle" and "a red circle", "a blue circle", ... and see whether the nearest of the six training
colours is the one the synonym means (the mean of the phrase's token vectors, the same tokens the U-Net
attends to). The same with random weights says what the architecture alone gives.
""")

code(r"""
def phrase(encoder, word):
    tokens, mask = encoder.encode([f"a {word} circle"])
    return tokens[0][mask[0]].mean(0)


for name, encoder in (("minilm", TextEncoder("minilm")), ("minilm-random", TextEncoder("minilm", pretrained=False))):
    originals = {c: phrase(encoder, c) for c in words["colour"]}
    right, pairs = 0, 0
    for colour, synonyms in words["colour"].items():
        for s in synonyms:
            e = phrase(encoder, s)
            nearest = max(originals, key=lambda c: torch.cosine_similarity(e, originals[c], 0).item())
            right += nearest == colour
            pairs += 1
    print(f"{name:14s}: the nearest training colour is the synonym's own for {right} of {pairs} "
          f"(chance: {pairs / 6:.0f})")
""")

md(r"""
SYNONYM-PLACEHOLDER

## How this scale differs from Imagen's

Imagen's claim is about a particular scale, and the experiment above is at another:
""")

code(r"""
minilm = TextEncoder("minilm")
n_minilm = sum(p.numel() for p in minilm.model.parameters())
print(f"MiniLM:  {n_minilm / 1e6:.1f} M parameters, tokens {minilm.dim} wide")
print(f"T5-XXL:  {IMAGEN_ENCODER['parameters'] / 1e9:.1f} B parameters, tokens {IMAGEN_ENCODER['width']} wide "
      f"({IMAGEN_ENCODER['parameters'] / n_minilm:.0f}x MiniLM)")
training = Shapes(8, length=2000, seed=0)
vocabulary = sorted({w for i in range(2000) for w in caption(training.scene(i)).split()})
print(f"Shapes' captions use {len(vocabulary)} distinct words:", " ".join(vocabulary))
""")

md(r"""
SCALE-PLACEHOLDER

## Summary

SUMMARY-PLACEHOLDER

## Exercises

1. The synonym test above asks about colours. Run it for the shapes and textures (`words["shape"]`,
   `words["texture"]`, in the same phrase "a ... circle" or a phrase of your own). Which attribute's synonyms
   does the pretrained MiniLM place nearest their originals, and does the `synonyms` set's colour-and-shape
   rate agree?
2. One word at a time: build a `PromptSet` (`minimagen.encoders.PromptSet`) whose prompts change only the
   colour word of each held-out caption to a synonym, measure the `minilm` and `bow` models on it with
   `measure_model`, and compare with the all-synonyms set. Is one unknown word enough to break the prompt?
3. The bag of words has no order and no context: "a red circle on the left and a blue square on the right"
   and "a blue circle on the left and a red square on the right" give it the same set of token vectors.
   Find, in the held-out set, prompts with two objects of different colours, and count how often each model
   paints each object the other's colour (`minimagen.metrics` reads colour per position).
4. Imagen's Fig. 4a/4b compare encoder sizes and U-Net sizes at a fixed budget. Without a larger pretrained
   encoder offline, train the `minilm` recipe with `--unet base-m` (3 seeds, `scripts/train_encoders.sh` as
   a template) and add it to the table: does a larger U-Net move the synonyms row at all?
""")

nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}})
nbformat.write(nb, "lessons/12_text_encoders.ipynb")
print(len(cells), "cells")
