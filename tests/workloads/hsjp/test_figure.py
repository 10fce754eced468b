"""write_puzzle_figure writes a valid PNG of the split / shuffled / target panels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from workloads.hsjp.figure import write_puzzle_figure


def _png_ok(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
    return image


def test_write_puzzle_figure_writes_a_png(tmp_path):
    src = tmp_path / "person.png"
    yy, xx = np.mgrid[0:40, 0:60]
    cv2.imwrite(str(src), np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=2).astype(np.uint8))
    out = write_puzzle_figure(src, 3, tmp_path / "sub" / "puzzle.png", seed=1, input_size=32)
    assert out == tmp_path / "sub" / "puzzle.png"
    image = _png_ok(out)
    assert image.std() > 10  # something was drawn


@pytest.mark.realdata
def test_write_puzzle_figure_on_a_coco_image(coco_mini, tmp_path):
    image_path = sorted((coco_mini / "val2017").glob("*.jpg"))[0]
    _png_ok(write_puzzle_figure(image_path, 4, tmp_path / "puzzle.png", seed=0, input_size=96))
