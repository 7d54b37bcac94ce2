"""Evaluation: match rates tell right renders from wrong ones; the sweep runs, is seeded, and round-trips."""

import dataclasses
import warnings

import pytest
import torch

from minimagen import evaluate
from minimagen.cascade import Imagen, Stage
from minimagen.data import Shapes
from minimagen.metrics import AttributeProbe, load_probe, corrupt
from minimagen.checkpoint import shipped_checkpoint
from minimagen.texture import TextureProbe

from fakes import FakeTextEncoder


@pytest.fixture(scope="module")
def probe():
    return load_probe(shipped_checkpoint("probe"))


def test_eval_prompts_are_held_out_and_repeatable():
    captions, real = evaluate.eval_prompts(8)
    again, _ = evaluate.eval_prompts(8)
    assert captions == again and real.shape == (8, 3, 64, 64)
    train_captions = {Shapes(64, length=200, seed=0)[i][1] for i in range(200)}
    assert not set(captions) & train_captions
    with pytest.raises(ValueError, match="n must be"):
        evaluate.eval_prompts(0)


def test_match_rates_tell_right_renders_from_wrong_ones(probe):
    captions, real = evaluate.eval_prompts(32)
    right = evaluate.match_rates(probe, real, captions)
    assert min(right.values()) >= 0.95
    shuffled = evaluate.match_rates(probe, real, captions[1:] + captions[:1])  # every image, another's caption
    assert shuffled["colour_and_shape"] < 0.3
    noise = evaluate.match_rates(probe, torch.rand(32, 3, 64, 64) * 2 - 1, captions)
    assert noise["colour_and_shape_anywhere"] < 0.3
    with pytest.raises(ValueError, match="as many"):
        evaluate.match_rates(probe, real[:3], captions)


def test_colour_binding_tells_swapped_and_leaked_colours_apart(probe):
    from minimagen.data import Scene, ShapeObject, caption, render

    def obj(colour, shape, position):
        return ShapeObject(colour=colour, shape=shape, size="large", texture="plain", position=position)

    asked = Scene((obj("red", "circle", "left"), obj("blue", "square", "right")))
    drawn = {  # what is drawn for the caption of ``asked``, and how it must be counted
        "both right": asked,
        "both in the first colour": Scene((obj("red", "circle", "left"), obj("red", "square", "right"))),
        "both in the second colour": Scene((obj("blue", "circle", "left"), obj("blue", "square", "right"))),
        "swapped": Scene((obj("blue", "circle", "left"), obj("red", "square", "right"))),
        "other": Scene((obj("green", "circle", "left"), obj("blue", "square", "right"))),
    }
    images = torch.stack([render(scene, 64) for scene in drawn.values()])
    counts = evaluate.colour_binding(probe, images, [caption(asked)] * len(drawn))
    assert {k: counts[k] for k in evaluate.BINDING_OUTCOMES} == dict.fromkeys(evaluate.BINDING_OUTCOMES, 1)
    # per object: 2 right (both right) + 1 + 1 (one object right in each leak) + 0 (swapped) + 1 (the blue square)
    assert counts["objects right"] == 5 and counts["objects in the other object's colour"] == 4
    assert counts["objects in neither"] == 1 and counts["captions"] == 5
    # one-object captions and two objects of one colour cannot show a binding error: not counted
    same = Scene((obj("red", "circle", "left"), obj("red", "square", "right")))
    single = Scene((obj("red", "circle", "left"),))
    skipped = evaluate.colour_binding(probe, torch.stack([render(same, 64), render(single, 64)]),
                                      [caption(same), caption(single)])
    assert skipped["captions"] == 0
    with pytest.raises(ValueError, match="as many"):
        evaluate.colour_binding(probe, images[:2], [caption(asked)])


