"""Trainer: the loss falls, resume equals an uninterrupted run, checkpoints are atomic and checked."""

import dataclasses
import json

import pytest
import torch

from minimagen import checkpoint as ckpt
from minimagen.cascade import SuperResolutionPairs, SuperResolutionTrainer
from minimagen.data import Shapes
from minimagen.schedules import NoiseSchedule
from minimagen.train import TrainConfig, Trainer, list_checkpoints
from minimagen.unet import UNet, UNetConfig

from fakes import FakeTextEncoder


def tiny_unet(text_dim=None) -> UNet:
    return UNet(
        UNetConfig(
            image_size=16,
            channels=16,
            channel_mults=(1, 2),
            blocks_per_level=(1, 1),
            self_attention_levels=(False, True),
            cross_attention_levels=(False, text_dim is not None),
            text_dim=text_dim,
            num_heads=2,
        )
    )


def make_trainer(out_dir, steps, text=False, parallel=None, **overrides) -> Trainer:
    torch.manual_seed(0)  # model init only; the run's own draws come from TrainConfig.seed
    config = TrainConfig(
        steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=3, seed=7, **overrides
    )
    encoder = FakeTextEncoder() if text else None
    model = tiny_unet(encoder.dim if text else None)
    data = Shapes(size=16, length=64, seed=3, max_objects=1, textures=("plain",))
    return Trainer(model, data, NoiseSchedule.linear(100), config, out_dir, text_encoder=encoder, parallel=parallel)


def sr_trainer(out_dir, steps, **overrides) -> SuperResolutionTrainer:
    """A tiny 8 -> 32 px SR stage on 16 px crops (``overrides``: TrainConfig fields)."""
    torch.manual_seed(0)
    encoder = FakeTextEncoder()
    model = UNet(UNetConfig(image_size=16, channels=16, channel_mults=(1, 2), blocks_per_level=(1, 1),
                            self_attention_levels=(False, False), cross_attention_levels=(False, True),
                            text_dim=encoder.dim, num_heads=2, lowres_channels=3, aug_level_conditioning=True))
    pairs = SuperResolutionPairs(low_size=8, high_size=32, crop=16, length=64, seed=1, max_objects=1)
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=2,
                         max_aug_level=50, seed=3, **overrides)
    return SuperResolutionTrainer(model, pairs, NoiseSchedule.linear(100), config, out_dir, text_encoder=encoder)


@pytest.mark.parametrize("text", [False, True])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, text):
    full = make_trainer(tmp_path / "full", steps=6, text=text)
    full.fit(progress=False)

    first = make_trainer(tmp_path / "split", steps=3, text=text)
    first.fit(progress=False)
    second = make_trainer(tmp_path / "split", steps=6, text=text)
    assert second.resume() is True and second.step == 3
    second.fit(progress=False)

    assert second.history == full.history  # bit for bit
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.state_dict().values(), second.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_without_checkpoint_returns_false(tmp_path):
    assert make_trainer(tmp_path, steps=2).resume() is False


def test_loss_falls_and_ema_lags(tmp_path):
    trainer = make_trainer(tmp_path, steps=40)
    history = trainer.fit(progress=False)
    first = sum(loss for _, loss in history[:5]) / 5
    last = sum(loss for _, loss in history[-5:]) / 5
    assert last < 0.7 * first
    moved = [not torch.equal(e, m) for e, m in zip(trainer.ema.parameters(), trainer.model.parameters())]
    assert any(moved)


