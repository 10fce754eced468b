"""Split / Fisher–Yates / compose / unshuffle (paper §3.1): exact inverses and a uniform shuffle."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.hsjp.puzzle import (
    compose_patches,
    fisher_yates,
    grid_centers_xy,
    inverse_permutation,
    padded_size,
    shuffle_image,
    shuffled_centers_xy,
    split_patches,
)


def unshuffle_image(composite: np.ndarray, perm: np.ndarray, n: int) -> np.ndarray:
    """Every patch of `composite` put back where `perm` took it from: the inverse of `shuffle_image`."""
    return compose_patches(split_patches(composite, n)[inverse_permutation(perm)], n)


def _image(side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize("side,n", [(24, 2), (24, 3), (48, 6), (16, 4), (20, 1)])
def test_unshuffle_restores_the_crop_exactly(side, n):
    image = _image(side)
    perm = fisher_yates(n * n, np.random.default_rng(3))
    composite = shuffle_image(image, perm, n)
    assert composite.shape == image.shape
    np.testing.assert_array_equal(unshuffle_image(composite, perm, n), image)
    np.testing.assert_array_equal(compose_patches(split_patches(image, n), n), image)


def test_composite_cell_shows_the_permuted_patch():
    n, p = 3, 5
    image = _image(n * p, seed=1)
    perm = np.array([8, 0, 4, 2, 7, 1, 3, 6, 5])
    composite = shuffle_image(image, perm, n)
    for k in range(n * n):
        r, c = divmod(k, n)
        src_r, src_c = divmod(int(perm[k]), n)
        np.testing.assert_array_equal(
            composite[r * p : (r + 1) * p, c * p : (c + 1) * p],
            image[src_r * p : (src_r + 1) * p, src_c * p : (src_c + 1) * p],
        )


@pytest.mark.parametrize("input_size,n", [(224, 6), (224, 5), (224, 9), (32, 3), (40, 6)])
def test_padded_size_when_n_does_not_divide(input_size, n):
    side = padded_size(input_size, n)
    assert side % n == 0 and side // n == -(-input_size // n)  # patch side = ceil(input / N) (paper §3.1)
    assert input_size <= side < input_size + n
    # the documented handling: the puzzle is made exactly at the padded side, so it still inverts exactly
    image, perm = _image(side), fisher_yates(n * n, np.random.default_rng(0))
    np.testing.assert_array_equal(unshuffle_image(shuffle_image(image, perm, n), perm, n), image)


def test_split_rejects_a_side_not_divisible_by_n():
    with pytest.raises(ValueError, match="multiple of n=3"):
        split_patches(_image(224), 3)


def test_fisher_yates_is_a_deterministic_permutation():
    for num in (1, 2, 9, 36, 64):
        perm = fisher_yates(num, np.random.default_rng(7))
        assert sorted(perm.tolist()) == list(range(num))
        np.testing.assert_array_equal(perm, fisher_yates(num, np.random.default_rng(7)))
    assert not np.array_equal(
        fisher_yates(36, np.random.default_rng(1)), fisher_yates(36, np.random.default_rng(2))
    )


def test_fisher_yates_positions_are_uniform():
    num, draws = 4, 6000
    rng = np.random.default_rng(0)
    counts = np.zeros((num, num))  # [element, position]
    for _ in range(draws):
        perm = fisher_yates(num, rng)
        counts[perm, np.arange(num)] += 1
    expected = draws / num
    # each cell ~ Binomial(6000, 1/4): sd ≈ 33.5; 5 sd bounds catch the classic off-by-one (j in [0, i))
    assert np.abs(counts - expected).max() < 5 * np.sqrt(draws * 0.25 * 0.75)
    # and all 24 permutations occur about equally often (the off-by-one "Sattolo" bug gives only 6)
    seen = {tuple(fisher_yates(num, rng)) for _ in range(2000)}
    assert len(seen) == 24


def test_shuffled_centres_follow_the_inverse_permutation():
    n, p = 3, 10
    perm = np.array([4, 0, 8, 1, 2, 3, 5, 6, 7])
    centers = shuffled_centers_xy(perm, n, p)
    grid = grid_centers_xy(n, p)
    np.testing.assert_array_equal(grid[0], [5.0, 5.0])  # paper §3.2: ((2m+1)·S/(2N), ...)
    np.testing.assert_array_equal(grid[5], [25.0, 15.0])  # row 1, column 2
    for k in range(n * n):  # original patch perm[k] now lies in cell k
        np.testing.assert_array_equal(centers[perm[k]], grid[k])
    np.testing.assert_array_equal(inverse_permutation(perm)[perm], np.arange(n * n))


def test_bad_permutation_is_rejected():
    with pytest.raises(ValueError, match="permutation of range"):
        shuffle_image(_image(6), np.array([0, 0, 1, 2]), 2)
