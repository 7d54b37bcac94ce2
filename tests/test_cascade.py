"""Super-resolution inputs: aligned pairs and crops, upsampling, noise-conditioning augmentation."""

import pytest
import torch
import torch.nn.functional as F

from minimagen.cascade import SuperResolutionPairs, noise_augment, upsample
from minimagen.schedules import NoiseSchedule

from fakes import FakeTextEncoder


def test_pairs_show_the_same_scene():
    pairs = SuperResolutionPairs(low_size=16, high_size=64, length=10, seed=2)
    high, low, caption = pairs[3]
    assert high.shape == (3, 64, 64) and low.shape == (3, 16, 16) and isinstance(caption, str)
    assert (F.avg_pool2d(high[None], 4)[0] - low).abs().mean() < 0.01


def test_crops_are_aligned_and_deterministic():
    pairs = SuperResolutionPairs(low_size=16, high_size=64, crop=32, length=10, seed=2)
    high, low, _ = pairs[5]
    assert high.shape == (3, 32, 32) and low.shape == (3, 8, 8)
    assert (F.avg_pool2d(high[None], 4)[0] - low).abs().mean() < 0.01  # the same window of the scene
    torch.testing.assert_close(pairs[5][0], high)
    with pytest.raises(ValueError, match="crop must be a multiple of 4"):
        SuperResolutionPairs(low_size=16, high_size=64, crop=30)
    with pytest.raises(ValueError, match="multiple of low_size"):
        SuperResolutionPairs(low_size=16, high_size=40)


def test_upsample_keeps_range_and_content():
    from minimagen.data import Shapes

    low = torch.stack([Shapes(size=16, length=4, seed=0)[i][0] for i in range(2)])
    up = upsample(low, 64)
    assert up.shape == (2, 3, 64, 64) and up.abs().max() <= 1
    assert (F.avg_pool2d(up, 4) - low).abs().mean() < 0.02  # downsampling back recovers the input
    with pytest.raises(ValueError, match="smaller than"):
        upsample(low, 4)


def test_noise_augment_is_the_forward_process():
    schedule = NoiseSchedule.linear(100)
    low, noise = torch.rand(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    level = torch.tensor([0, 50, 99])
    out = noise_augment(low, level, schedule, noise)
    torch.testing.assert_close(out, schedule.q_sample(low, level, noise))
    assert (out[0] - low[0]).abs().max() < 0.05  # level 0: almost untouched


@pytest.fixture
def tiny_cascade(tiny_cascade_unet):
    from minimagen.cascade import Imagen, Stage

    torch.manual_seed(0)

    def unet(size, sr):
        return tiny_cascade_unet(size, sr, text_dim=8)

    spec = {"kind": "cosine", "T": 100, "max_beta": 0.2}
    stages = [Stage("base8", unet(8, False), spec, 8), Stage("sr16", unet(16, True), spec, 16),
              Stage("sr32", unet(16, True), spec, 32)]  # fully convolutional: built for 16 px crops, run at 32
    return Imagen(FakeTextEncoder(), stages)


def test_cascade_samples_every_stage_and_reloads(tmp_path, tiny_cascade):
    from minimagen.cascade import Imagen

    imagen = tiny_cascade
    images = imagen.sample(["a red circle", "a blue square"], steps=3, guidance=(2.0, 1.0, 1.0), progress=False)
    assert [tuple(x.shape) for x in images] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)]
    assert all(x.abs().max() <= 1 for x in images)
    again = imagen.sample(["a red circle", "a blue square"], steps=3, guidance=(2.0, 1.0, 1.0), progress=False)
    torch.testing.assert_close(images[-1], again[-1])  # seeded

    imagen.save_pretrained(tmp_path)
    loaded = Imagen.from_pretrained(tmp_path, text_encoder=FakeTextEncoder())
    reloaded = loaded.sample(["a red circle", "a blue square"], steps=3, guidance=(2.0, 1.0, 1.0), progress=False)
    torch.testing.assert_close(reloaded[0], images[0], atol=2e-2, rtol=0)  # fp16 weights on disk

    # One stage swapped for other weights of the same kind (an ablation measured in place): the others stay.
    other = tmp_path / "other"
    Imagen(FakeTextEncoder(), [imagen.stages[0], imagen.stages[1]]).save_pretrained(other)
    swapped = loaded.replace_stage("sr32", tmp_path / "sr32.safetensors")
    assert swapped.stages[0] is loaded.stages[0] and swapped.stages[2] is not loaded.stages[2]
    with pytest.raises(ValueError, match="16 px SR U-Net; stage 'sr32' is a 32 px SR stage"):
        loaded.replace_stage("sr32", other / "sr16.safetensors")
    with pytest.raises(ValueError, match="base U-Net"):
        loaded.replace_stage("sr16", other / "base8.safetensors")