def test_old_checkpoints_are_pruned(tmp_path):
    trainer = make_trainer(tmp_path, steps=9, keep_checkpoints=2)
    trainer.fit(progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006.safetensors", "step_00000009.safetensors"]


def test_caption_dropout_rate(tmp_path):
    trainer = make_trainer(tmp_path, steps=1, text=True, text_drop_prob=0.25)
    seen = []
    original = trainer.model.forward

    def spy(x_t, t, text=None, text_mask=None, **kw):
        seen.append(kw["text_drop"].clone())
        return original(x_t, t, text, text_mask, **kw)

    trainer.model.forward = spy
    images = torch.zeros(400, 3, 16, 16)
    trainer.loss_on(images, ["a small red plain circle on the left"] * 400)
    rate = torch.cat(seen).float().mean().item()
    assert 0.19 < rate < 0.31  # 0.25 +- 3 standard errors of a Bernoulli(0.25) mean over 400


def test_a_killed_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=3)
    trainer.fit(progress=False)
    good = list_checkpoints(tmp_path)
    trainer.step += 1

    def dies_midway(fd):
        raise KeyboardInterrupt  # the process is killed after writing the temp file, before the rename

    monkeypatch.setattr(ckpt.os, "fsync", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert list_checkpoints(tmp_path) == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert make_trainer(tmp_path, steps=3).resume() is True


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, steps=3)
    trainer.fit(progress=False)
    path = list_checkpoints(tmp_path)[-1]
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(ValueError, match="corrupt"):
        make_trainer(tmp_path, steps=3).resume()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    make_trainer(tmp_path, steps=3).fit(progress=False)
    other = make_trainer(tmp_path / "other", steps=3)
    other_config = dataclasses.replace(other.model.config, channels=8)
    other.model = UNet(other_config)
    with pytest.raises(ValueError, match="different model config"):
        other.resume(list_checkpoints(tmp_path)[-1])


def test_weights_file_round_trip_and_errors(tmp_path):
    model = tiny_unet(text_dim=8)
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(model, path, model.config.to_dict(), card={"steps": 0})
    state, header = ckpt.read_weights(path)
    assert header["config"] == json.loads(json.dumps(model.config.to_dict()))  # tuples come back as lists
    assert (tmp_path / "w.json").is_file()
    fresh = tiny_unet(text_dim=8)
    ckpt.load_state_strict(fresh, state, path)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a.half().float(), b)  # fp16 on disk
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt.load_state_strict(tiny_unet(text_dim=None), state, path)
    with pytest.raises(ValueError, match="not a minimagen training file"):
        ckpt.read_safetensors(path, "training")
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.read_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        ckpt.read_weights(tmp_path / "junk.safetensors")


def test_train_config_validation():
    with pytest.raises(ValueError, match="text_drop_prob"):
        TrainConfig(text_drop_prob=1.5)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(steps=10, lr_decay_steps=11)


