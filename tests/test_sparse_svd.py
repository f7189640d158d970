"""The collaborative SVD's fast path against its reference: the tiled, threaded products and the
SVD built on them equal scipy's products and scikit-learn's `randomized_svd` bit for bit, for any
tile size and number of threads."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd as reference_svd

from genrec.sid.sparse_svd import TiledMatrix, randomized_svd


def skewed_matrix(seed: int, rows: int, columns: int, entries: int) -> sp.csr_matrix:
    """A few long rows and columns, as popular items give, and some empty ones."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, columns + 1)
    r = rng.choice(rows, entries, p=np.resize(weights, rows) / np.resize(weights, rows).sum())
    c = rng.choice(columns, entries, p=weights / weights.sum())
    matrix = sp.csr_matrix((rng.random(entries) + 0.1, (r, c)), shape=(rows, columns))
    matrix.sum_duplicates()
    return matrix


@pytest.mark.parametrize("tile", [1, 37, 256, 100_000])
@pytest.mark.parametrize("threads", [1, 3])
def test_tiled_products_equal_scipys(tile: int, threads: int) -> None:
    matrix = skewed_matrix(tile, 700, 500, 20_000)
    dense_right, dense_left = (np.random.default_rng(1).standard_normal(shape) for shape in ((500, 9), (700, 9)))
    expected_right, expected_left = matrix @ dense_right, matrix.T @ dense_left
    tiled = TiledMatrix.adopt(matrix.copy(), tile)
    assert np.array_equal(tiled.matmul(dense_right, threads), expected_right)
    assert np.array_equal(tiled.rmatmul(dense_left, threads), expected_left)
    # F-ordered input (what the LU normaliser returns) reads the same
    assert np.array_equal(tiled.matmul(np.asfortranarray(dense_right), threads), expected_right)


@pytest.mark.parametrize(("rows", "columns", "tile", "iterations"),
                         [(900, 900, 128, 7), (900, 600, 1000, 3), (400, 400, 50, 2)])
def test_randomized_svd_equals_scikit_learns(rows: int, columns: int, tile: int, iterations: int) -> None:
    matrix = skewed_matrix(rows + tile, rows, columns, 15_000)
    u, s, _ = reference_svd(matrix, n_components=16, n_iter=iterations, random_state=7)
    tiled_u, tiled_s = randomized_svd(matrix.copy(), 16, iterations, 7, threads=2, tile=tile)
    assert np.array_equal(tiled_u, u) and np.array_equal(tiled_s, s)


def test_adopt_takes_over_the_buffers_and_wants_sorted_indices() -> None:
    matrix = skewed_matrix(3, 50, 50, 400)
    data = matrix.data
    tiled = TiledMatrix.adopt(matrix, 16)
    assert tiled.data is data and matrix.nnz == 0  # no copy of the largest matrix
    unsorted = sp.csr_matrix((np.ones(2), np.array([3, 1]), np.array([0, 2, 2, 2, 2])), shape=(4, 4))
    unsorted.has_sorted_indices = False
    with pytest.raises(ValueError, match="sorted indices"):
        TiledMatrix.adopt(unsorted)
    with pytest.raises(ValueError, match="at least as many rows"):
        randomized_svd(skewed_matrix(4, 10, 20, 50), 3, 2, 0, threads=1)
