"""sparse: csr / csr-delta / bitmask round trips, the layout choice by size, and hostile parts."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsify import sparse
from sparsify.errors import CorruptArchiveError


@st.composite
def masks(draw):
    """Masks of any shape (empty ones included) with empty rows, full rows and random rows."""
    m, n = draw(st.integers(0, 12)), draw(st.integers(0, 300))
    mask = draw(hnp.arrays(np.bool_, (m, n)))
    if m and draw(st.booleans()):
        mask[draw(st.integers(0, m - 1))] = False
    if m and draw(st.booleans()):
        mask[draw(st.integers(0, m - 1))] = True
    fill = draw(st.sampled_from([None, False, True]))
    if fill is not None:
        mask[:] = fill
    return mask


def reference_layouts(mask: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The three layouts' index parts, built row by row."""
    m, n = mask.shape
    columns = [np.flatnonzero(row) for row in mask]
    nnz = sum(c.size for c in columns)
    indptr = np.concatenate(([0], np.cumsum([c.size for c in columns], dtype=np.int64))).astype(np.int64)
    indices = np.concatenate([*columns, np.zeros(0, np.int64)]).astype(np.int64)
    gaps = np.concatenate([*(np.diff(c, prepend=0) for c in columns), np.zeros(0, np.int64)]).astype(np.int64)
    return {
        "csr": {
            "indptr": indptr.astype(sparse.narrowest_uint(nnz)),
            "indices": indices.astype(sparse.narrowest_uint(max(n - 1, 0))),
        },
        "csr-delta": {
            "indptr": indptr.astype(sparse.narrowest_uint(nnz)),
            "deltas": gaps.astype(sparse.narrowest_uint(int(gaps.max(initial=0)))),
        },
        "bitmask": {"mask": np.packbits(mask.reshape(-1))},
    }


def zlib_size(array: np.ndarray) -> int:
    return len(zlib.compress(array.tobytes(), 6))


SIZES = {
    "raw": lambda a: a.nbytes,
    "zlib": zlib_size,
    "mask-hating": lambda a: a.nbytes * (50 if a.dtype == np.uint8 and a.ndim == 1 and a.size < 4 else 1),
    "constant": lambda a: 1,
}


@settings(max_examples=150, deadline=None)
@given(
    mask=masks(), size=st.sampled_from(sorted(SIZES)), value_dtype=st.sampled_from([np.float32, np.float16, np.int8])
)
def test_roundtrip_and_smallest_layout(mask, size, value_dtype):
    values = (np.arange(1, int(mask.sum()) + 1) % 100 + 1).astype(value_dtype)
    measure = SIZES[size]
    parts = sparse.pack(mask, values, measure)
    layout = sparse.layout_of(parts)
    assert parts["values"] is values or np.array_equal(parts["values"], values)
    expected = np.zeros(mask.shape)
    expected[mask] = values.astype(np.float64)
    assert np.array_equal(sparse.unpack(parts, mask.shape), expected)
    assert np.array_equal(sparse.unpack_csr(parts, mask.shape).toarray(), expected)
    # the layout chosen is the smallest by the size function, ties going to the earlier one
    references = reference_layouts(mask)
    sizes = {name: sum(measure(a) for a in index.values()) for name, index in references.items()}
    assert sizes[layout] == min(sizes.values())
    assert layout == next(name for name in references if sizes[name] == min(sizes.values()))
    for key, array in references[layout].items():
        assert parts[key].dtype == array.dtype and np.array_equal(parts[key], array), key


@settings(max_examples=100, deadline=None)
@given(mask=masks())
def test_every_layout_decodes(mask):
    values = np.linspace(-1, 1, int(mask.sum())).astype(np.float32)
    expected = np.zeros(mask.shape)
    expected[mask] = values
    for index in reference_layouts(mask).values():
        assert np.array_equal(sparse.unpack({**index, "values": values}, mask.shape), expected)