def test_learning_rate_warms_up_holds_then_anneals_to_zero(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, lr_decay_steps=4)  # lr 1e-3, 2 warm-up steps
    rates = [trainer._learning_rate(step) for step in range(10)]
    expected = [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert rates == pytest.approx(expected)
    trainer.fit(progress=False)  # the optimizer really ran at those rates
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert make_trainer(tmp_path / "constant", steps=10)._learning_rate(9) == pytest.approx(1e-3)


@pytest.mark.parametrize("text", [False, True])
def test_periodic_sample_grids(tmp_path, text):
    trainer = make_trainer(tmp_path, steps=4, text=text, sample_every=2)
    trainer.fit(progress=False)
    grids = sorted((tmp_path / "samples").glob("step_*.png"))
    assert [p.name for p in grids] == ["step_00000002.png", "step_00000004.png"]
    assert len((tmp_path / "samples" / "prompts.txt").read_text().splitlines()) == len(trainer.sample_prompts)
    images = trainer.sample(steps=3)
    assert images.shape == (len(trainer.sample_prompts), 3, 16, 16)
    torch.testing.assert_close(images, trainer.sample(steps=3))  # seeded: the same grid every time


def test_super_resolution_stage_trains_resumes_and_samples(tmp_path):

    full = sr_trainer(tmp_path / "full", 4)
    full.fit(progress=False)
    split = sr_trainer(tmp_path / "split", 2)
    split.fit(progress=False)
    resumed = sr_trainer(tmp_path / "split", 4)
    assert resumed.resume()
    resumed.fit(progress=False)
    assert resumed.history == full.history
    assert full.sample(steps=2).shape == (len(full.sample_prompts), 3, 16, 16)


def test_render_workers_do_not_change_the_run(tmp_path):
    serial = make_trainer(tmp_path / "serial", steps=3)
    serial.fit(progress=False)
    torch.manual_seed(0)
    threaded = Trainer(tiny_unet(), serial.dataset, NoiseSchedule.linear(100), serial.config, tmp_path / "threads",
                       workers=3)
    threaded.fit(progress=False)
    assert threaded.history == serial.history
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        Trainer(tiny_unet(), serial.dataset, NoiseSchedule.linear(100), serial.config, tmp_path / "x", workers=-1)


def test_time_limit_stops_with_a_checkpoint_and_the_run_continues(tmp_path, capsys):
    trainer = make_trainer(tmp_path / "run", steps=50)
    trainer.fit(progress=False, time_limit=1e-9)  # stops after the first step
    assert trainer.step == 1 and "time limit" in capsys.readouterr().out
    assert list_checkpoints(tmp_path / "run")[-1].name == "step_00000001.safetensors"
    again = make_trainer(tmp_path / "run", steps=50)
    assert again.resume() and again.step == 1
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        again.fit(progress=False, time_limit=0)


def test_a_checkpoint_from_before_a_config_field_existed_still_resumes(tmp_path):
    trainer = make_trainer(tmp_path / "old", steps=3)
    trainer.fit(progress=False)
    path = list_checkpoints(tmp_path / "old")[-1]
    tensors, meta = ckpt.read_safetensors(path, "training")
    del meta["model_config"]["prediction"]  # as written before UNetConfig.prediction was added
    header = {k: json.dumps(v) for k, v in meta.items()}
    header[ckpt.FORMAT_KEY] = "training"
    ckpt.atomic_save_safetensors(tensors, path, header)
    assert make_trainer(tmp_path / "old", steps=6).resume()


def test_a_v_predicting_sr_stage_trains_and_samples(tmp_path):

    torch.manual_seed(0)
    encoder = FakeTextEncoder()
    model = UNet(UNetConfig(image_size=16, channels=16, channel_mults=(1, 2), blocks_per_level=(1, 1),
                            self_attention_levels=(False, False), cross_attention_levels=(False, True),
                            text_dim=encoder.dim, num_heads=2, lowres_channels=3, aug_level_conditioning=True,
                            prediction="v"))
    pairs = SuperResolutionPairs(low_size=8, high_size=32, crop=16, length=64, seed=1, max_objects=1)
    config = TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=2, log_every=10, checkpoint_every=0,
                         max_aug_level=50, seed=3)
    trainer = SuperResolutionTrainer(model, pairs, NoiseSchedule.linear(100), config, tmp_path, text_encoder=encoder)
    history = trainer.fit(progress=False)
    assert history[-1][1] < history[0][1]
    x = trainer.sample(steps=2)
    assert x.shape == (len(trainer.sample_prompts), 3, 16, 16) and torch.isfinite(x).all()


_PAUSED_RUN = """
import json, sys, time
sys.path[:0] = sys.argv[1:3]
from test_train import make_trainer
trainer = make_trainer(sys.argv[3], steps=int(sys.argv[4]))
print("training", flush=True)
began = time.perf_counter()
trainer.fit(progress=False)
print(json.dumps({"step": trainer.step, "wall_time": trainer.wall_time, "elapsed": time.perf_counter() - began}))
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTSTP"), reason="needs POSIX job-control signals")
def test_a_run_paused_with_sigtstp_does_not_count_the_pause(tmp_path):
    """kill -TSTP pauses a background run (kill -CONT resumes it): its card's wall time counts the training,
    not the pause. The run is a child process, paused from here for 3 s soon after it starts training."""
    import os
    import pathlib
    import signal
    import subprocess
    import sys
    import time

    tests = pathlib.Path(__file__).parent
    child = subprocess.Popen([sys.executable, "-c", _PAUSED_RUN, str(tests), str(tests.parent), str(tmp_path), "300"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "training"
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGTSTP)
    time.sleep(3)
    os.kill(child.pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    if result["elapsed"] < 3:
        pytest.skip("the run ended before the pause began")
    assert result["step"] == 300 and result["wall_time"] < result["elapsed"] - 2.5


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTSTP"), reason="needs POSIX job-control signals")
def test_stop_watch_takes_sigtstp_only_while_it_runs():
    import signal

    before = signal.getsignal(signal.SIGTSTP)
    with ckpt.StopWatch() as watch:
        assert signal.getsignal(signal.SIGTSTP) == watch._stop
    assert signal.getsignal(signal.SIGTSTP) == before


def test_stop_watch_without_pauses_is_wall_time():
    import time

    with ckpt.StopWatch() as watch:
        time.sleep(0.05)
    assert 0.05 <= watch.elapsed() < 1 and watch.paused == 0