def test_rate_se_treats_images_as_the_sampled_units():
    # One object per image: the ratio estimator's SE is the binomial one, sqrt(p (1 - p) / (n - 1)).
    hits, objects = torch.tensor([1, 0, 1, 1]), torch.ones(4, dtype=torch.long)
    assert evaluate.rate_se(hits, objects) == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    # Two objects per image, both right or both wrong: as uncertain as one object per image, not less.
    assert evaluate.rate_se(2 * hits, 2 * objects) == pytest.approx(evaluate.rate_se(hits, objects))
    assert evaluate.rate_se(hits[:1], objects[:1]) != evaluate.rate_se(hits[:1], objects[:1])  # NaN for one image


def test_probe_reads_through_background_blotches(probe):
    captions, real = evaluate.eval_prompts(32)
    noisy = corrupt(real, torch.Generator().manual_seed(1), blotches=0.3, grain=0.08)
    assert (noisy - real).abs().max() > 0.1  # the corruption is visible
    assert evaluate.match_rates(probe, noisy, captions)["colour_and_shape"] >= 0.9


def test_corrupt_leaves_objects_alone_without_grain():
    captions, real = evaluate.eval_prompts(4)
    noisy = corrupt(real, torch.Generator().manual_seed(0), blotches=0.3, grain=0.0, shift=0)
    background = (real - (2 * 0.18 - 1)).abs().max(1).values < 0.02  # (B, H, W)
    changed = (noisy - real).abs().max(1).values > 1e-6
    assert not (changed & ~background).any()


@pytest.fixture
def tiny_base(tiny_cascade_unet):
    torch.manual_seed(0)
    return Imagen(FakeTextEncoder(), [Stage("base64", tiny_cascade_unet(64, False, text_dim=8),
                                            {"kind": "cosine", "T": 100, "max_beta": 0.2}, 64)])


def test_threshold_sweep_rows_and_csv_round_trip(tmp_path, tiny_base):
    probe = AttributeProbe().eval()
    rows = evaluate.threshold_sweep(tiny_base, probe, n=4, weights=[1, 4], modes=["none", "dynamic"], steps=2,
                                    batch_size=3, progress=False)
    assert [(r.guidance, r.threshold) for r in rows] == [(1, "none"), (1, "dynamic"), (4, "none"), (4, "dynamic")]
    assert all(r.n == 4 and 0 <= r.alignment <= 1 and 0 <= r.saturation <= 1 for r in rows)
    again = evaluate.threshold_sweep(tiny_base, probe, n=4, weights=[1], modes=["none"], steps=2, batch_size=3,
                                     progress=False)
    assert again[0].alignment == rows[0].alignment and again[0].frechet == pytest.approx(rows[0].frechet)
    path = evaluate.write_csv(rows, tmp_path / "sweep.csv", comment="made by a test\nsecond line")
    assert path.read_text().startswith("# made by a test\n# second line\n")
    back = evaluate.read_csv(path)
    assert [(r.guidance, r.threshold, r.n) for r in back] == [(r.guidance, r.threshold, r.n) for r in rows]
    assert back[1].alignment == pytest.approx(rows[1].alignment, abs=1e-6)
    with pytest.raises(ValueError, match="modes must be among"):
        evaluate.threshold_sweep(tiny_base, probe, n=2, modes=["clip"], progress=False)
    fig = evaluate.plot_sweep(rows)
    assert fig.axes[0].get_xlabel().startswith("Fréchet") and fig.axes[1].get_xlabel() == "guidance weight w"
    unsaturated = [dataclasses.replace(r, saturation=0.0) for r in rows]  # a model that never saturates
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log axis would warn "no positive values" and drop the points
        evaluate.plot_sweep(unsaturated).canvas.draw()
    spread = [dataclasses.replace(r, frechet=fd) for r, fd in zip(rows, [20.0, 25.0, 30.0, 3000.0])]
    assert evaluate.plot_sweep(spread).axes[0].get_xscale() == "log"  # one collapsed mode: log by default
    assert evaluate.plot_sweep(spread, log_frechet=False).axes[0].get_xscale() == "linear"
    close = [dataclasses.replace(r, frechet=fd) for r, fd in zip(rows, [20.0, 25.0, 30.0, 40.0])]
    assert evaluate.plot_sweep(close).axes[0].get_xscale() == "linear"
    with pytest.raises(TypeError, match="log_frechet"):
        evaluate.plot_sweep(rows, log_frechet="yes")


