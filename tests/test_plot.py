"""Image grids: pixel values map from [-1, 1] to 0..255 and tiles land where they should."""

import numpy as np
import pytest
import torch

from minimagen.plot import image_grid, save_grid, to_uint8


def test_to_uint8_maps_the_range_and_clips():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        to_uint8(torch.zeros(3, 8, 8))


def test_grid_layout(tmp_path):
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 1.0, -1.0)])
    grid = np.asarray(image_grid(images, nrow=2, pad=1))
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 255).all() and (grid[6:10, 1:5] == 0).all()
    assert save_grid(images, tmp_path / "a" / "g.png").is_file()


def test_a_single_image_is_saved_without_a_border(tmp_path):
    from PIL import Image

    image = torch.rand(1, 3, 12, 10) * 2 - 1
    path = save_grid(image, tmp_path / "one.png")
    saved = np.asarray(Image.open(path))
    assert saved.shape == (12, 10, 3)
    np.testing.assert_array_equal(saved, to_uint8(image)[0].numpy())
