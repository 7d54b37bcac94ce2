"""The fast path's switches (minimagen.fastpath): each one computes what the plain path computes, within its
precision, and a run that uses them resumes exactly."""

import pytest
import torch

from minimagen import fastpath
from minimagen.train import TrainConfig

from test_train import make_trainer, sr_trainer as make_sr_trainer


def weights(trainer):
    return {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}


def assert_weights_close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst:.2e} > {atol:.0e}"


def one_loss_and_grads(trainer):
    """The loss of the trainer's first batch and the gradients it gives, from a fresh draw state."""
    images, captions, extra = trainer._batch()
    loss = trainer.loss_on(images, captions, extra)
    loss.backward()
    grads = {n: p.grad.detach().clone().contiguous() for n, p in trainer.model.named_parameters()}
    return float(loss.detach()), grads


@pytest.mark.parametrize("switch", [{"channels_last": True}, {"fused_adamw": True},
                                    {"channels_last": True, "fused_adamw": True}])
def test_switches_train_the_same_weights_as_the_plain_path(tmp_path, switch):
    plain = make_trainer(tmp_path / "plain", steps=4, text=True)
    plain.fit(progress=False)
    fast = make_trainer(tmp_path / "fast", steps=4, text=True, **switch)
    fast.fit(progress=False)
    assert len(plain.history) == len(fast.history) == 4
    for (_, a), (_, b) in zip(plain.history, fast.history):
        assert a == pytest.approx(b, rel=1e-4)
    assert_weights_close(weights(plain), weights(fast), atol=1e-5)


def test_channels_last_puts_the_weights_in_nhwc_and_checkpoints_resume(tmp_path):
    fast = make_trainer(tmp_path / "run", steps=3, channels_last=True)
    conv = next(p for p in fast.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast.fit(progress=False)
    again = make_trainer(tmp_path / "run", steps=6, channels_last=True)
    assert again.resume() and again.step == 3
    again.fit(progress=False)
    full = make_trainer(tmp_path / "full", steps=6, channels_last=True)
    full.fit(progress=False)
    assert again.history == full.history


def test_bf16_autocast_gives_the_fp32_loss_and_gradients_within_bf16_precision(tmp_path):
    loss32, grads32 = one_loss_and_grads(make_trainer(tmp_path / "a", steps=1, text=True, precision="fp32"))
    loss16, grads16 = one_loss_and_grads(make_trainer(tmp_path / "b", steps=1, text=True, precision="bf16"))
    assert loss16 == pytest.approx(loss32, rel=0.02)
    # gradient directions agree: cosine similarity of the whole gradient
    g32 = torch.cat([g.flatten() for g in grads32.values()])
    g16 = torch.cat([g.flatten() for g in grads16.values()])
    assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) > 0.99


def test_device_draws_are_reproducible_resume_exactly_and_are_their_own_stream(tmp_path):
    a = make_trainer(tmp_path / "a", steps=6, text=True, draws="device")
    a.fit(progress=False)
    b = make_trainer(tmp_path / "b", steps=6, text=True, draws="device")
    b.fit(progress=False)
    assert a.history == b.history  # same seed, same device: the same run
    assert a.draws is not a.generator and a.draws.device == a.device

    split = make_trainer(tmp_path / "split", steps=3, text=True, draws="device")
    split.fit(progress=False)
    resumed = make_trainer(tmp_path / "split", steps=6, text=True, draws="device")
    assert resumed.resume()
    resumed.fit(progress=False)
    assert resumed.history == a.history  # the device generator's state was in the checkpoint

    host = make_trainer(tmp_path / "host", steps=6, text=True)
    host.fit(progress=False)
    assert host.history != a.history  # another stream of t and eps: not the host run, by design


def test_device_draws_match_the_distributions_of_host_draws(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=1, draws="device")
    n = 20_000
    eps = trainer.randn(n, (1,))
    t = trainer.randint(n, 100)
    u = trainer.rand(n)
    assert eps.device == trainer.device and t.device == trainer.device
    assert abs(float(eps.mean())) < 4 / n**0.5 and abs(float(eps.std()) - 1) < 0.03
    assert int(t.min()) == 0 and int(t.max()) == 99 and abs(float(t.float().mean()) - 49.5) < 1.0
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_sr_stage_with_device_draws_resumes_exactly(tmp_path):
    def sr_trainer(out_dir, steps):
        return make_sr_trainer(out_dir, steps, draws="device", channels_last=True, fused_adamw=True)

    full = sr_trainer(tmp_path / "full", 4)
    full.fit(progress=False)
    split = sr_trainer(tmp_path / "split", 2)
    split.fit(progress=False)
    resumed = sr_trainer(tmp_path / "split", 4)
    assert resumed.resume()
    resumed.fit(progress=False)
    assert resumed.history == full.history


def test_compiled_unet_gives_the_plain_loss_and_gradients(tmp_path):
    torch._dynamo.reset()
    loss, grads = one_loss_and_grads(make_trainer(tmp_path / "a", steps=1, text=True))
    loss_c, grads_c = one_loss_and_grads(make_trainer(tmp_path / "b", steps=1, text=True, compile=True))
    assert loss_c == pytest.approx(loss, rel=1e-4)
    assert_weights_close(grads, grads_c, atol=1e-4)


def test_device_draws_are_not_the_host_stream_replayed(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=1, draws="device")
    host = torch.Generator().manual_seed(7)  # the run's seed: what the batch indices are drawn from
    assert not torch.equal(trainer.randint(64, 1000), torch.randint(1000, (64,), generator=host))


def test_a_resume_with_other_draws_or_on_another_device_is_refused(tmp_path):
    make_trainer(tmp_path / "run", steps=3).fit(progress=False)
    with pytest.raises(ValueError, match="written with draws='host'; resume it with the same draws"):
        make_trainer(tmp_path / "run", steps=6, draws="device").resume()
    make_trainer(tmp_path / "dev", steps=3, draws="device").fit(progress=False)
    with pytest.raises(ValueError, match="written with draws='device'"):
        make_trainer(tmp_path / "dev", steps=6).resume()
    with pytest.raises(ValueError, match="drew on 'NVIDIA H100', this run on 'cpu'"):
        fastpath.check_resume({"draws": "device", "draws_device": "NVIDIA H100"}, "device", torch.device("cpu"), "x")


def test_unknown_draws_is_a_clear_error():
    with pytest.raises(ValueError, match="draws must be one of 'host', 'device'"):
        TrainConfig(draws="gpu")
    with pytest.raises(ValueError, match="draws"):
        fastpath.draw_generator("gpu", 0, torch.device("cpu"), torch.Generator())