def test_paired_with_compares_two_rows_prompt_by_prompt():
    def row(scores):
        return evaluate.Measurement(3.0, "static", 25, len(scores), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                    per_image={"alignment": scores, "objects": [1] * len(scores),
                                               "colour_and_shape": [1] * len(scores)})
    mean, se, changed = row([1.0, 0.5, 1.0, 1.0]).paired_with(row([1.0, 1.0, 1.0, 0.5]))
    assert (mean, changed) == (0.0, 2) and se == pytest.approx((1 / 6) ** 0.5 / 2)  # sample SD of (0, -0.5, 0, 0.5) over sqrt(4)
    with pytest.raises(ValueError, match="same n prompts"):
        row([1.0, 1.0]).paired_with(row([1.0, 1.0, 1.0]))


def test_rows_keep_per_image_values_so_a_prompt_subset_compares_prompt_by_prompt(tmp_path, tiny_base):
    probe = AttributeProbe().eval()
    rows = evaluate.threshold_sweep(tiny_base, probe, n=4, weights=[1, 4], modes=["static"], steps=2,
                                    batch_size=3, progress=False)
    for r in rows:
        assert len(r.per_image["alignment"]) == 4
        whole = r.first_images(4)
        assert whole["alignment"] == pytest.approx(r.alignment, abs=1e-6)
        assert whole["colour_and_shape"] == pytest.approx(r.colour_and_shape)
        assert whole["colour_and_shape_se"] == pytest.approx(r.colour_and_shape_se)
    path = evaluate.write_csv(rows, tmp_path / "sweep.csv")
    assert evaluate.per_image_path(path).name == "sweep.images.csv"
    assert path.read_text().splitlines()[0].split(",")[-1] == "colour_and_shape_se"  # per-image values elsewhere
    back = evaluate.read_csv(path)
    assert [b.per_image for b in back] == [r.per_image for r in rows]
    # A run on the first 2 prompts alone (deterministic DDIM, the same first batch seed) measures what the
    # 4-prompt rows hold for those prompts: the live subset of a lesson checks against the same prompts.
    small = evaluate.threshold_sweep(tiny_base, probe, n=2, weights=[1, 4], modes=["static"], steps=2,
                                     batch_size=3, progress=False)
    for s, r in zip(small, back):
        assert s.per_image["alignment"] == pytest.approx(r.per_image["alignment"][:2], abs=1e-6)
        assert s.alignment == pytest.approx(r.first_images(2)["alignment"], abs=1e-6)
    with pytest.raises(ValueError, match="at most"):
        back[0].first_images(5)
    evaluate.per_image_path(path).unlink()  # a CSV without its companion reads back without per-image values
    with pytest.raises(ValueError, match="per-image"):
        evaluate.read_csv(path)[0].first_images(2)
    record = evaluate.card_record(evaluate.write_csv(rows, tmp_path / "card.csv"))
    assert "per_image" not in record["rows"][0]


def test_dynamic_thresholding_removes_saturation_of_a_large_weight(tiny_base):
    # An untrained U-Net at w = 10 drives x0_hat far past ±1: unthresholded samples saturate, dynamic ones not.
    captions, _ = evaluate.eval_prompts(2)
    raw = evaluate.sample_in_batches(tiny_base, captions, guidance=10.0, threshold=None, steps=3, seed=0, clamp=False)
    dyn = evaluate.sample_in_batches(tiny_base, captions, guidance=10.0, threshold="dynamic", steps=3, seed=0)
    assert raw.abs().max() > 1 and dyn.abs().max() <= 1


def test_imagen_sample_runs_the_first_stages_only(tiny_base):
    with pytest.raises(ValueError, match="stages must be"):
        tiny_base.sample(["x"], steps=2, stages=2, progress=False)


