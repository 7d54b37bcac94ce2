"""Tests for minimagen.data.OpenMoji: captions from Unicode names, the fixed split, rendering at any size."""

import unicodedata

import pytest
import torch
import torch.nn.functional as F

from minimagen.data import OpenMoji, openmoji_caption, openmoji_held_out


def test_captions_are_the_lower_case_unicode_names_of_the_sequence():
    assert openmoji_caption((0x1F366,)) == "soft ice cream"
    # joiners and presentation selectors are silent; parts are joined in order; skin tones read as words
    assert openmoji_caption((0x1F469, 0x1F3FD, 0x200D, 0x1F52C)) == "woman, medium skin tone, microscope"
    assert openmoji_caption((0x2764, 0xFE0F)) == "heavy black heart"
    # flags: two regional indicators, or the black flag with tag letters (a subdivision)
    assert openmoji_caption((0x1F1EB, 0x1F1F7)) == "flag: fr"
    assert openmoji_caption((0x1F3F4, 0xE0067, 0xE0062, 0xE0073, 0xE0063, 0xE0074, 0xE007F)) == "flag: gbsct"
    assert openmoji_caption((0x1F1E8,)) == "regional indicator symbol letter c"
    # OpenMoji's own extras live in the private use area: no name, left out
    assert openmoji_caption((0xE000,)) is None


def test_split_is_fixed_disjoint_and_keeps_skin_tone_variants_together():
    train, held_out, everything = (OpenMoji(16, split=s) for s in ("train", "held_out", "all"))
    assert len(train) + len(held_out) == len(everything)
    if unicodedata.unidata_version == "14.0.0":  # Python 3.11; a newer Python names more drawings
        assert len(everything) == 4024
    assert not set(train.files) & set(held_out.files)
    assert 0.07 < len(held_out) / len(everything) < 0.13
    assert held_out.files == OpenMoji(16, split="held_out").files  # fixed: a hash, no random state
    # the five skin tones of "woman, microscope" share the neutral drawing's side
    sides = {openmoji_held_out((0x1F469, tone, 0x200D, 0x1F52C)) for tone in range(0x1F3FB, 0x1F400)}
    assert sides == {openmoji_held_out((0x1F469, 0x200D, 0x1F52C))}
    neutral = OpenMoji(16, split="all", skin_tones=False)
    assert len(neutral) < len(everything) and not any("skin tone" in c for c in neutral.captions)


def test_drawings_render_at_any_size_and_agree_across_sizes():
    small, large = OpenMoji(64, split="held_out"), OpenMoji(256, split="held_out")
    i = small.captions.index(next(c for c in small.captions if not c.startswith("flag")))
    (x64, caption), (x256, caption256) = small[i], large[i]
    assert caption == caption256 and x64.shape == (3, 64, 64) and x256.shape == (3, 256, 256)
    assert x64.min() >= -1 and x64.max() <= 1 and x64.dtype == torch.float32
    assert torch.equal(x64[:, 0, 0], torch.ones(3))  # the white background in the corner
    assert (F.avg_pool2d(x256[None], 4)[0] - x64).abs().mean() < 0.03  # the 256 px view averaged down ~ 64 px
    assert torch.equal(small[i][0], x64)  # the second read comes from the kept render, unchanged
    dark = OpenMoji(16, split="held_out", background="#000000")[i][0]
    assert torch.equal(dark[:, 0, 0], -torch.ones(3))


def test_bad_arguments_and_missing_packages_are_explained(without_module):
    with pytest.raises(ValueError, match="split"):
        OpenMoji(64, split="test")
    with pytest.raises(ValueError, match="background"):
        OpenMoji(64, background="not a colour")
    with pytest.raises(ValueError, match="size"):
        OpenMoji(2)
    without_module("resvg_py")
    with pytest.raises(ImportError, match=r"resvg_py is missing.*pip install -e \"\.\[openmoji\]\""):
        OpenMoji(64)
