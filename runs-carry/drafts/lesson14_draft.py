"""Draft of lesson 14 (issue 17): writes lessons/14_real_drawings.ipynb once data/checkpoints/openmoji/ holds the
OpenMoji cascade (base64, sr256, sr1024 + imagen.json) and data/results/openmoji_*.csv exist. The markdown
cells marked TODO need the numbers the executed cells print; every number in prose must be printed above it.

    .venv/bin/python runs-carry/drafts/lesson14_draft.py && cd lessons && env -u MPLBACKEND ../.venv/bin/jupyter \
        nbconvert --to notebook --execute --inplace 14_real_drawings.ipynb
"""
import nbformat

cells = []
md = lambda s: cells.append(nbformat.v4.new_markdown_cell(s.strip("\n")))
code = lambda s, tags=None: cells.append(nbformat.v4.new_code_cell(s.strip("\n"), metadata={"tags": tags} if tags else {}))

md('''
# 14 · Real drawings: the same cascade on OpenMoji

Every lesson so far drew Shapes: scenes whose captions say exactly what is in them, so a probe can check a
sample. This lesson trains nothing new in the library: it runs the same commands on 3,660 real drawings,
the OpenMoji emoji set, named by their Unicode names ("soft ice cream", "face with tears of joy"), and asks
the questions of lessons 07, 10, 11 and 12 again where the colours, the shapes and the words are real.

TODO: what it shows (retrieval numbers, the thresholding verdict, the encoder on paraphrases, 1024 px).

**Paper map.**
- [Imagen](https://arxiv.org/abs/2205.11487) §2.3 (dynamic thresholding: "significantly better photorealism
  as well as better image-text alignment, especially when using very large guidance weights"), §2.1 and
  §4.4 (the frozen encoder), §2.4–2.5 (the cascade).
- [OpenMoji](https://openmoji.org): all emojis designed by OpenMoji, the open-source emoji and icon
  project, licensed under CC BY-SA 4.0; the models trained on them carry the same licence in their cards.
''')
code('''
DEVICE = "cpu"  # "cuda" on a GPU
SCALE = 1  # 1 = the stored CPU run
N_LIVE = 32 * SCALE  # held-out names sampled live (the recorded sweep has all 209)
PRECISION = "auto"  # bf16 autocast where the CPU/GPU has bfloat16 in hardware, else fp32
''', ["parameters"])
code('''
import json
import pathlib
import time

import matplotlib.pyplot as plt
import torch

from minimagen.cascade import Imagen
from minimagen.checkpoint import SHIPPED_DIR
from minimagen.data import OPENMOJI_ATTRIBUTION, OpenMoji, openmoji_source
from minimagen.drawings import (frechet_reference, held_out_names, held_out_retrieval, load_drawing_encoder,
                                measure_prompts, paraphrased_names, plot_sweep, ranks, read_sweep)
from minimagen.evaluate import read_csv as read_shapes_sweep
from minimagen.plot import show_images

torch.manual_seed(0)
OPENMOJI = SHIPPED_DIR / "openmoji"
SWEEP = pathlib.Path("../data/results/openmoji_thresholding.csv")
imagen = Imagen.from_pretrained(OPENMOJI, device=DEVICE)
encoder = load_drawing_encoder(SHIPPED_DIR / "drawing_encoder.safetensors")
print(OPENMOJI_ATTRIBUTION)
print(openmoji_source())
''')
md('''
## The drawings and their names

TODO: how captions are made (Unicode names, lower case; sequences joined by ", "; skin tones; flags);
why some are left out; the held-out split by a hash, skin-tone variants on one side.
''')
code('''
train, held = OpenMoji(64, split="train"), OpenMoji(64, split="held_out")
one_each = OpenMoji(64, split="held_out", skin_tones=False)
print(f"{len(train)} training drawings, {len(held)} held out ({len(one_each)} emojis without their skin-tone variants)")
kinds = {"a single code point": lambda c: ", " not in c and "flag" not in c,
         "a sequence (joined names)": lambda c: ", " in c and "skin tone" not in c,
         "with a skin tone": lambda c: "skin tone" in c, "a flag": lambda c: c.startswith("flag")}
for kind, test in kinds.items():
    found = [c for c in train.captions if test(c)]
    print(f"{kind:28s} {len(found):5d}  e.g. {found[len(found) // 2]!r}")
pick = list(range(0, len(train), len(train) // 16))[:16]
show_images(torch.stack([train[i][0] for i in pick]), titles=[train[i][1] for i in pick], nrow=8, size=1.7,
            suptitle="training drawings and their captions (64 px)")
plt.show()
''')
md('''
Vector drawings render sharp at any size, so each stage of the cascade has a real target: the 64 px drawing
for the base model, 256 px and 1024 px for the SR stages.
''')
code('''
k = 5
sizes = {s: OpenMoji(s, split="held_out", skin_tones=False)[k][0] for s in (64, 256, 1024)}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, (s, image) in zip(axes, sizes.items()):
    ax.imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1))
    ax.set_title(f"{s} px", fontsize=9)
    ax.set_xlabel("x (pixels)"); ax.set_ylabel("y (pixels)")
window = sizes[1024][:, 384:640, 384:640]
axes[3].imshow(((window.permute(1, 2, 0) + 1) / 2).clamp(0, 1))
axes[3].set_title("1024 px, the central 256 px window", fontsize=9)
fig.suptitle(one_each.captions[k]); plt.tight_layout(); plt.show()
''')
md('''
## Measuring a model of drawings

TODO: why no probe (names, not attributes); retrieval: a sample of held-out name k is a hit when drawing k is
its nearest among all 209 held-out drawings; chance 1/209; the DrawingEncoder (SimCLR on the training split,
lesson-free: `minimagen drawing-encoder`); check it: spoiled held-out views found among clean drawings.
''')
code('''
card = json.loads((SHIPPED_DIR / "drawing_encoder.json").read_text())
print(f"drawing encoder: {card['parameters'] / 1e6:.2f} M parameters, {card['training']['steps']} steps x "
      f"{card['training']['batch_size']}, {card['training']['wall_time_s'] / 60:.0f} min; {card['training']['hardware']}")
found = held_out_retrieval(encoder, n=64)
print(f"64 spoiled held-out drawings among their clean ones: top-1 {found['top1']:.3f} (chance {found['chance_top1']:.3f})")
reference = frechet_reference(encoder)
print(f"Fréchet reference: {len(one_each)} real drawings of other emojis against the held-out ones: {reference:.3f}")
''')
md('''
## The cascade trained on OpenMoji

TODO: the same commands as README's own-data recipe with --data openmoji; read the cards.
''')
code('''
for stage in imagen.stages:
    c = json.loads((OPENMOJI / f"{stage.name}.json").read_text())
    t = c["training"]
    print(f"{stage.name:7s} {c['parameters'] / 1e6:5.2f} M parameters, {t['steps']} steps x "
          f"{t['train_config']['batch_size']}, {t['wall_time_s'] / 3600:.1f} h on {t['hardware']}")
    print(f"        {t['command']}")
''')
md('''
## Held-out names

TODO: the base model draws names it never trained on; retrieval live on the first N_LIVE and recorded on all.
''')
code('''
captions, real = held_out_names()
names = captions[:N_LIVE]
row, drawn = measure_prompts(imagen, encoder, names, list(range(len(names))), guidance=3.0, threshold="static",
                             device=DEVICE, precision=PRECISION)
print(f"{len(names)} held-out names, w = 3, static: top-1 {row['top1']:.3f} ± {row['top1_se']:.3f}, top-5 "
      f"{row['top5']:.3f} ± {row['top5_se']:.3f} (chance {row['chance_top1']:.3f} and {row['chance_top5']:.3f}), "
      f"mean rank {row['mean_rank']:.1f} of {row['candidates']}")
show_images(torch.cat([real[:8], drawn[:8]]), titles=names[:8] + [""] * 8, nrow=8, size=1.7,
            suptitle="top: the held-out drawing; bottom: the model's sample for its name (w = 3)")
plt.show()
''')
md('''
## Guidance and thresholding on real colours

TODO: lesson 07's experiment again; Imagen says dynamic thresholding matters most at large w and for
photorealism; Shapes said: static and none agree, dynamic collapses from w = 5. Here: the recorded sweep.
''')
code('''
rows = read_sweep(SWEEP)
print([line for line in SWEEP.read_text().splitlines() if line.startswith("#")][1])
for r in rows:
    print(f"w = {r['guidance']:<3g} {r['threshold']:8s} top-5 {r['top5']:.3f} ± {r['top5_se']:.3f}  Fréchet "
          f"{r['frechet']:.3f}  beyond ±1 {r['outside']:.4f}")
plot_sweep(rows, title="OpenMoji base: 209 held-out names per point, ancestral 25 steps"); plt.show()
''')
md('''
TODO: what to see; the verdict with differences and their standard errors, against Shapes' sweep.
''')
code('''
by = {(r["guidance"], r["threshold"]): r for r in rows}
for w in sorted({r["guidance"] for r in rows}):
    d, s = by[w, "dynamic"], by[w, "static"]
    diff, se = d["top5"] - s["top5"], (d["top5_se"] ** 2 + s["top5_se"] ** 2) ** 0.5
    print(f"w = {w:<3g} dynamic - static: top-5 {diff:+.3f} ± {1.96 * se:.3f} (95%), Fréchet {d['frechet'] - s['frechet']:+.3f}")
''')
md('''
## Names the model never saw, in words it never saw

TODO: paraphrases (data/openmoji_paraphrases.json): same drawing reached from other words? compositions.
''')
code('''
plain, paraphrases, targets = paraphrased_names()
by_name, _ = measure_prompts(imagen, encoder, plain, targets, device=DEVICE, precision=PRECISION)
by_paraphrase, said = measure_prompts(imagen, encoder, paraphrases, targets, device=DEVICE, precision=PRECISION)
for label, r in (("the names", by_name), ("paraphrases", by_paraphrase)):
    print(f"{len(targets)} held-out emojis from {label:12s}: top-5 {r['top5']:.3f} ± {r['top5_se']:.3f}, mean rank "
          f"{r['mean_rank']:.1f} (chance top-5 {r['chance_top5']:.3f})")
''')
code('''
compositions = ["a blue doughnut", "a cat wearing sunglasses", "a red ghost", "a green heart", "a sad pineapple",
                "a frog wearing a crown"]
x = imagen.sample(compositions, guidance=3.0, steps=25, stages=1, seed=0, progress=False, device=DEVICE,
                  precision=PRECISION)[0]
show_images(x.cpu(), titles=compositions, nrow=6, size=1.8, suptitle="new compositions (w = 3)"); plt.show()
''')
md('''
## To 1024 px

TODO: the whole cascade, time per stage, zoomed windows.
''')
code('''
prompts = [names[0], "a blue doughnut"]
start = time.perf_counter()
stages = imagen.sample(prompts, seed=0, progress=False, device=DEVICE, precision=PRECISION)
print(f"{len(prompts)} prompts to {stages[-1].shape[-1]} px in {time.perf_counter() - start:.1f} s")
fig, axes = plt.subplots(len(prompts), 4, figsize=(13, 3.4 * len(prompts)))
for i, p in enumerate(prompts):
    for ax, x, title in zip(axes[i], [s[i] for s in stages] + [stages[-1][i][:, 384:640, 384:640]],
                            ["64 px", "256 px", "1024 px", "1024 px, central 256 px window"]):
        ax.imshow(((x.cpu().permute(1, 2, 0) + 1) / 2).clamp(0, 1)); ax.set_title(f"{p}: {title}", fontsize=8)
        ax.set_xlabel("x (pixels)"); ax.set_ylabel("y (pixels)")
plt.tight_layout(); plt.show()
''')
md('''
## Failures, shown

TODO: the held-out names drawn worst (highest rank of their own drawing), beside the drawing the sample is
nearest to.
''')
code('''
rank, nearest = ranks(encoder, drawn, real, list(range(len(names))))
worst = rank.argsort(descending=True)[:6].tolist()
show_images(torch.cat([real[worst], drawn[worst], real[nearest[worst]]]),
            titles=[f"{names[i]} (rank {int(rank[i])})" for i in worst] + [""] * 6 + [captions[int(nearest[i])] for i in worst],
            nrow=6, size=1.8, suptitle="rows: the named drawing; the sample; the drawing the sample is nearest to")
plt.show()
''')
md('''
## Summary

TODO.

## Exercises

TODO.
''')
nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbformat.write(nb, "lessons/14_real_drawings.ipynb")
print("wrote lessons/14_real_drawings.ipynb")