def test_cascade_argument_errors(tmp_path, tiny_cascade):
    from minimagen.cascade import Imagen

    imagen = tiny_cascade
    with pytest.raises(ValueError, match="guidance needs one value per stage"):
        imagen.sample(["x"], guidance=(1.0, 2.0), progress=False)
    with pytest.raises(ValueError, match="aug_level"):
        imagen.sample(["x"], steps=2, aug_level=500, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        imagen.sample([], progress=False)
    with pytest.raises(ValueError, match="must be a base model"):
        Imagen(FakeTextEncoder(), imagen.stages[1:])
    with pytest.raises(ValueError, match="must be larger"):
        Imagen(FakeTextEncoder(), [imagen.stages[0], imagen.stages[2], imagen.stages[1]])
    with pytest.raises(ValueError, match="no imagen.json"):
        Imagen.from_pretrained(tmp_path)


def test_a_stage_with_its_own_text_model_needs_token_ids(tiny_cascade):
    import dataclasses

    from minimagen.cascade import Imagen, Stage
    from minimagen.unet import UNet

    base = tiny_cascade.stages[0]
    own = UNet(dataclasses.replace(base.unet.config, text_model="bow", text_vocab=64, text_max_length=6))
    with pytest.raises(ValueError, match=r"reads token ids \(its bow text model\), the encoder gives encoded text"):
        Imagen(FakeTextEncoder(), [Stage("base8", own, base.schedule_spec, 8)])
    ids_encoder = FakeTextEncoder()
    ids_encoder.output = "ids"
    with pytest.raises(ValueError, match="reads encoded text, the encoder gives token ids"):
        Imagen(ids_encoder, tiny_cascade.stages)


def test_eta_is_given_per_stage_or_once_for_all(tiny_cascade):
    imagen, prompts = tiny_cascade, ["a red circle", "a blue square"]
    ddim = imagen.sample(prompts, steps=2, progress=False, seed=3)
    same = imagen.sample(prompts, steps=2, progress=False, seed=3, eta=[0.0, 0.0, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(ddim, same))
    # ancestral base stage only: the base image changes; the SR stages still run deterministically
    mixed = imagen.sample(prompts, steps=2, progress=False, seed=3, eta=[1.0, 0.0, 0.0])
    assert not torch.equal(mixed[0], ddim[0])
    again = imagen.sample(prompts, steps=2, progress=False, seed=3, eta=[1.0, 0.0, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(mixed, again))  # seeded: repeatable
    base_only = imagen.sample(prompts, steps=2, progress=False, seed=3, eta=[1.0], stages=1)
    assert torch.equal(base_only[0], mixed[0])
    with pytest.raises(ValueError, match="eta needs one value per stage"):
        imagen.sample(prompts, steps=2, progress=False, eta=[1.0, 0.0])
    with pytest.raises(ValueError, match="eta must be"):
        imagen.sample(prompts, steps=2, progress=False, eta=1.5)


def test_super_resolve_checks_the_input_size_and_runs_one_stage(tiny_cascade):
    imagen = tiny_cascade
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    out = imagen.super_resolve(low, ["a red circle", "a blue square"], stage="sr16", steps=2, progress=False)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
    again = imagen.super_resolve(low, ["a red circle", "a blue square"], stage="sr16", steps=2, progress=False)
    torch.testing.assert_close(out, again)
    ancestral = imagen.super_resolve(low, ["a red circle", "a blue square"], stage="sr16", steps=2, progress=False,
                                     eta=1.0)
    assert ancestral.shape == out.shape and not torch.equal(ancestral, out)  # fresh noise at each step
    with pytest.raises(ValueError, match=r"image size 16x16 does not match stage 'sr16' \(expects 8x8 inputs"):
        imagen.super_resolve(torch.zeros(2, 3, 16, 16), ["a", "b"], stage="sr16", progress=False)
    with pytest.raises(ValueError, match="no stage named 'sr256'"):
        imagen.super_resolve(low, ["a", "b"], stage="sr256", progress=False)
    with pytest.raises(ValueError, match="is the base model"):
        imagen.super_resolve(low, ["a", "b"], stage="base8", progress=False)
    with pytest.raises(ValueError, match="must be as many"):
        imagen.super_resolve(low, ["a"], stage="sr16", progress=False)


def test_bf16_sampling_stays_close_to_fp32_and_precision_is_checked(tiny_cascade):
    import copy

    prompts = ["a red circle", "a blue square"]
    imagen = copy.deepcopy(tiny_cascade)
    torch.manual_seed(1)
    with torch.no_grad():  # the fresh U-Net's output layer is zero (eps = 0 exactly): give it weights to round
        for p in imagen.stages[0].unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fp32 = imagen.sample(prompts, steps=3, guidance=(2.0, 1.0, 1.0), progress=False, stages=1, clamp=False)[0]
    bf16 = imagen.sample(prompts, steps=3, guidance=(2.0, 1.0, 1.0), progress=False, stages=1,
                               precision="bf16", clamp=False)[0]
    assert bf16.dtype == torch.float32
    difference = (bf16 - fp32).abs()
    assert 0 < difference.max() and difference.mean() < 0.05  # rounding moves pixels a little, never far
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_cascade.sample(prompts, steps=2, progress=False, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_cascade.super_resolve(torch.zeros(2, 3, 8, 8), prompts, stage="sr16", steps=2, progress=False,
                                   precision="half")


def test_default_guidance_and_steps_are_per_stage(tiny_cascade):
    prompts = ["a red circle"]
    default = tiny_cascade.sample(prompts, progress=False)
    explicit = tiny_cascade.sample(prompts, guidance=(3.0, 1.0, 1.0), steps=(50, 25, 25), threshold="dynamic",
                                   progress=False)
    for a, b in zip(default, explicit):
        torch.testing.assert_close(a, b)
    assert len(tiny_cascade.sample(prompts, stages=2, progress=False)) == 2  # the defaults cut to the stages run


def test_the_shipped_cascade_draws_the_readme_prompt_at_1024(tmp_path):
    """The README's first command, end to end: a 1024x1024 PNG whose content the probe reads as the prompt."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from minimagen import cli
    from minimagen.checkpoint import shipped_checkpoint
    from minimagen.metrics import alignment, load_probe

    prompt = "a small red striped circle on the left"
    out = tmp_path / "sample.png"
    cli.main(["sample", prompt, "--out", str(out), "--all-stages", "--quiet", "--threads", "2"])
    image = np.array(Image.open(out))  # a writable copy
    assert image.shape == (1024, 1024, 3)
    assert np.asarray(Image.open(tmp_path / "sample_sr256.png")).shape == (256, 256, 3)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    probe = load_probe(shipped_checkpoint("probe"))
    assert alignment(probe, F.avg_pool2d(x, 16), [prompt]).item() == 1.0  # position, colour, shape, size


def test_crop_window_locates_the_crop_in_both_images():
    from minimagen.cascade import SuperResolutionPairs

    cropped = SuperResolutionPairs(low_size=16, high_size=64, crop=16, length=8, seed=2)
    whole = SuperResolutionPairs(low_size=16, high_size=64, length=8, seed=2)
    assert whole.window(0) is None
    for i in range(8):
        (high, low, _), (full_high, full_low, _) = cropped[i], whole[i]
        y, x = cropped.window(i)
        assert y % 4 == 0 and x % 4 == 0 and 0 <= y <= 48 and 0 <= x <= 48
        assert torch.equal(high, full_high[:, y:y + 16, x:x + 16])
        assert torch.equal(low, full_low[:, y // 4:y // 4 + 4, x // 4:x // 4 + 4])


def test_auto_precision_is_bf16_only_where_the_hardware_has_it():
    from minimagen.cascade import native_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert native_bf16("meta") is False
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_downsampled_pairs_cut_a_new_window_at_every_read_and_average_it_down():
    from minimagen.cascade import DownsampledPairs

    images = [(torch.rand(3, 64, 64) * 2 - 1, f"picture {i}") for i in range(3)]
    pairs = DownsampledPairs(images, low_size=16, high_size=64, crop=32, seed=0, windows=50)
    assert len(pairs) == 150
    high, low, caption = pairs[4]  # picture 1, its second window
    assert caption == "picture 1" and high.shape == (3, 32, 32) and low.shape == (3, 8, 8)
    torch.testing.assert_close(low, torch.nn.functional.avg_pool2d(high[None], 4)[0])
    # the window moves between reads of one picture, on the low-res grid, and is the same for the same index
    corners = set()
    for index in range(1, 150, 3):
        h, _, _ = pairs[index]
        matches = [(y, x) for y in range(0, 33, 4) for x in range(0, 33, 4)
                   if torch.equal(images[1][0][:, y:y + 32, x:x + 32], h)]
        assert len(matches) == 1
        corners.add(matches[0])
    assert len(corners) > 10 and torch.equal(pairs[4][0], high)
    whole = DownsampledPairs(images, low_size=16, high_size=64)
    assert len(whole) == 3 and whole[2][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="needs \\[3, 128, 128\\]"):
        DownsampledPairs(images, low_size=32, high_size=128)[0]
    with pytest.raises(ValueError, match="crop must be a multiple of 4"):
        DownsampledPairs(images, low_size=16, high_size=64, crop=30)


def test_sampling_defaults_are_ancestral_with_fewer_steps_at_1024():
    from minimagen.cascade import sampling_defaults

    stages = [type("S", (), {"size": size})() for size in (64, 256, 1024)]
    assert sampling_defaults(stages) == ([25, 25, 10], [1.0, 1.0, 1.0])
    assert sampling_defaults(stages[:2]) == ([25, 25], [1.0, 1.0])
