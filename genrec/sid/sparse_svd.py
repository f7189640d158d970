"""Truncated randomised SVD of a large sparse matrix, with products in cache-sized tiles on threads.

`randomized_svd` (scikit-learn's algorithm: Halko et al. 2009, LU-normalised power iterations)
spends its time in sparse x dense products, `A @ Q` and `A.T @ Q`, with Q of items x (rank + 10).
scipy runs each on one thread, reading the rows of Q in the matrix's column order: once Q outgrows
the CPU cache (about 100k items), nearly every read misses it, and the time per stored entry grew
1.7x from 50k to 500k items. Here the matrix is cut into tiles of `TILE_ITEMS` rows by `TILE_ITEMS`
columns, so that a product reads one slice of Q and writes one slice of the result at a time, both
cache-sized; and independent slices of the result are computed on threads (scipy's kernels release
the GIL).

Each entry of a product is accumulated in the same order as scipy accumulates it (columns ascending
within a row for `A @ Q`, rows ascending within a column for `A.T @ Q`), into the result directly,
so the products, and so the SVD, are bit-identical to scikit-learn's `randomized_svd` on the same
matrix (`tests/test_sparse_svd.py` holds them equal).

`TiledMatrix.adopt` takes over the CSR matrix's own buffers and reorders them in place, a block of
rows at a time, so the tiles cost no copy of the largest matrix of the codebook step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp
from scipy import linalg

# The kernels behind scipy's own `csr @ dense` and `csc @ dense`: they add the product into a given
# result (so a tile's share needs no temporary) and release the GIL. Private, so pinned by the test.
from scipy.sparse._sparsetools import csc_matvecs, csr_matvecs
from sklearn.utils.extmath import svd_flip

# Rows (and columns) per tile. The slices of Q and of the result that one tile's product touches
# are TILE_ITEMS x (rank + oversamples) floats each: 16,384 x 74 x 8 bytes = 9.7 MB, so both stay in
# a 32 MB L3 cache together. (At least: see `TiledMatrix.adopt` for the memory bound that widens
# them for very large catalogues.)
TILE_ITEMS = 16_384
# scikit-learn's default oversampling of the random range (kept, so the result is the same).
OVERSAMPLES = 10


@dataclass
class TiledMatrix:
    """A square-or-not CSR matrix whose entries are grouped by (row block, column block): for row
    block r, `offsets[r][c]` is the CSR index pointer (into the shared `data`/`indices`, with global
    column indices) of the tile (r, c)."""

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    offsets: list[np.ndarray]   # per row block: (column blocks, rows in the block + 1)
    tile: int

    @classmethod
    def adopt(cls, matrix: sp.csr_matrix, tile: int = TILE_ITEMS) -> TiledMatrix:
        """Tiles `matrix` in its own buffers (it is left an empty matrix of its shape). Its column
        indices must be sorted within each row, as `ppmi` leaves them, so that a tile keeps each
        row's columns ascending."""
        if not isinstance(matrix, sp.csr_matrix) or not matrix.has_sorted_indices:
            raise ValueError("TiledMatrix.adopt needs a CSR matrix with sorted indices "
                             "(call sort_indices() first)")
        rows, columns = matrix.shape
        # The tiles' row pointers take rows x column blocks entries: never more than the matrix has
        # entries, so a larger or sparser matrix gets wider tiles (less cache locality, bounded memory).
        tile = max(tile, -(-rows * columns // max(matrix.nnz, 1)))
        column_blocks = -(-columns // tile)
        # A narrow key makes numpy's stable argsort a radix sort: linear in the entries.
        key_type = np.int16 if column_blocks < np.iinfo(np.int16).max else np.int32
        data, indices, indptr = matrix.data, matrix.indices, matrix.indptr
        offsets = []
        for first in range(0, rows, tile):
            last = min(first + tile, rows)
            start, end = int(indptr[first]), int(indptr[last])
            block_rows = last - first
            column_block = (indices[start:end] // tile).astype(key_type)
            row = np.repeat(np.arange(block_rows), np.diff(indptr[first:last + 1]))
            order = np.argsort(column_block, kind="stable")  # rows, then columns, kept in order
            data[start:end] = data[start:end][order]
            indices[start:end] = indices[start:end][order]
            per_tile_row = np.bincount(column_block.astype(np.int64) * block_rows + row,
                                       minlength=column_blocks * block_rows)
            pointer = np.zeros(column_blocks * block_rows + 1, dtype=np.int64)
            np.cumsum(per_tile_row, out=pointer[1:])
            pointer += start
            # Tile c's pointer is pointer[c*rows : (c+1)*rows + 1]: consecutive tiles share an end.
            offsets.append(np.lib.stride_tricks.sliding_window_view(pointer, block_rows + 1)[::block_rows]
                           .astype(indices.dtype))
        # The matrix is left empty, not inconsistent: its entries now belong to the tiles.
        matrix.data, matrix.indices = np.empty(0, data.dtype), np.empty(0, indices.dtype)
        matrix.indptr = np.zeros(rows + 1, dtype=indptr.dtype)
        return cls((rows, columns), data, indices, offsets, tile)

    def _blocks(self, size: int) -> list[tuple[int, int]]:
        return [(first, min(first + self.tile, size)) for first in range(0, size, self.tile)]

    def matmul(self, dense: np.ndarray, threads: int) -> np.ndarray:
        """`A @ dense`: a task per row block, adding its tiles' shares column block by column block."""
        dense = np.ascontiguousarray(dense, dtype=np.float64)
        vectors = dense.shape[1]
        result = np.zeros((self.shape[0], vectors))

        def row_block(r: int, first: int, last: int) -> None:
            out = result[first:last].reshape(-1)
            for pointer in self.offsets[r]:
                if pointer[-1] > pointer[0]:
                    csr_matvecs(last - first, self.shape[1], vectors, pointer, self.indices, self.data,
                                dense.reshape(-1), out)

        _run(threads, [partial(row_block, r, a, b) for r, (a, b) in enumerate(self._blocks(self.shape[0]))])
        return result

    def rmatmul(self, dense: np.ndarray, threads: int) -> np.ndarray:
        """`A.T @ dense`: a task per column block of A (a row block of the result), adding the shares
        of its tiles row block by row block. A tile (r, c) read as CSC is the tile of A.T."""
        dense = np.ascontiguousarray(dense, dtype=np.float64)
        vectors = dense.shape[1]
        result = np.zeros((self.shape[1], vectors))
        row_blocks = self._blocks(self.shape[0])

        def column_block(c: int) -> None:
            out = result.reshape(-1)
            for r, (first, last) in enumerate(row_blocks):
                pointer = self.offsets[r][c]
                if pointer[-1] > pointer[0]:
                    csc_matvecs(self.shape[1], last - first, vectors, pointer, self.indices, self.data,
                                dense[first:last].reshape(-1), out)

        _run(threads, [partial(column_block, c) for c in range(len(self._blocks(self.shape[1])))])
        return result


def _run(threads: int, tasks: list[Callable[[], None]]) -> None:
    if threads <= 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(task) for task in tasks]:
            done.result()


def usable_threads(threads: int) -> int:
    """`threads`, or with 0 every CPU this process may run on."""
    return threads if threads > 0 else len(os.sched_getaffinity(0))


def randomized_svd(matrix: sp.csr_matrix, rank: int, iterations: int, seed: int, threads: int,
                   tile: int = TILE_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """U and s of scikit-learn's `randomized_svd(matrix, rank, n_iter=iterations,
    random_state=seed)` (10 oversamples, LU normaliser, signs flipped on U), bit for bit, with the
    products tiled and threaded. `matrix` is spent: its buffers become the tiles."""
    rows, columns = matrix.shape
    if rows < columns:
        raise ValueError("randomized_svd here takes a matrix with at least as many rows as columns "
                         "(scikit-learn would transpose it)")
    tiled = TiledMatrix.adopt(matrix, tile)
    threads = usable_threads(threads)
    random_range = np.random.RandomState(seed).normal(size=(columns, rank + OVERSAMPLES))
    # As scikit-learn: LU normalisation after more than two power iterations, none otherwise.
    normalise = (partial(linalg.lu, permute_l=True, check_finite=False) if iterations > 2
                 else (lambda x: (x, None)))
    for _ in range(iterations):
        random_range, _ = normalise(tiled.matmul(random_range, threads))
        random_range, _ = normalise(tiled.rmatmul(random_range, threads))
    basis, _ = linalg.qr(tiled.matmul(random_range, threads), mode="economic", check_finite=False)
    projected = tiled.rmatmul(basis, threads).T
    small_u, singular, small_vt = linalg.svd(projected, full_matrices=False, lapack_driver="gesdd")
    del projected
    u, _ = svd_flip(basis @ small_u, small_vt)
    return u[:, :rank], singular[:rank]
