"""Tests for minimagen.drawings: the OpenMoji feature extractor, retrieval and Fréchet distance."""

import json
import re

import pytest
import torch

from minimagen.data import OpenMoji
from minimagen.drawings import (DrawingEncoder, contrastive_loss, drawing_frechet, load_drawing_encoder, retrieval,
                                save_drawing_encoder, spoil, train_drawing_encoder)


@pytest.fixture(scope="module")
def few():
    drawings = OpenMoji(64, split="held_out", skin_tones=False)
    return [drawings[i] for i in range(0, 48, 3)]  # 16 drawings


def test_spoil_is_seeded_and_keeps_the_range():
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    a, b = (spoil(images, torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == images.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, images)


def test_contrastive_loss_rewards_views_that_find_each_other():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    matched = contrastive_loss(z, z, 0.1)
    shuffled = contrastive_loss(z, z.roll(1, 0), 0.1)
    assert matched < 0.5 < shuffled


def test_a_briefly_trained_encoder_finds_spoiled_drawings_and_round_trips(few, tmp_path):
    encoder, losses = train_drawing_encoder(few, steps=60, batch_size=16, width=8, dim=32, progress=False)
    assert losses[-1] < losses[0]
    real = torch.stack([image for image, _ in few])
    views = spoil(real, torch.Generator().manual_seed(7), shift=2)
    found = retrieval(encoder, views, real, list(range(len(few))))
    assert found["chance_top1"] == 1 / 16 and found["top1"] > 0.5 and found["top5"] >= found["top1"]
    assert 1 <= found["mean_rank"] < 4
    assert drawing_frechet(encoder, views, real) < drawing_frechet(encoder, torch.zeros_like(real), real)
    # 256 px images are read at 64 px (area-averaged)
    big = torch.nn.functional.interpolate(real, scale_factor=4, mode="nearest")
    torch.testing.assert_close(encoder(big), encoder(real), atol=1e-5, rtol=0)
    path = tmp_path / "enc.safetensors"
    save_drawing_encoder(encoder, path, losses=losses, training={"steps": 60}, accuracy=found, eval_n=16)
    torch.testing.assert_close(load_drawing_encoder(path)(real), encoder(real), atol=2e-2, rtol=0)
    assert "CC BY-SA 4.0" in json.loads(path.with_suffix(".json").read_text())["data"]["licence"]


def test_bad_inputs_are_explained():
    encoder = DrawingEncoder(8, 16).eval()
    with pytest.raises(ValueError, match="multiple of 64"):
        encoder(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="targets must give each"):
        retrieval(encoder, torch.zeros(2, 3, 64, 64), torch.zeros(3, 3, 64, 64), [0, 3])


def test_training_stops_at_a_time_limit_and_resumes_to_the_same_encoder(few, tmp_path):
    kwargs = dict(steps=6, batch_size=8, width=8, dim=16, progress=False)
    straight, straight_losses = train_drawing_encoder(few, **kwargs)
    state = tmp_path / "state.pt"
    parts = 0
    while True:  # a time limit this short stops after every step
        encoder, losses = train_drawing_encoder(few, state_path=state, time_limit=1e-9, save_every=2, **kwargs)
        parts += 1
        if encoder is not None:
            break
        assert encoder is None and state.is_file() and len(losses) == parts
    assert parts == 6 and losses == pytest.approx(straight_losses, abs=1e-5)
    real = torch.stack([image for image, _ in few])
    torch.testing.assert_close(encoder(real), straight(real), atol=1e-5, rtol=0)
    again, _ = train_drawing_encoder(few, state_path=state, **kwargs)  # complete: returns at once
    torch.testing.assert_close(again(real), encoder(real), atol=0, rtol=0)
    with pytest.raises(ValueError, match="other settings"):
        train_drawing_encoder(few, state_path=state, **{**kwargs, "steps": 7})
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        train_drawing_encoder(few, time_limit=0, **kwargs)


def test_the_command_trains_measures_and_ships_an_encoder_and_resumes_after_a_time_limit(tmp_path, capsys):
    from minimagen import cli

    out = tmp_path / "drawing_encoder.safetensors"
    command = ["drawing-encoder", "--steps", "2", "--batch-size", "8", "--width", "8", "--eval-n", "10", "--out",
               str(out), "--quiet", "--threads", "1"]
    assert cli.main(command + ["--time-limit", "1e-9"]) == 0
    assert "time limit reached at step 1 of 2" in capsys.readouterr().out
    state = tmp_path / "drawing_encoder.partial.pt"
    assert state.is_file() and not out.exists()
    assert cli.main(command) == 0  # the same command finishes the run
    printed = capsys.readouterr().out
    assert "resuming from" in printed and out.is_file() and not state.exists()
    assert "held-out accuracy (top1)" in printed and "held-out accuracy (chance_top1) 0.1000" in printed
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["held_out_drawings"] == 10 and card["training"]["steps"] == 2 and card["training"]["wall_time_s"] >= 0
    assert load_drawing_encoder(out).width == 8
    assert cli.main(command + ["--time-limit", "0"]) == 2


class DrawingOracle:
    """Imagen's ``sample`` for a base stage that draws the held-out drawing of each caption (``shift=1``: the
    next caption's), scaled by the guidance weight so that w > 1 leaves values beyond ±1 unless thresholded."""

    def __init__(self, shift: int = 0):
        from minimagen.drawings import held_out_names

        captions, self.real = held_out_names()
        self.index = {caption: i for i, caption in enumerate(captions)}
        self.shift, self.calls = shift, []

    def sample(self, prompts, *, guidance, threshold, stages, clamp, **kwargs):
        assert stages == 1 and clamp is False
        self.calls.append((guidance, threshold))
        images = self.real[[(self.index[p] + self.shift) % len(self.real) for p in prompts]] * guidance
        return [images.clamp(-1, 1) if threshold == "static" else images]


def test_guidance_sweep_scores_retrieval_frechet_and_values_beyond_one(tmp_path):
    from minimagen.drawings import frechet_reference, guidance_sweep, held_out_names, plot_sweep, read_sweep, write_sweep

    captions, real = held_out_names()
    assert len(captions) == len(real) == 209 and len(set(captions)) == 209
    assert held_out_names(5)[0] == captions[:5] and torch.equal(held_out_names(5)[1], real)
    encoder = DrawingEncoder(8, 16).eval()  # untrained: the same image still has the same features
    oracle = DrawingOracle()
    rows = guidance_sweep(oracle, encoder, weights=[1, 2], modes=["none", "static"], n=40, batch_size=16,
                          progress=False)
    assert [(r["guidance"], r["threshold"]) for r in rows] == [(1, "none"), (1, "static"), (2, "none"), (2, "static")]
    assert len(oracle.calls) == 4 * 3  # 40 names in batches of 16
    exact = rows[0]
    assert exact["n"] == 40 and exact["candidates"] == 209 and exact["chance_top1"] == pytest.approx(1 / 209)
    assert exact["top1"] == exact["top5"] == 1.0 and exact["mean_rank"] == 1.0 and exact["outside"] == 0.0
    assert rows[2]["outside"] > 0.05 and rows[3]["outside"] == 0.0  # w = 2 without and with the threshold
    assert rows[3]["frechet"] > exact["frechet"]  # doubled contrast, clamped: further from the real drawings
    wrong = guidance_sweep(DrawingOracle(shift=1), encoder, weights=[1], modes=["static"], n=40, progress=False)[0]
    assert wrong["top1"] == 0.0 and wrong["mean_rank"] > 1
    # kept rows are not sampled again
    again = DrawingOracle()
    kept = [dict(r, top1=-1.0) for r in rows[:3]]  # marked, to tell a kept row from a measured one
    resumed = guidance_sweep(again, encoder, weights=[1, 2], modes=["none", "static"], n=40, done=kept, batch_size=16,
                             progress=False)
    assert [r["top1"] for r in resumed[:3]] == [-1.0] * 3 and resumed[3]["frechet"] == pytest.approx(rows[3]["frechet"])
    assert again.calls == [(2.0, "static")] * 3
    # rows of another setting (other n, steps or sampler) are measured again
    for other in (dict(n=39), dict(steps=10), dict(eta=0.0)):
        again.calls.clear()
        guidance_sweep(again, encoder, weights=[1], modes=["none"], n=40, done=[dict(kept[0], **other)], batch_size=16,
                       progress=False)
        assert again.calls == [(1.0, "none")] * 3, other
    path = write_sweep(rows, tmp_path / "sweep.csv", comment="made by a test")
    back = read_sweep(path)
    assert [(r["guidance"], r["threshold"], r["n"]) for r in back] == [(r["guidance"], r["threshold"], 40) for r in rows]
    assert back[2]["outside"] == pytest.approx(rows[2]["outside"], abs=1e-5)
    assert plot_sweep(back).axes[0].get_xlabel() == "guidance weight w"
    assert 0 < frechet_reference(encoder, n=30) < drawing_frechet(encoder, -real, real)
    with pytest.raises(ValueError, match="modes must be among"):
        guidance_sweep(oracle, encoder, modes=["loud"], progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        guidance_sweep(oracle, encoder, weights=[], progress=False)
    with pytest.raises(ValueError, match="rows is empty"):
        plot_sweep([])


def test_the_shipped_drawing_encoder_finds_spoiled_held_out_drawings():
    """The shipped encoder (``minimagen drawing-encoder``) was trained on the training split only; on 48 held-out
    drawings it must pick the spoiled view's own drawing out nearly always, and its card must say how it was made."""
    from minimagen.checkpoint import SHIPPED_DIR
    from minimagen.drawings import held_out_retrieval

    path = SHIPPED_DIR / "drawing_encoder.safetensors"
    encoder = load_drawing_encoder(path)
    found = held_out_retrieval(encoder, n=48, seed=5)
    assert found["top1"] >= 0.95 and found["chance_top1"] == 1 / 48
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 2000 and card["held_out_retrieval"]["top1"] >= 0.95
    assert card["data"]["split"] == "train" and "hardware" in card["training"]


def test_measure_prompts_and_the_paraphrased_names(tmp_path):
    from minimagen.drawings import held_out_names, measure_prompts, paraphrased_names

    names, paraphrases, targets = paraphrased_names()
    captions, real = held_out_names()
    assert len(names) >= 40 and [captions[t] for t in targets] == names
    small = {"with", "and", "the", "for", "of"}
    for name, said in zip(names, paraphrases):  # other words: no content word of the name comes back
        shared = {w for w in re.findall(r"[a-z]+", name) if len(w) > 2 and w not in small} & set(re.findall(r"[a-z]+", said))
        assert not shared, (name, said, shared)
    encoder = DrawingEncoder(8, 16).eval()
    oracle = DrawingOracle()
    row, images = measure_prompts(oracle, encoder, names[:10], targets[:10], guidance=1.0, batch_size=4)
    assert row["top1"] == 1.0 and row["n"] == 10 and images.shape == (10, 3, 64, 64)
    torch.testing.assert_close(images, real[targets[:10]])
    with pytest.raises(ValueError, match="one length"):
        measure_prompts(oracle, encoder, names[:2], targets[:3])
    with pytest.raises(ValueError, match="at least 2"):
        measure_prompts(oracle, encoder, names[:1], targets[:1])
    with pytest.raises(ValueError, match="indices into the 209"):
        measure_prompts(oracle, encoder, names[:2], [0, 209])
    assert oracle.calls == [(1.0, "static")] * 3  # the bad calls stopped before sampling
    with pytest.raises(ValueError, match="n must be"):
        held_out_names(1)
    bad = tmp_path / "p.json"
    bad.write_text('{"a flying teapot": "tea in the air"}')
    with pytest.raises(ValueError, match="not held-out OpenMoji names"):
        paraphrased_names(bad)


def test_ranks_give_each_image_its_drawing_rank_and_nearest_candidate():
    from minimagen.drawings import ranks

    encoder = DrawingEncoder(8, 16).eval()
    real = torch.rand(6, 3, 64, 64) * 2 - 1
    rank, nearest = ranks(encoder, real[[2, 4]], real, [2, 1])  # the first is its own drawing, the second is not
    assert rank[0] == 1 and nearest[0] == 2 and rank[1] > 1 and nearest[1] == 4
