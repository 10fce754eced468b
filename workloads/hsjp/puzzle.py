"""The jigsaw puzzle itself (paper §3.1, Fig. 1): split a crop into N×N patches, shuffle them with
the Knuth–Durstenfeld (Fisher–Yates) algorithm, compose the shuffled image, and undo it.

Conventions used by the whole pretext:
- Patches are indexed row-major: patch i sits in grid row i // N, column i % N; i is also the
  channel of the target heatmap (paper §3.1).
- A permutation `perm` [N²] says which ORIGINAL patch lands at each grid position:
  `composite position k shows original patch perm[k]`. Original patch i therefore sits at grid
  position `inverse_permutation(perm)[i]`, and its target is that cell's centre.
- Coordinates are continuous xy with pixel edges on integers: pixel k covers [k, k+1) and its
  centre is k + 0.5, so the centre of grid cell (m, n) of a side-S image is ((n+½)·P, (m+½)·P),
  the paper's ((2m+1)·224/(2N), ...) of §3.2.
- When N does not divide the input size, the patch side is P = ceil(input/N) (paper §3.1) and the
  puzzle is made at the padded side S = N·P (`padded_size`): the person crop is warped directly to
  S×S (the same box, a slightly finer sampling), split exactly, and the shuffled composite is mapped
  back to input×input by the spatial transform of `augment.py` (a resize by input/S when there is no
  augmentation). So every patch is whole, equal and filled with image content: zero-padding the crop
  instead would leave black bands that give away which patches belong to the border.

All functions are pure and work on numpy arrays of shape [S, S, C] (or [S, S]).
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def padded_size(input_size: int, n: int) -> int:
    """Side S = N·ceil(input/N) of the square on which the puzzle is made (= input when N divides it)."""
    if n < 1 or input_size < n:
        raise ValueError(f"padded_size: need 1 <= n <= input_size, got n={n}, input_size={input_size}")
    return n * math.ceil(input_size / n)


def fisher_yates(num: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(num) by Knuth–Durstenfeld (paper §3.1, refs [13, 23]).

    For i = num-1 … 1 swap element i with a uniformly chosen j ∈ [0, i]. Returns int64 [num].
    """
    if num < 0:
        raise ValueError(f"fisher_yates: num must be >= 0, got {num}")
    perm = np.arange(num, dtype=np.int64)
    for i in range(num - 1, 0, -1):
        j = int(rng.integers(0, i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """inv with inv[perm[k]] = k: the grid position of each original patch."""
    perm = np.asarray(perm, dtype=np.int64)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=np.int64)
    return inv


def _check_square(image: np.ndarray, n: int) -> int:
    side = image.shape[0]
    if image.shape[1] != side or side % n:
        raise ValueError(
            f"puzzle: expected a square image whose side is a multiple of n={n} "
            f"(make it with padded_size), got shape {image.shape}"
        )
    return side // n


def split_patches(image: np.ndarray, n: int) -> np.ndarray:
    """[S, S, ...] → [N², P, P, ...] patches in row-major order (S = N·P)."""
    p = _check_square(image, n)
    rest = image.shape[2:]
    grid = image.reshape(n, p, n, p, *rest).swapaxes(1, 2)  # [N, N, P, P, ...]
    return grid.reshape(n * n, p, p, *rest)


def compose_patches(patches: np.ndarray, n: int) -> np.ndarray:
    """[N², P, P, ...] (row-major) → [S, S, ...]; the inverse of `split_patches`."""
    if patches.shape[0] != n * n or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"compose_patches: expected [{n * n}, P, P, ...] patches, got shape {patches.shape}")
    p = patches.shape[1]
    rest = patches.shape[3:]
    grid = patches.reshape(n, n, p, p, *rest).swapaxes(1, 2)  # [N, P, N, P, ...]
    return grid.reshape(n * p, n * p, *rest)


def shuffle_image(image: np.ndarray, perm: np.ndarray, n: int) -> np.ndarray:
    """The composite: grid position k shows original patch perm[k] (paper Fig. 1b)."""
    _check_perm(perm, n)
    return compose_patches(split_patches(image, n)[np.asarray(perm)], n)


def grid_centers_xy(n: int, patch_px: float) -> np.ndarray:
    """[N², 2] xy centres of the grid cells, row-major, continuous px: ((col+½)·P, (row+½)·P)."""
    idx = np.arange(n * n)
    return np.stack([(idx % n + 0.5) * patch_px, (idx // n + 0.5) * patch_px], axis=1).astype(np.float64)


def shuffled_centers_xy(perm: np.ndarray, n: int, patch_px: float) -> np.ndarray:
    """[N², 2] xy: row i = centre of the cell where ORIGINAL patch i lies in the composite (paper p_i)."""
    _check_perm(perm, n)
    return grid_centers_xy(n, patch_px)[inverse_permutation(perm)]


def _check_perm(perm: np.ndarray, n: int) -> None:
    perm = np.asarray(perm)
    if perm.shape != (n * n,) or not np.array_equal(np.sort(perm), np.arange(n * n)):
        raise ValueError(f"puzzle: perm must be a permutation of range({n * n}), got {perm.tolist()}")