def test_default_size_picks_smallest_layout():
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 1000), bool)
    for row in mask:
        row[rng.choice(1000, 100, replace=False)] = True
    parts = sparse.pack(mask, np.ones(int(mask.sum()), np.float32))
    assert sparse.layout_of(parts) == sparse.layout_of(sparse.pack(mask, parts["values"], lambda a: a.nbytes))


def test_default_size_equals_raw_size_where_csr_fits():
    rng = np.random.default_rng(1)
    for density in (0.001, 0.01, 0.1, 0.3):
        mask = rng.random((50, 200)) < density
        values = np.ones(int(mask.sum()), np.float32)
        raw = sparse.pack(mask, values, lambda a: a.nbytes)
        assert sparse.layout_of(sparse.pack(mask, values)) == sparse.layout_of(raw)


def test_deltas_decode_per_row():
    mask = np.zeros((4, 300), bool)
    mask[0, [0, 5, 6, 299]] = True
    mask[2, [280, 281]] = True
    mask[3, [7]] = True
    references = reference_layouts(mask)
    assert references["csr-delta"]["deltas"].tolist() == [0, 5, 1, 293, 280, 1, 7]
    assert references["csr-delta"]["deltas"].dtype == np.uint16
    delta = {**references["csr-delta"], "values": np.arange(1.0, 8.0)}
    dense = sparse.unpack(delta, (4, 300))
    assert np.array_equal(dense != 0, mask) and dense[0, 299] == 4.0 and dense[2, 281] == 6.0
    # small gaps in a wide matrix: deltas fit one byte where columns need two
    mask = np.zeros((3, 1000), bool)
    mask[:, 100:250:3] = True  # first gap 100, then 3s
    parts = sparse.pack(mask, np.ones(int(mask.sum())), lambda a: a.nbytes)
    assert sparse.layout_of(parts) == "csr-delta" and parts["deltas"].dtype == np.uint8