def test_steps_sweep_puts_ddpm_first_and_records_the_sampler(tmp_path, tiny_base):
    probe = AttributeProbe().eval()
    rows = evaluate.steps_sweep(tiny_base, probe, n=2, step_counts=[5, 2], modes=["static"], progress=False)
    assert [(r.sampler, r.steps) for r in rows] == [("ddpm", 100), ("ddim", 5), ("ddim", 2)]
    back = evaluate.read_csv(evaluate.write_csv(rows, tmp_path / "steps.csv"))
    assert [r.sampler for r in back] == ["ddpm", "ddim", "ddim"]
    fig = evaluate.plot_steps(rows)
    assert fig.axes[0].get_xlabel() == "sampling steps (U-Net calls per image)"
    ancestral = evaluate.steps_sweep(tiny_base, probe, n=2, step_counts=[], ancestral_counts=[10, 100],
                                     modes=["static"], progress=False)
    assert [(r.sampler, r.steps) for r in ancestral] == [("ddpm", 100), ("ddpm", 10)]  # T once, then the rest
    evaluate.plot_steps(rows + ancestral)


def test_ddim_with_eta_one_over_all_steps_is_ddpm(tiny_base):
    from minimagen.guidance import guided_model_fn
    from minimagen.samplers import ddpm_sample

    stage = tiny_base.stages[0]
    text, mask = tiny_base.text_encoder.encode(["a red circle"])
    via_imagen = tiny_base.sample(["a red circle"], guidance=1.0, threshold="static", steps=100, eta=1.0, seed=3,
                                  progress=False)[0]
    reference = ddpm_sample(guided_model_fn(stage.unet, text, mask, 1.0), (1, 3, 64, 64), stage.schedule,
                            threshold="static", generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(via_imagen, reference.clamp(-1, 1), atol=1e-4, rtol=0)


def test_sr_quality_compares_a_stage_with_bicubic_and_real_renders(tiny_cascade_unet):
    torch.manual_seed(0)
    spec = {"kind": "cosine", "T": 20, "max_beta": 0.2}
    stages = [Stage("base16", tiny_cascade_unet(16, False, 8), spec, 16),
              Stage("sr32", tiny_cascade_unet(32, True, 8), spec, 32)]
    imagen = Imagen(FakeTextEncoder(), stages)
    q = evaluate.sr_quality(imagen, "sr32", n=3, steps=2, batch_size=2, aug_level=5, progress=False)
    assert set(q) >= {"sharpness_sr", "sharpness_bicubic", "sharpness_real", "downsample_error_sr",
                      "downsample_error_bicubic", "rmse_to_real_sr", "rmse_to_real_bicubic", "seconds_per_image"}
    assert q["sharpness_real"] > q["sharpness_bicubic"]  # real renders have detail bicubic cannot invent
    assert q["downsample_error_bicubic"] < 0.1
    assert q == evaluate.sr_quality(imagen, "sr32", n=3, steps=2, batch_size=2, aug_level=5, progress=False) | {
        "seconds_per_image": q["seconds_per_image"]}  # seeded
    with pytest.raises(ValueError, match="is the base model"):
        evaluate.sr_quality(imagen, "base16", n=2)
    assert q["sharpness_sr_se"] > 0 and q["downsample_error_bicubic_se"] >= 0  # a standard error for each mean
    generated = evaluate.sr_quality(imagen, "sr32", n=3, steps=2, batch_size=2, aug_level=5, progress=False,
                                    inputs="generated", base_steps=2)  # the base stage's samples of the captions
    assert "rmse_to_real_sr" not in generated and generated["sharpness_real"] == q["sharpness_real"]
    assert generated["downsample_error_bicubic"] != q["downsample_error_bicubic"]  # other inputs
    with pytest.raises(ValueError, match="inputs"):
        evaluate.sr_quality(imagen, "sr32", n=2, inputs="fake")
    with pytest.raises(ValueError, match="multiple of 256"):  # refused before any sampling
        evaluate.sr_quality(imagen, "sr32", n=2, texture_probe=TextureProbe(width=4))
