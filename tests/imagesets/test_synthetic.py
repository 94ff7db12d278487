"""imagesets.synthetic: torch-free, the same pixels training has always seen, and the placed variant's
boxes (inside the image, at most a quarter of it, and nothing drawn outside them)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagesets import synthetic


def test_importing_the_renderer_does_not_import_torch():
    code = "import imagesets.synthetic, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_render_is_a_pure_function_with_labels_cycling_through_the_classes():
    a, label = synthetic.render(3, "train", 17, 16)
    b, again = synthetic.render(3, "train", 17, 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert label == again == 17 % len(synthetic.CLASSES)
    assert not np.array_equal(a, synthetic.render(3, "val", 17, 16)[0])
    assert synthetic.CLASS_IDS == tuple(c for c, _ in synthetic.CLASSES) and synthetic.CLASS_IDS[0] == "disc"
    with pytest.raises(ValueError, match="split must be one of"):
        synthetic.render(0, "test", 0, 16)


@pytest.mark.parametrize("size", [8, 16, 37, 64])
def test_placed_boxes_lie_inside_cover_at_most_a_quarter_and_bound_every_drawn_pixel(size):
    for index in range(60):  # six images of every class
        image, label, (x0, y0, x1, y1) = synthetic.render_placed(1, "train", index, size, noise=0)
        assert label == index % len(synthetic.CLASSES)
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (index, (x0, y0, x1, y1))
        assert (x1 - x0) * (y1 - y0) <= size * size / 4, (index, (x0, y0, x1, y1))
        outside = np.ones((size, size), dtype=bool)
        outside[y0:y1, x0:x1] = False
        background = image[outside][0]
        assert (image[outside] == background).all(), f"image {index}: drawn pixels outside its box"
        drawn = (image != background).any(axis=2)
        # the box is tight: its first and last rows and columns each hold a drawn pixel
        assert drawn[y0].any() and drawn[y1 - 1].any() and drawn[:, x0].any() and drawn[:, x1 - 1].any()


def test_placed_objects_move_over_the_whole_image_and_textures_stay_in_their_box():
    boxes = [synthetic.render_placed(0, "val", i, 32, noise=0)[2] for i in range(200)]
    centres = np.array([((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes])
    assert centres.min() < 10 and centres.max() > 22  # near both edges, in both axes
    assert (centres[:, 0] < 16).mean() == pytest.approx(0.5, abs=0.15)
    _, label, (x0, y0, x1, y1) = synthetic.render_placed(0, "val", synthetic.SHAPES, 32, noise=0)
    assert synthetic.CLASS_IDS[label] == "hstripes"
    assert (x1 - x0) * (y1 - y0) < 32 * 32  # a texture no longer fills the frame


def test_placed_yields_pil_images_labels_and_boxes_and_noise_only_adds_noise():
    items = list(synthetic.placed(2, "train", 24, 12))
    assert len(items) == 12 and all(isinstance(im, Image.Image) and im.size == (24, 24) for im, _, _ in items)
    assert [label for _, label, _ in items] == [i % 10 for i in range(12)]
    noisy, _, box = synthetic.render_placed(2, "train", 5, 24)
    clean, _, same_box = synthetic.render_placed(2, "train", 5, 24, noise=0)
    assert box == same_box and np.abs(noisy.astype(int) - clean.astype(int)).mean() < 10
    with pytest.raises(ValueError, match="image size must be >= 8"):
        synthetic.render_placed(0, "train", 0, 6)