def good_parts(layout: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    mask = np.zeros((3, 5), bool)
    mask[0, [1, 3]] = True
    mask[2, [0, 4]] = True
    index = reference_layouts(mask)[layout]
    return {**index, "values": np.array([1.0, 2.0, 3.0, 4.0])}, mask.shape


HOSTILE = [
    ("csr", {"indptr": np.array([0, 2, 2, 9], np.uint8)}),  # last entry past nnz
    ("csr", {"indptr": np.array([0, 3, 2, 4], np.uint8)}),  # decreasing
    ("csr", {"indptr": np.array([1, 2, 2, 4], np.uint8)}),  # not starting at 0
    ("csr", {"indptr": np.array([0, 2, 4], np.uint8)}),  # too short
    ("csr", {"indptr": np.array([0, 2, 2, 4, 4], np.uint8)}),  # too long
    ("csr", {"indptr": np.zeros(0, np.uint8)}),
    ("csr", {"indptr": np.array([0, 2, 2, 2**63 + 4], np.uint64)}),  # wraps to negative as int64
    ("csr", {"indices": np.array([1, 5, 0, 4], np.uint8)}),  # column out of range
    ("csr", {"indices": np.array([1, 3, 0], np.uint8)}),  # too few
    ("csr", {"indices": np.array([1, 3, 0, 4, 2], np.uint8)}),  # too many
    ("csr", {"indices": np.array([1, 3, 0, 2**64 - 1], np.uint64)}),  # wraps to -1
    ("csr", {"values": np.array([1.0, 2.0, 3.0])}),
    ("csr-delta", {"deltas": np.array([1, 2, 0, 9], np.uint8)}),  # running sum past n
    ("csr-delta", {"deltas": np.array([1, 200, 0, 4], np.uint8)}),
    ("csr-delta", {"deltas": np.array([1, 2, 0], np.uint8)}),  # too few
    ("csr-delta", {"deltas": np.array([1, 2, 0, 4, 1], np.uint8)}),  # too many
    ("csr-delta", {"deltas": np.array([1, 2, 0, 2**64 - 1], np.uint64)}),  # negative gap
    ("csr-delta", {"indptr": np.array([0, 2, 2, 9], np.uint8)}),
    ("csr-delta", {"indptr": np.array([0, 5, 2, 4], np.uint8)}),
    ("csr-delta", {"indptr": np.array([1, 2, 2, 4], np.uint8)}),
    ("csr-delta", {"indptr": np.array([0, 2, 4], np.uint8)}),
    ("csr-delta", {"indptr": np.array([0, 2, 2, 4, 4], np.uint8)}),
    ("csr-delta", {"values": np.array([1.0, 2.0, 3.0, 4.0, 5.0])}),
    ("bitmask", {"mask": np.zeros(1, np.uint8)}),  # too short
    ("bitmask", {"mask": np.zeros(3, np.uint8)}),  # too long
    ("bitmask", {"values": np.array([1.0, 2.0, 3.0])}),  # fewer values than marked entries
    ("bitmask", {"values": np.array([1.0, 2.0, 3.0, 4.0, 5.0])}),
]


@pytest.mark.parametrize("layout, change", HOSTILE, ids=[f"{i}-{h[0]}" for i, h in enumerate(HOSTILE)])
def test_hostile_parts_are_corrupt_archive_errors(layout, change):
    parts, shape = good_parts(layout)
    sparse.unpack(parts, shape)  # the untouched parts are fine
    with pytest.raises(CorruptArchiveError):
        sparse.unpack({**parts, **change}, shape)
    with pytest.raises(CorruptArchiveError):
        sparse.unpack_csr({**parts, **change}, shape)


@pytest.mark.parametrize("missing", ["indptr", "indices"])
def test_missing_parts(missing):
    parts, shape = good_parts("csr")
    del parts[missing]
    with pytest.raises(CorruptArchiveError, match="missing sparse part"):
        sparse.unpack(parts, shape)


@pytest.mark.parametrize("shape, nnz", [((3, 5), 4), ((0, 5), 0), ((3, 5), 0)])
def test_empty_indptr_with_deltas(shape, nnz):
    parts = {"indptr": np.zeros(0, np.uint8), "deltas": np.ones(nnz, np.uint8), "values": np.ones(nnz)}
    with pytest.raises(CorruptArchiveError):
        sparse.unpack(parts, shape)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(0, 6), st.integers(0, 9)),
    indptr=hnp.arrays(np.int64, st.integers(1, 9), elements=st.integers(-3, 12)),
    index=hnp.arrays(np.int64, st.integers(0, 12), elements=st.integers(-3, 12)),
    nnz=st.integers(0, 12),
    deltas=st.booleans(),
)
def test_random_hostile_csr_never_crashes(shape, indptr, index, nnz, deltas):
    """Whatever the parts hold, unpack returns the matrix or raises CorruptArchiveError."""
    key = "deltas" if deltas else "indices"
    parts = {"indptr": indptr, key: index, "values": np.ones(nnz)}
    try:
        dense = sparse.unpack(parts, shape)
    except CorruptArchiveError:
        return
    assert dense.shape == shape and np.count_nonzero(dense) <= nnz


def test_empty_and_full_matrices():
    for shape in ((0, 0), (0, 7), (7, 0), (1, 1), (5, 8)):
        for fill in (False, True):
            mask = np.full(shape, fill)
            values = np.full(int(mask.sum()), 2.5, np.float32)
            for size in SIZES.values():
                parts = sparse.pack(mask, values, size)
                assert np.array_equal(sparse.unpack(parts, shape), np.where(mask, 2.5, 0.0))


@pytest.mark.parametrize("key", ["indices", "deltas"])
def test_repeated_column_within_a_row_is_refused(key):
    """A column stored twice in a row would be summed by scipy and overwritten by a plain reader."""
    columns = np.array([1, 1, 0], np.uint8) if key == "indices" else np.array([1, 0, 0], np.uint8)
    parts = {"indptr": np.array([0, 2, 3], np.uint8), key: columns, "values": np.ones(3)}
    with pytest.raises(CorruptArchiveError):
        sparse.unpack(parts, (2, 3))
