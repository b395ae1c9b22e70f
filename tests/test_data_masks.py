"""taudis.data.masks pastes a mask head's output as detectron2 does, so exports and reports show the masks scored."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.layers.mask_ops import paste_masks_in_image

from taudis.data.masks import binary_mask, paste_mask


def test_pasted_masks_are_detectron2s_pixel_for_pixel() -> None:
    rng = np.random.default_rng(0)
    height, width = 48, 64
    for case in range(300):
        probs = rng.random((28, 28)).astype(np.float32)
        if case % 3 == 0:
            probs[:] = rng.uniform(0.6, 1.0)  # a full box: its edges decide the mask
        size = rng.choice([rng.uniform(0.5, 6), rng.uniform(6, 40), rng.uniform(40, 90)])
        # on the image, or across its edge
        x0, y0 = rng.uniform(-size / 2, width - 2), rng.uniform(-size / 2, height - 2)
        box = [x0, y0, x0 + size * rng.uniform(1, 2), y0 + size]
        theirs = paste_masks_in_image(torch.tensor(probs[None]), torch.tensor([box]), (height, width), 0.5)[0].numpy()
        ours = binary_mask(probs, box, height, width)
        on_the_threshold = np.abs(paste_mask(probs, box, height, width) - 0.5) < 1e-4  # float rounding decides
        assert np.array_equal(ours[~on_the_threshold], theirs[~on_the_threshold]), (case, box)


def test_a_pixel_centred_on_the_boxs_edge_is_outside_the_mask() -> None:
    mask = binary_mask(np.full((28, 28), 0.9, np.float32), [10.5, 10.5, 20.5, 20.5], 32, 32)
    ys, xs = np.nonzero(mask)
    assert mask.sum() == 81 and (xs.min(), xs.max(), ys.min(), ys.max()) == (11, 19, 11, 19)
