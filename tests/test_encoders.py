"""Imagen's encoder comparison: prompt sets that mean what they say, intervals over seeds, the command."""

import json
import math

import pytest
import torch

from minimagen import cli, encoders
from minimagen.data import HELD_OUT_COLOUR_SHAPES, parse_caption


def test_prompt_sets_ask_in_other_words_and_score_against_the_meaning():
    held = encoders.prompt_set("held-out", 6)
    assert held.prompts == held.captions and held.real.shape == (6, 3, 64, 64)
    for name in ("synonyms", "reordered"):
        ps = encoders.prompt_set(name, 6)
        assert ps.captions == held.captions and torch.equal(ps.real, held.real)  # the same scenes ...
        assert all(p != c for p, c in zip(ps.prompts, ps.captions))  # ... asked for in other words
        assert ps.prompts == encoders.prompt_set(name, 6).prompts  # deterministic
    compositions = encoders.prompt_set("compositions", 20)
    pairs = {(o.colour, o.shape) for c in compositions.captions for o in parse_caption(c).objects}
    assert pairs <= HELD_OUT_COLOUR_SHAPES
    with pytest.raises(ValueError, match="name must be"):
        encoders.prompt_set("poems", 4)


def test_summarize_gives_a_t_interval_over_seeds():
    def row(encoder, value):
        return encoders.EncoderRow(encoder, "m", "held-out", 8, value, 0.01, value, 0.01, 1.0)

    rows = [row("bow", 0.5), row("bow", 0.7), row("bow", 0.6), row("minilm", 0.9)]
    bow, minilm = encoders.summarize(rows)
    assert bow["seeds"] == 3 and bow["alignment"] == pytest.approx(0.6)
    assert bow["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # sd 0.1, t(2) = 4.303
    assert minilm["seeds"] == 1 and math.isnan(minilm["ci95"])


def test_eval_encoders_measures_each_model_on_each_set(tmp_path, monkeypatch):
    import dataclasses

    from minimagen.unet import PRESETS

    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(
        PRESETS["base-s"], channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
        self_attention_levels=(False, False), cross_attention_levels=(False, True)))
    models = []
    for encoder, seed in [("minilm", 0), ("bow", 0), ("bow", 1)]:
        run, model = tmp_path / f"{encoder}{seed}", tmp_path / f"{encoder}{seed}.safetensors"
        cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2", "--encoder",
                  encoder, "--seed", str(seed), "--max-length", "40", "--sample-every", "0", "--quiet", "--threads",
                  "1"])  # 40 tokens: the synonym prompts reach 34
        cli.main(["export", str(run), str(model)])
        models.append(f"{encoder}={model}")
    out = tmp_path / "encoders.csv"
    assert cli.main(["eval", "encoders", "--model", *models, "--n", "3", "--steps", "2", "--sets", "held-out",
                     "synonyms", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    rows = encoders.read_rows(out)
    assert [(r.encoder, r.prompt_set) for r in rows] == [
        ("minilm", "held-out"), ("minilm", "synonyms"), ("bow", "held-out"), ("bow", "synonyms"),
        ("bow", "held-out"), ("bow", "synonyms")]
    assert all(0 <= r.alignment <= 1 and r.n == 3 for r in rows)
    assert out.read_text().startswith("# minimagen eval encoders") and out.with_suffix(".png").is_file()
    # --append: a model measured again replaces its rows, the others stay, both commands are recorded
    first = out.read_text()
    assert cli.main(["eval", "encoders", "--model", models[0], "--n", "3", "--steps", "2", "--sets", "held-out",
                     "synonyms", "--out", str(out), "--append", "--quiet", "--threads", "1"]) == 0
    again = encoders.read_rows(out)
    assert [r.model for r in again] == [r.model for r in rows[2:] + rows[:2]]
    assert again[-2:] == rows[:2]  # same noise, same model: the same numbers
    comment = encoders.read_comment(out)
    assert len(comment) == 3 and comment[0].startswith("minimagen eval encoders") and "--append" in comment[1]
    # other settings cannot join the table: one line, the file untouched
    before = out.read_text()
    assert cli.main(["eval", "encoders", "--model", models[0], "--n", "3", "--steps", "3", "--sets", "held-out",
                     "--out", str(out), "--append", "--quiet", "--threads", "1"]) == 2
    assert out.read_text() == before != first
    with pytest.raises(SystemExit) as exit_info:  # NAME=PATH expected: argparse's one line
        cli.main(["eval", "encoders", "--model", "bow", "--quiet"])
    assert exit_info.value.code == 2
    assert cli.main(["eval", "encoders", "--model", f"bow={tmp_path / 'nope.safetensors'}", "--quiet"]) == 2


def test_mismatched_alignment_is_the_floor_of_the_scale():
    from minimagen.checkpoint import shipped_checkpoint
    from minimagen.metrics import alignment, load_probe

    probe = load_probe(shipped_checkpoint("probe"))
    ps = encoders.prompt_set("held-out", 32)
    floor = encoders.mismatched_alignment(probe, ps)
    own = alignment(probe, ps.real, ps.captions).mean().item()
    assert 0.1 < floor < 0.6 < 0.95 < own  # another scene's caption is mostly wrong, the scene's own right


def test_the_shipped_encoder_models_and_their_recorded_table():
    """Lesson 12's models: one per encoder (seed 0), each rebuilding its text encoder from its card, trained
    without the held-out colour-shape pairs; the recorded table has at least three seeds of each on every set."""
    import json

    from minimagen.checkpoint import SHIPPED_DIR, load_unet
    from minimagen.data import HELD_OUT_COLOUR_SHAPES

    expected = {"minilm": ("minilm", None), "minilm-random": ("minilm-random", None),
                "transformer": ("minilm-tokens", "transformer"), "bow": ("minilm-tokens", "bow")}
    for name, (text_encoder, own_model) in expected.items():
        path = SHIPPED_DIR / "encoders" / f"{name}.safetensors"
        unet, header = load_unet(path)
        card = json.loads(path.with_suffix(".json").read_text())
        assert header["text"]["encoder"] == card["text"]["encoder"] == text_encoder
        assert unet.config.text_model == own_model and unet.config.image_size == 32
        assert {tuple(p) for p in card["data"]["held_out_colour_shapes"]} == set(HELD_OUT_COLOUR_SHAPES)
        assert card["training"]["steps"] == 4000 and card["training"]["seed"] == 0
    table = encoders.summarize(encoders.read_rows(SHIPPED_DIR.parent / "results" / "encoders.csv"))
    assert {(r["encoder"], r["prompt_set"]) for r in table} >= {(e, s) for e in expected for s in encoders.PROMPT_SETS}
    assert all(r["seeds"] >= 3 for r in table if r["encoder"] in expected)


def test_compare_gives_welch_intervals_for_a_difference():
    def row(encoder, value):
        return encoders.EncoderRow(encoder, "m", "synonyms", 8, value, 0.01, value, 0.01, 1.0)

    rows = [row("a", v) for v in (0.5, 0.6, 0.7)] + [row("b", v) for v in (0.3, 0.3, 0.3)]
    d = encoders.compare(rows, "a", "b", "synonyms")
    # b has no spread: the interval is a's own (t with 2 degrees of freedom, sd 0.1 over sqrt(3))
    assert d["difference"] == pytest.approx(0.3) and d["df"] == 2
    assert d["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert encoders.compare(rows, "b", "b", "synonyms") == {"difference": 0.0, "ci95": 0.0, "df": 4}
    with pytest.raises(ValueError, match="two seeds of 'c'"):
        encoders.compare(rows, "a", "c", "synonyms")


def test_several_guidance_weights_give_one_row_each_and_the_fig4_tradeoff(tmp_path, monkeypatch):
    """``--guidance`` with several weights (Imagen Fig. 4): a row per model, set and weight; summaries and
    comparisons keep the weights apart; old tables without the column read as w = 3."""
    import dataclasses

    from minimagen.unet import PRESETS

    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(
        PRESETS["base-s"], channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
        self_attention_levels=(False, False), cross_attention_levels=(False, True)))
    run, model = tmp_path / "run", tmp_path / "small.safetensors"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2", "--max-length", "40",
              "--sample-every", "0", "--quiet", "--threads", "1"])
    cli.main(["export", str(run), str(model)])
    out = tmp_path / "sizes.csv"
    assert cli.main(["eval", "encoders", "--model", f"tiny={model}", f"tiny={model}", "--n", "3", "--steps", "2",
                     "--sets", "held-out", "--guidance", "1", "4", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    rows = encoders.read_rows(out)
    assert [r.guidance for r in rows] == [1.0, 4.0, 1.0, 4.0]
    assert "w = 1, 4" in encoders.read_comment(out)[-1] and out.with_suffix(".png").is_file()
    table = encoders.summarize(rows, "frechet")
    assert [(r["guidance"], r["seeds"]) for r in table] == [(1.0, 2), (4.0, 2)]
    assert rows[0].frechet == rows[2].frechet and table[0]["ci95"] == 0  # same model, same noise
    with pytest.raises(ValueError, match="several guidance weights"):
        encoders.compare(rows, "tiny", "tiny", "held-out")
    assert encoders.compare(rows, "tiny", "tiny", "held-out", guidance=4)["difference"] == 0
    with pytest.raises(ValueError, match="guidance must be one of"):
        encoders.at_guidance(rows, 2)
    assert cli.main(["eval", "encoders", "--model", f"tiny={model}", "--guidance", "2", "2", "--quiet"]) == 2
    old = tmp_path / "old.csv"  # a table from before the guidance column
    old.write_text("\n".join(line.rsplit(",", 1)[0] for line in out.read_text().splitlines() if not line.startswith("#")))
    assert {r.guidance for r in encoders.read_rows(old)} == {3.0}


def test_the_shipped_larger_unet_and_the_recorded_unet_size_sweep():
    """Lesson 12's U-Net-size comparison: the shipped base-m model (seed 0) is the minilm recipe on the larger
    preset, and the recorded sweep has three seeds of both sizes at every guidance weight on every set."""
    from minimagen.checkpoint import SHIPPED_DIR, load_unet
    from minimagen.data import HELD_OUT_COLOUR_SHAPES
    from minimagen.unet import PRESETS

    path = SHIPPED_DIR / "encoders" / "minilm-base-m.safetensors"
    unet, header = load_unet(path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert header["text"]["encoder"] == "minilm" and unet.config.text_model is None and unet.config.image_size == 32
    assert (unet.config.channels, unet.config.channel_mults) == (PRESETS["base-m"].channels,
                                                                 PRESETS["base-m"].channel_mults)
    assert {tuple(p) for p in card["data"]["held_out_colour_shapes"]} == set(HELD_OUT_COLOUR_SHAPES)
    assert card["training"]["steps"] == 4000 and card["training"]["seed"] == 0
    table = encoders.summarize(encoders.read_rows(SHIPPED_DIR.parent / "results" / "unet_size.csv"))
    seeds = {(r["encoder"], r["prompt_set"], r["guidance"]): r["seeds"] for r in table}
    for name in ("base-s", "base-m"):
        for s in encoders.PROMPT_SETS:
            assert all(seeds[name, s, w] >= 3 for w in (1.0, 2.0, 3.0, 5.0, 8.0)), (name, s)
