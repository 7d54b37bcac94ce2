"""The augmentation sweep: every kind of input at every level, seeded, with standard errors; CSV round trip."""

import pytest
import torch

from minimagen import augmentation
from minimagen.cascade import Imagen, Stage, SuperResolutionPairs, upsample
from minimagen.data import BACKGROUND, HELD_OUT_SEED
from minimagen.metrics import downsample_error
from minimagen.texture import TextureProbe

from fakes import FakeTextEncoder


@pytest.fixture
def imagen(tiny_cascade_unet):
    torch.manual_seed(0)
    spec = {"kind": "cosine", "T": 20, "max_beta": 0.2}
    return Imagen(FakeTextEncoder(), [Stage("base16", tiny_cascade_unet(16, False, 8), spec, 16),
                                      Stage("sr32", tiny_cascade_unet(32, True, 8), spec, 32)])


def test_sweep_rows_cover_kinds_and_levels_and_are_seeded(imagen, tmp_path):
    kw = dict(levels=(0, 10), n=3, steps=2, batch_size=2, base_steps=2, progress=False)
    rows = augmentation.augmentation_sweep(imagen, "sr32", **kw)
    assert [(r["kind"], r["level"]) for r in rows] == [(k, s) for k in augmentation.KINDS for s in (0, 10)]
    by = {(r["kind"], r["level"]): r for r in rows}
    assert "kept" not in by["clean", 0] and "kept" in by["grain", 0] and "kept" in by["blotches", 10]
    assert "rmse_to_real" in by["clean", 0] and "rmse_to_real" not in by["generated", 0]
    assert all(r["n"] == 3 and r["downsample_error_se"] >= 0 for r in rows)
    assert rows == augmentation.augmentation_sweep(imagen, "sr32", **kw)  # seeded
    back = augmentation.read_sweep(augmentation.write_sweep(rows, tmp_path / "s.csv", comment="cmd\nmore"))
    assert [r.keys() for r in back] == [r.keys() for r in rows]
    for a, b in zip(rows, back):
        for k, v in a.items():
            assert b[k] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v)
    assert (tmp_path / "s.csv").read_text().startswith("# cmd\n# more\n")


class Bicubic(Imagen):
    """A cascade whose SR stage is bicubic upsampling: it keeps every defect and draws no detail."""

    def super_resolve(self, lowres, prompts, *, stage, **kwargs):
        return upsample(lowres, self.stage(stage).size)


def test_kept_and_rmse_measure_what_they_say_on_a_stage_that_only_upsamples(imagen):
    bicubic = Bicubic(imagen.text_encoder, imagen.stages)
    rows = augmentation.augmentation_sweep(bicubic, "sr32", levels=(0,), kinds=("clean", "grain", "blotches"), n=4,
                                           batch_size=4, progress=False)
    by = {r["kind"]: r for r in rows}
    # upsampling then area-downsampling gives a smooth input back nearly exactly, defect included: kept ~ 1;
    # pixel-scale grain loses some of itself to bicubic's smoothing
    assert by["blotches"]["kept"] == pytest.approx(1.0, abs=0.05)
    assert 0.6 < by["grain"]["kept"] < 0.95
    pairs = SuperResolutionPairs(16, 32, length=4, seed=HELD_OUT_SEED)
    real = torch.stack([pairs[i][0] for i in range(4)])
    clean = torch.stack([pairs[i][1] for i in range(4)])
    rmse = (upsample(clean, 32) - real).square().flatten(1).mean(1).sqrt().mean().item()
    assert by["clean"]["rmse_to_real"] == pytest.approx(rmse, rel=1e-5)
    own = downsample_error(upsample(clean, 32), clean).mean().item()
    assert by["clean"]["downsample_error"] == pytest.approx(own, rel=1e-5)


def test_flawed_inputs_differ_from_clean_as_described():
    clean = torch.full((2, 3, 16, 16), 2 * BACKGROUND - 1)  # flat background
    clean[:, :, 4:8, 4:8] = 0.5  # an object
    made = augmentation.flawed_inputs(clean, augmentation.KINDS, seed=0)
    assert set(made) == {"clean", "grain", "blotches"}  # "generated" needs the cascade
    grain = (made["grain"] - clean).std().item()
    assert 0.1 < grain < 0.2
    object_change = (made["blotches"] - clean)[:, :, 4:8, 4:8].abs().max().item()
    assert object_change == 0  # blotches only on the background


def test_bad_arguments_are_refused_before_sampling(imagen):
    with pytest.raises(ValueError, match="is the base model"):
        augmentation.augmentation_sweep(imagen, "base16", n=1)
    with pytest.raises(ValueError, match="kinds must be one of"):
        augmentation.augmentation_sweep(imagen, "sr32", n=1, kinds=("noise",))
    with pytest.raises(ValueError, match="below the schedule's T = 20"):
        augmentation.augmentation_sweep(imagen, "sr32", n=1, levels=(0, 20))
    with pytest.raises(ValueError, match="multiple of 256"):
        augmentation.augmentation_sweep(imagen, "sr32", n=1, levels=(0,), texture_probe=TextureProbe(width=4))
    with pytest.raises(ValueError, match="must not repeat"):
        augmentation.augmentation_sweep(imagen, "sr32", n=1, levels=(0, 0))
    with pytest.raises(ValueError, match="batch_size"):
        augmentation.augmentation_sweep(imagen, "sr32", n=1, levels=(0,), batch_size=0)
    with pytest.raises(ValueError, match="metric"):
        augmentation.plot_sweep([], "beauty", None)
