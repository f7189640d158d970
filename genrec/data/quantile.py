"""Exact quantiles of a float column spread over buckets, without gathering the column.

Radix selection on the bits of the floats: a float64 maps to a 64-bit key whose order is the
floats' order (`sortable_keys`). A pass over the buckets counts the values per 16-bit digit of the
key under a prefix; the digit that holds the wanted rank becomes part of the prefix. Once the values
under a prefix are few (`gather_limit`), one more pass gathers them and sorts them. Memory per pass is
one histogram of 65,536 counts per bucket, or at most `gather_limit` values, whatever the column's
size; a log-normal column of 100M values needs about three passes.

The quantile interpolates linearly between the two order statistics around q x (n - 1), as pandas'
`Series.quantile` does (NaN values are skipped); `tests/test_quantile.py` holds the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS
KEY_BITS = 64
SIGN = np.uint64(1 << 63)
# Values gathered in one pass at most (8 bytes each): about 32 MB.
GATHER_LIMIT = 4_000_000


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 values (NaN dropped): flip every bit of a negative,
    only the sign bit of a positive. -0.0 and 0.0 get neighbouring keys, as their floats are equal."""
    floats = np.asarray(values, dtype=np.float64)
    floats = floats[~np.isnan(floats)]
    bits = floats.view(np.uint64)
    return np.where(bits & SIGN, ~bits, bits | SIGN)


def key_value(key: int) -> float:
    bits = np.uint64(key)
    raw = (bits & ~SIGN) if bits & SIGN else ~bits
    return float(np.array([raw], dtype=np.uint64).view(np.float64)[0])


@dataclass(frozen=True)
class Prefix:
    """The values whose key starts with `value` (its top `bits` bits)."""

    value: int
    bits: int

    def holds(self, keys: np.ndarray) -> np.ndarray:
        if self.bits == 0:
            return np.ones(len(keys), dtype=bool)
        return (keys >> np.uint64(KEY_BITS - self.bits)) == np.uint64(self.value)

    def child(self, digit: int) -> Prefix:
        return Prefix((self.value << DIGIT_BITS) | digit, self.bits + DIGIT_BITS)


ROOT = Prefix(0, 0)


def digit_histogram(keys: np.ndarray, prefix: Prefix) -> np.ndarray:
    """Counts of the next 16-bit digit among the keys under `prefix`."""
    chosen = keys[prefix.holds(keys)]
    shift = np.uint64(KEY_BITS - prefix.bits - DIGIT_BITS)
    digits = ((chosen >> shift) & np.uint64(DIGITS - 1)).astype(np.int64)
    return np.bincount(digits, minlength=DIGITS)


def gather(keys: np.ndarray, prefix: Prefix) -> np.ndarray:
    return keys[prefix.holds(keys)]


# One pass over every bucket: histograms under each prefix asked for ("histogram") or the keys
# under each ("gather"), summed / concatenated over the buckets.
Pass = Callable[[str, Sequence[Prefix]], list[np.ndarray]]


def exact_quantile(n: int, q: float, run_pass: Pass, root_histogram: np.ndarray | None = None,
                   gather_limit: int = GATHER_LIMIT) -> float:
    """The q-quantile of n (non-NaN) values that `run_pass` reaches; `root_histogram` is the first
    digit's histogram when the caller already counted it (in the step that wrote the column)."""
    if n == 0:
        return float("nan")
    # pandas hands np.percentile q x 100, which divides it by 100 again: the same float steps here,
    # then numpy's virtual index, neighbours and linear interpolation (np.lib._function_base_impl).
    fraction = np.float64(q) * 100.0 / 100.0
    virtual = np.float64(n - 1) * fraction
    low_rank = min(int(np.floor(virtual)), n - 1)
    high_rank = min(low_rank + 1, n - 1)
    gamma = virtual - np.float64(low_rank) if virtual < n - 1 else np.float64(0.0)
    ranks = sorted({low_rank, high_rank})
    values = dict(zip(ranks, _select(ranks, run_pass, root_histogram, gather_limit), strict=True))
    return _lerp(np.float64(values[low_rank]), np.float64(values[high_rank]), gamma)


def _lerp(low: np.float64, high: np.float64, gamma: np.float64) -> float:
    with np.errstate(invalid="ignore"):
        difference = high - low
        if gamma >= 0.5:
            return float(high - difference * (1 - gamma))
        return float(low + difference * gamma)


def _select(ranks: list[int], run_pass: Pass, root_histogram: np.ndarray | None,
            gather_limit: int) -> list[float]:
    """The values of the given ranks (0-based, in sorted order)."""
    state = {rank: (ROOT, rank) for rank in ranks}  # rank -> (prefix it lies under, rank within it)
    counts = {ROOT: root_histogram} if root_histogram is not None else {}
    found: dict[int, float] = {}
    while len(found) < len(ranks):
        open_prefixes = sorted({state[r][0] for r in ranks if r not in found},
                               key=lambda p: (p.bits, p.value))
        wanted = [p for p in open_prefixes if p not in counts]
        if wanted:
            counts.update(zip(wanted, run_pass("histogram", wanted), strict=True))
        to_gather: list[Prefix] = []
        for rank in ranks:
            if rank in found:
                continue
            prefix, within = state[rank]
            cumulative = np.cumsum(counts[prefix])
            digit = int(np.searchsorted(cumulative, within, side="right"))
            before = int(cumulative[digit - 1]) if digit else 0
            child = prefix.child(digit)
            state[rank] = (child, within - before)
            held = int(counts[prefix][digit])
            if child.bits == KEY_BITS:
                found[rank] = key_value(child.value)
            elif held <= gather_limit:
                to_gather.append(child)
        to_gather = sorted(set(to_gather), key=lambda p: p.value)
        if to_gather:
            for prefix, keys in zip(to_gather, run_pass("gather", to_gather), strict=True):
                ordered = np.sort(keys)
                for rank in ranks:
                    if rank not in found and state[rank][0] == prefix:
                        found[rank] = key_value(int(ordered[state[rank][1]]))
    return [found[rank] for rank in ranks]


def local_pass(values: np.ndarray) -> Pass:
    """A Pass over one in-memory column (the reference, and tests)."""
    keys = sortable_keys(values)

    def run(kind: str, prefixes: Sequence[Prefix]) -> list[np.ndarray]:
        if kind == "histogram":
            return [digit_histogram(keys, p) for p in prefixes]
        return [gather(keys, p) for p in prefixes]

    return run
