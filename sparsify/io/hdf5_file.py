"""HDF5 weight files (legacy Keras ``.h5``, Keras 3 ``.weights.h5``): a lazy reader and a tree-exact writer.

Every dataset in the tree is a tensor, named by its path without the leading ``/``. Everything else
the file holds — groups, attributes, links, creation properties, the user block — travels as a
*skeleton*: an HDF5 file with the same tree whose datasets were created but never written, so it
stays small. The same-format writer starts from the skeleton and fills the datasets in, giving a file
whose tree (paths, order, attribute types and values, dataset properties and data) equals the source.

Tensor data is copied raw (memory type = file type), so bytes survive exactly, big-endian included.
Opaque datasets with an attribute ``dtype`` naming an ml_dtypes float (Keras 3 stores bfloat16 so)
are read as that float type.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5f, h5g, h5o, h5p, h5s, h5t

from sparsify.dtypes import SAFETENSORS_TYPES, name_of, numpy_of
from sparsify.errors import CorruptArchiveError, InputError, OutputError
from sparsify.io.base import SourceMeta, TensorInfo, WeightReader, WeightWriter

# numpy name of an ml_dtypes float ("bfloat16", "float8_e4m3fn", ...) -> sparsify dtype name.
_ML_FLOATS: dict[str, str] = {t.ml_name: t.name for t in SAFETENSORS_TYPES.values() if t.ml_name is not None}

# The oldest library version able to write a superblock version: a skeleton then uses object
# formats as new as the source's (large attributes, for one, need the 1.8 format).
_LIBVER_OF_SUPERBLOCK = {2: h5f.LIBVER_V18, 3: h5f.LIBVER_V110}

_SUMMARY_STRING_LIMIT = 200

# Deflate, the filter HDF5 files use most, expands at most 1032:1; sparsify holds every filter to that.
_MAX_FILTER_RATIO = 1032
_CHUNK_OVERHEAD = 1024  # bytes a filter that cannot shrink a chunk may add to it (headers, checksums)

# What reading a damaged or hostile file can make h5py raise.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError)
# Of those, the ones no failure to write the output (a full disk, a size limit) makes h5py raise.
_NOT_OS_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError)
_skeleton_names = itertools.count()


@dataclass(frozen=True)
class _Link:
    """One link of the tree, as the walk meets it.

    path:   its path from the root, without a leading ``/``.
    parent: the group that holds it; ``name`` is its name there and ``cset`` the name's encoding.
    link:   ``h5py.HardLink``, ``SoftLink`` or ``ExternalLink`` (never followed).
    obj:    the Group, Dataset or Datatype for a hard link met first, else None.
    alias:  for a hard link to an object met before, the path it was first met at.
    """

    path: str
    parent: h5py.Group
    name: str
    cset: int
    link: Any
    obj: Any = None
    alias: str | None = None


def _walk(root: h5py.Group, prefix: str = "", seen: dict | None = None) -> Iterator[_Link]:
    """Every link below ``root``, depth first, each group in h5py's iteration order.

    Iteration follows link creation order where the group tracks it, name order otherwise. Only
    hard links are descended into, and an object reached twice is described the second time as an
    alias of the first path.
    """
    seen = {root.id: "/"} if seen is None else seen
    for name in root:
        path = prefix + name
        link = root.get(name, getlink=True)
        cset = root.id.links.get_info(name.encode()).cset
        if not isinstance(link, h5py.HardLink):
            yield _Link(path, root, name, cset, link)
            continue
        obj = root[name]
        if obj.id in seen:
            yield _Link(path, root, name, cset, link, alias=seen[obj.id])
            continue
        seen[obj.id] = path
        yield _Link(path, root, name, cset, link, obj=obj)
        if isinstance(obj, h5py.Group):
            yield from _walk(obj, path + "/", seen)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except _H5_ERRORS as exc:
        raise InputError(f"{path}: not a readable HDF5 file: {_one_line(exc)}") from exc


def _ml_float_name(ds: h5py.Dataset) -> str | None:
    """The sparsify name of the ml_dtypes float an opaque dataset holds (attr ``dtype``), else None."""
    if ds.id.get_type().get_class() != h5t.OPAQUE or "dtype" not in ds.attrs:
        return None
    tag = ds.attrs["dtype"]
    tag = tag.decode("utf-8", "replace") if isinstance(tag, bytes) else str(tag)
    name = _ML_FLOATS.get(tag)
    if name is None or numpy_of(name).itemsize != ds.dtype.itemsize:
        return None
    return name


def _tensor_info(path: Path, name: str, ds: h5py.Dataset, file_size: int) -> TensorInfo | None:
    """The TensorInfo of a dataset; None for a dataset with a null dataspace (no data at all).

    Raises InputError for what sparsify cannot carry as raw bytes: Python-object types (strings of
    variable length, references, variable-length sequences); for storage in other files, which is never
    followed (external raw files, virtual datasets); and for declared sizes the file cannot hold.
    """
    if ds.id.get_space().get_simple_extent_type() == h5s.NULL:
        return None
    if ds.dtype.hasobject:
        raise InputError(
            f"{path}: dataset {name!r} holds variable-length strings, references or sequences, "
            "which sparsify does not support"
        )
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise InputError(
            f"{path}: dataset {name!r} is a virtual dataset (its data lives in other files); sparsify does not "
            "follow it"
        )
    if dcpl.get_external_count():
        raise InputError(
            f"{path}: dataset {name!r} keeps its data in external raw files; sparsify does not follow them"
        )
    dtype = _ml_float_name(ds) or name_of(ds.dtype)
    if numpy_of(dtype).itemsize != ds.id.get_type().get_size():
        raise InputError(f"{path}: dataset {name!r} has an element type sparsify cannot map to numpy")
    _check_declared_size(path, name, ds, file_size)
    shape = tuple(int(d) for d in ds.shape)
    return TensorInfo(name, dtype, shape, "last" if len(shape) >= 2 else "first")


def _check_declared_size(path: Path, name: str, ds: h5py.Dataset, file_size: int) -> None:
    """Refuse a dataset declaring more bytes than the file can hold, before anything is allocated for it.

    Unfiltered data (contiguous, compact or chunked) must fit in the file. Filtered chunks may expand to
    ``_MAX_FILTER_RATIO`` times the bytes they store; on top of that a dataset may declare up to the file's
    size for chunks never written, which read as the fill value.
    """
    declared = math.prod(ds.shape) * ds.id.get_type().get_size()
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() != h5d.CHUNKED or not dcpl.get_nfilters():
        if declared > file_size:
            raise InputError(
                f"{path}: dataset {name!r} declares {declared} bytes of data but the file has only {file_size} "
                "(truncated or corrupt)"
            )
        return
    stored = min(ds.id.get_storage_size(), file_size)
    if declared > _MAX_FILTER_RATIO * stored + file_size:
        raise InputError(
            f"{path}: dataset {name!r} declares {declared} bytes of data, more than its {stored} compressed "
            "bytes can hold (a decompression bomb?)"
        )
    _check_chunks(path, name, ds)


def _check_chunks(path: Path, name: str, ds: h5py.Dataset) -> None:
    """Refuse a filtered chunk that stores more than its own size plus what a compressor may add.

    HDF5 inflates a chunk into a buffer it keeps doubling until the compressed stream ends, whatever the
    chunk's size; bounding the stored bytes bounds that buffer to about ``_MAX_FILTER_RATIO`` times the
    chunk's size.
    """
    nominal = math.prod(ds.chunks) * ds.id.get_type().get_size()
    limit = nominal + nominal // 1000 + _CHUNK_OVERHEAD
    largest = 0

    def visit(chunk) -> None:
        nonlocal largest
        largest = max(largest, chunk.size)

    ds.id.chunk_iter(visit)
    if largest > limit:
        raise InputError(
            f"{path}: dataset {name!r} has a compressed chunk of {largest} bytes, more than its {nominal} bytes "
            "uncompressed can need (a decompression bomb?)"
        )


class HDF5Reader(WeightReader):
    """Reads the datasets of an HDF5 file one at a time; the file stays open read-only."""

    format = "hdf5"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = _open(self.path)
        try:
            self._size = os.path.getsize(self.path)
            self._infos = self._scan()
        except BaseException:
            self._file.close()
            raise

    def _scan(self) -> dict[str, TensorInfo]:
        infos = {}
        try:
            for link in _walk(self._file):
                if isinstance(link.obj, h5py.Dataset):
                    info = _tensor_info(self.path, link.path, link.obj, self._size)
                    if info is not None:
                        infos[info.name] = info
        except _H5_ERRORS as exc:
            raise InputError(f"{self.path}: damaged HDF5 file: {_one_line(exc)}") from exc
        return infos

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def read(self, name: str) -> np.ndarray:
        """One dataset, its size checked against the file's when the reader opened (see _check_declared_size)."""
        info = self._infos[name]
        out = np.empty(info.shape, numpy_of(info.dtype))
        try:
            ds = self._file[name]
            ds.id.read(h5s.ALL, h5s.ALL, out, mtype=ds.id.get_type())
        except _H5_ERRORS as exc:
            self.check_unchanged()  # a file cut or rewritten meanwhile explains the failure best
            raise InputError(f"{self.path}: cannot read dataset {name!r}: {_one_line(exc)}") from exc
        self.check_unchanged()
        return out

    def source_meta(self) -> SourceMeta:
        try:
            with open(self.path, "rb") as f:
                userblock = f.read(self._file.userblock_size)
            skeleton = _skeleton(self._file, userblock)
            summary = _summary(self._file)
            tracked = _tracked_times(self._file)
        except _H5_ERRORS as exc:
            self.check_unchanged()
            raise InputError(f"{self.path}: cannot copy the HDF5 tree: {_one_line(exc)}") from exc
        self.check_unchanged()  # the user block was read through a second handle
        return SourceMeta(summary=summary, rebuild={"track_times": tracked}, blobs={"skeleton": skeleton})

    def close(self) -> None:
        self._file.close()


def _skeleton(src: h5py.File, userblock: bytes) -> bytes:
    """The bytes of an in-memory HDF5 file with ``src``'s tree and no dataset data.

    It keeps the file creation properties (user block size, root group's order tracking...) and the
    user block's bytes (``userblock``, the first ``src.userblock_size`` bytes of the source). Object
    timestamps are left out so that the same source always gives the same bytes; which objects
    tracked times is in :func:`_tracked_times`, and the writer turns tracking back on for them.
    """
    fapl = _fapl(src)
    fapl.set_fapl_core(backing_store=False)
    name = f"sparsify-skeleton-{next(_skeleton_names)}".encode()
    with h5py.File(h5f.create(name, h5f.ACC_TRUNC, fcpl=_fcpl(src), fapl=fapl)) as dst:
        _copy_tree(src, dst, tracked=frozenset())
        dst.flush()
        image = dst.id.get_file_image()
    return userblock + image  # the image starts at the superblock: HDF5 leaves the user block out


def _fcpl(src: h5py.File):
    fcpl = src.id.get_create_plist()
    root = src["/"].id.get_create_plist()  # a reopened file's fcpl forgets the root's order tracking
    fcpl.set_link_creation_order(root.get_link_creation_order())
    fcpl.set_attr_creation_order(root.get_attr_creation_order())
    return fcpl


def _fapl(src: h5py.File):
    fapl = h5p.create(h5p.FILE_ACCESS)
    low = _LIBVER_OF_SUPERBLOCK.get(src.id.get_create_plist().get_version()[0], h5f.LIBVER_EARLIEST)
    fapl.set_libver_bounds(low, h5f.LIBVER_LATEST)
    return fapl


def _tracked_times(src: h5py.File) -> list[str]:
    """Paths of the groups and datasets that record creation/modification times."""
    return [
        link.path
        for link in _walk(src)
        if isinstance(link.obj, (h5py.Group, h5py.Dataset)) and link.obj.id.get_create_plist().get_obj_track_times()
    ]


def _copy_tree(src: h5py.File, dst: h5py.File, tracked: frozenset[str], allocate: bool = True) -> None:
    """Recreate ``src``'s attributes and links in ``dst``; objects in ``tracked`` record times.

    ``allocate=False``: datasets that may allocate their storage late do (a trial copy, which then
    takes no room for data it never holds).
    """
    _copy_attrs(src, dst)
    for link in _walk(src):
        _copy_link(link, dst, link.path in tracked, allocate)


def _copy_link(link: _Link, dst: h5py.File, track_times: bool, allocate: bool = True) -> None:
    """Recreate one link of the source tree in ``dst``: groups and datasets empty, with attributes."""
    parent = dst[link.parent.name].id
    name = link.name.encode()
    lcpl = h5p.create(h5p.LINK_CREATE)
    lcpl.set_char_encoding(link.cset)
    if isinstance(link.link, h5py.SoftLink):
        parent.links.create_soft(name, link.link.path.encode(), lcpl=lcpl)
    elif isinstance(link.link, h5py.ExternalLink):
        parent.links.create_external(name, link.link.filename.encode(), link.link.path.encode(), lcpl=lcpl)
    elif link.alias is not None:
        parent.links.create_hard(name, dst.id, link.alias.encode(), lcpl=lcpl)
    elif isinstance(link.obj, h5py.Datatype):
        h5o.copy(link.parent.id, name, parent, name, lcpl=lcpl)
    elif isinstance(link.obj, h5py.Group):
        gcpl = link.obj.id.get_create_plist()
        gcpl.set_obj_track_times(track_times)
        h5g.create(parent, name, lcpl=lcpl, gcpl=gcpl)
        _copy_attrs(link.obj, dst[link.path])
    else:
        ds = link.obj
        dcpl = ds.id.get_create_plist()
        dcpl.set_obj_track_times(track_times)
        if not allocate and dcpl.get_layout() != h5d.COMPACT:  # compact storage is always allocated early
            dcpl.set_alloc_time(h5d.ALLOC_TIME_LATE)
        h5d.create(parent, name, ds.id.get_type(), ds.id.get_space(), dcpl=dcpl, lcpl=lcpl)
        _copy_attrs(ds, dst[link.path])


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    """Copy every attribute of ``src`` to ``dst`` in iteration order, with its exact type and dataspace."""
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        if _holds_references(aid.dtype):
            raise ValueError(
                f"attribute {name!r} of {src.name!r} holds object references, which sparsify does not support"
            )
        if h5py.check_vlen_dtype(aid.dtype) is not None and h5py.check_string_dtype(aid.dtype) is None:
            # as for datasets; and h5py crashes reading a damaged variable-length type of this kind
            raise ValueError(
                f"attribute {name!r} of {src.name!r} holds variable-length sequences, which sparsify does not support"
            )
        new = h5py.h5a.create(dst.id, name.encode(), aid.get_type(), aid.get_space())
        if aid.shape is not None:  # None: a null dataspace (h5py.Empty), no value to copy
            value = np.empty(aid.shape, aid.dtype)
            aid.read(value)
            new.write(value)


def _holds_references(dtype: np.dtype) -> bool:
    """True for references and variable-length sequences of them: addresses a copy would not keep."""
    vlen = h5py.check_vlen_dtype(dtype)
    return h5py.check_ref_dtype(dtype) is not None or (vlen is not None and h5py.check_ref_dtype(vlen) is not None)


def _summary(src: h5py.File) -> dict[str, Any]:
    """For people: ``{"groups": {path: {attr: value}}, "datasets": {path: {"attrs": {...}}}}``.

    The root group is ``"/"``; values are JSON-friendly (bytes decoded, arrays as lists, long strings
    shortened).
    """
    groups = {"/": _attrs_summary(src)}
    datasets = {}
    for link in _walk(src):
        if isinstance(link.obj, h5py.Group):
            groups[link.path] = _attrs_summary(link.obj)
        elif isinstance(link.obj, h5py.Dataset):
            datasets[link.path] = {"attrs": _attrs_summary(link.obj)}
    return {"groups": groups, "datasets": datasets}


def _attrs_summary(obj: h5py.HLObject) -> dict[str, Any]:
    return {name: _jsonable(obj.attrs[name]) for name in obj.attrs}


def _jsonable(value: Any) -> Any:
    """A JSON-friendly rendering of an attribute value."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) > _SUMMARY_STRING_LIMIT:
            return f"{value[:_SUMMARY_STRING_LIMIT]}... ({len(value)} characters)"
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _writing_fapl(fapl):
    """``fapl`` set so that HDF5 writes a dataset's data before its write returns.

    By default HDF5 holds a small contiguous dataset's data in a sieve buffer, and chunks in the chunk
    cache, until the dataset is closed. If that late write fails (a full disk), HDF5 tears the dataset
    down halfway yet leaves it registered as open, and closing the file then flushes it again and
    dereferences what was freed: a segfault. Without either buffer a failed write fails the write
    call itself and leaves nothing behind to flush. Neither buffer changes where data goes in the file.
    """
    fapl.set_sieve_buf_size(0)
    mdc_nelmts, rdcc_nslots, _, rdcc_w0 = fapl.get_cache()
    fapl.set_cache(mdc_nelmts, rdcc_nslots, 0, rdcc_w0)
    return fapl


def _create(path: Path) -> h5py.File:
    """A new HDF5 file at ``path`` as ``h5py.File(path, "w")`` makes it, open for writing."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)
    fcpl = h5p.create(h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    return h5py.File(h5f.create(bytes(path), h5f.ACC_TRUNC, fcpl=fcpl, fapl=_writing_fapl(fapl)))


def _from_skeleton(path: Path, meta: SourceMeta, tensors: list[TensorInfo]) -> h5py.File:
    """A new HDF5 file at ``path`` with the skeleton's tree (time tracking restored), open for writing.

    The skeleton and ``track_times`` come from an archive: CorruptArchiveError, before ``path`` is
    created, unless they make a tree whose datasets are ``tensors`` (see :func:`_check_skeleton`).
    """
    skeleton_bytes = meta.blobs.get("skeleton")
    if not isinstance(skeleton_bytes, bytes):
        raise CorruptArchiveError("the archive carries no HDF5 skeleton (source blob 'skeleton')")
    tracked = _tracked_paths(meta.rebuild)
    staging = path.with_name(path.name + ".skeleton")
    dst = None
    try:
        staging.write_bytes(skeleton_bytes)
        with _open_skeleton(staging) as skeleton:
            _check_skeleton(skeleton, tensors, tracked)
            userblock = skeleton_bytes[: skeleton.userblock_size]
            fapl = _writing_fapl(_fapl(skeleton))
            dst = h5py.File(h5f.create(bytes(path), h5f.ACC_TRUNC, fcpl=_fcpl(skeleton), fapl=fapl))
            try:
                _copy_tree(skeleton, dst, tracked)
            except _NOT_OS_ERRORS as exc:  # a property the trial copy let through (it allocates late)
                raise CorruptArchiveError(f"the archive's HDF5 skeleton is damaged: {_one_line(exc)}") from None
        staging.unlink()
        if userblock:
            dst.flush()
            with open(path, "r+b") as f:
                f.write(userblock)
    except BaseException:
        if dst is not None:
            with contextlib.suppress(Exception):
                _close(dst)
        raise
    finally:
        staging.unlink(missing_ok=True)
    return dst


def _tracked_paths(rebuild: Any) -> frozenset[str]:
    """The rebuild record's ``track_times`` (absent in older archives); CorruptArchiveError when malformed."""
    tracked = rebuild.get("track_times", []) if isinstance(rebuild, dict) else None
    if not isinstance(tracked, list) or not all(isinstance(p, str) for p in tracked):
        raise CorruptArchiveError("the archive's HDF5 rebuild record has no list of paths as track_times")
    return frozenset(tracked)


def _open_skeleton(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except _H5_ERRORS as exc:
        raise CorruptArchiveError(
            f"the archive's HDF5 skeleton is not a readable HDF5 file: {_one_line(exc)}"
        ) from None


def _check_skeleton(skeleton: h5py.File, tensors: list[TensorInfo], tracked: frozenset[str]) -> None:
    """CorruptArchiveError unless the skeleton can be copied and its datasets are the archive's tensors.

    Every dataset with a dataspace must be one of ``tensors``, of its dtype and shape (the writer fills
    it with exactly that many bytes), and none may keep its data in other files (external storage,
    virtual datasets), which filling it would write to. The whole copy is then tried in memory, so
    that a damaged skeleton fails here and not halfway through the output file.
    """
    expected = {t.name: t for t in tensors}
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    try:
        for link in _walk(skeleton):
            if isinstance(link.obj, h5py.Dataset):
                found.update(_skeleton_dataset(link.path, link.obj))
        for name, (dtype, shape) in found.items():
            tensor = expected.get(name)
            if tensor is None:
                raise CorruptArchiveError(f"the archive's HDF5 skeleton has a dataset {name!r} but no tensor for it")
            if (dtype, shape) != (tensor.dtype, tuple(tensor.shape)):
                raise CorruptArchiveError(
                    f"the archive's HDF5 skeleton has dataset {name!r} as {dtype} {shape}, the archive's tensor "
                    f"is {tensor.dtype} {tuple(tensor.shape)}"
                )
        missing = [name for name in expected if name not in found]
        if missing:
            raise CorruptArchiveError(f"the archive's HDF5 skeleton has no dataset for tensor {missing[0]!r}")
        fapl = _fapl(skeleton)
        fapl.set_fapl_core(backing_store=False)
        name = f"sparsify-skeleton-{next(_skeleton_names)}".encode()
        with h5py.File(h5f.create(name, h5f.ACC_TRUNC, fcpl=_fcpl(skeleton), fapl=fapl)) as trial:
            _copy_tree(skeleton, trial, tracked, allocate=False)
    except _H5_ERRORS as exc:
        raise CorruptArchiveError(f"the archive's HDF5 skeleton is damaged: {_one_line(exc)}") from None


def _skeleton_dataset(path: str, ds: h5py.Dataset) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{path: (dtype, shape)}`` of a skeleton dataset that holds data, ``{}`` for one with a null dataspace."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL or dcpl.get_external_count():
        raise CorruptArchiveError(f"the archive's HDF5 skeleton has dataset {path!r} keep its data in other files")
    if ds.id.get_space().get_simple_extent_type() == h5s.NULL:
        return {}
    if ds.dtype.hasobject:
        raise CorruptArchiveError(f"the archive's HDF5 skeleton has dataset {path!r} of variable-length data")
    dtype = _ml_float_name(ds) or name_of(ds.dtype)
    if numpy_of(dtype).itemsize != ds.id.get_type().get_size():
        raise CorruptArchiveError(f"the archive's HDF5 skeleton has dataset {path!r} of a type numpy cannot map")
    return {path: (dtype, tuple(int(d) for d in ds.shape))}


def _close(file: h5py.File) -> None:
    """Close ``file``; raises what made HDF5 fail to.

    Closing flushes HDF5's metadata, so a full disk often shows only here. A file that fails to close
    has had its handle released all the same, but HDF5 keeps its ID registered: closing it again frees
    the rest (the library's way), so that no later close (h5py's finaliser, the library's at exit)
    finds it half closed.
    """
    try:
        file.close()
    except Exception:
        with contextlib.suppress(Exception):
            file.id.close()
        raise


_ERRNO = re.compile(r"errno = (\d+)")


def _with_errno(exc: Exception) -> Exception:
    """``exc``, or an OSError with the errno its HDF5 message names (h5py raises some as RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    match = _ERRNO.search(str(exc))
    if match is None:
        return exc
    code = int(match[1])
    error = OSError(code, os.strerror(code))
    error.__cause__ = exc
    return error


class HDF5Writer(WeightWriter):
    """Writes an HDF5 file: the source's tree refilled (same format), or one dataset per tensor.

    In a conversion each tensor name is a dataset path (intermediate groups created), uncompressed;
    ml_dtypes floats are stored as Keras 3 does bfloat16: opaque, with an attribute ``dtype``.

    A failed write of the file (a full disk, a size limit) is an OutputError, whenever HDF5 meets it;
    the file is written so that HDF5 survives it (see :func:`_writing_fapl` and :func:`_close`).
    """

    format = "hdf5"

    def __init__(self, path: Path, tensors: list[TensorInfo], meta: SourceMeta, same_format: bool) -> None:
        super().__init__(path, tensors, meta, same_format)
        self._by_name = {info.name: info for info in self.infos}
        if not same_format:
            for info in self.infos:
                if numpy_of(info.dtype) is None:
                    raise InputError(f"tensor {info.name!r} is of the packed type {info.dtype}, which HDF5 cannot hold")
        try:
            self._file = _from_skeleton(self.path, meta, self.infos) if same_format else _create(self.path)
        except (OSError, RuntimeError) as exc:
            raise OutputError(f"{self.path}: cannot write: {_one_line(exc)}") from _with_errno(exc)

    def write(self, name: str, array: np.ndarray) -> None:
        info = self._by_name[name]
        if array.shape != info.shape or array.dtype != numpy_of(info.dtype):
            raise ValueError(f"{name}: got {array.dtype} {array.shape}, expected {info.dtype} {info.shape}")
        array = np.ascontiguousarray(array)
        try:
            if self.same_format:
                ds = self._file[name]
                ds.id.write(h5s.ALL, h5s.ALL, array, mtype=ds.id.get_type())
            else:
                self._create(name, array)
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise OutputError(f"{self.path}: cannot write dataset {name!r}: {_one_line(exc)}") from _with_errno(exc)

    def _create(self, name: str, array: np.ndarray) -> None:
        ds = self._file.create_dataset(name, data=array)
        if array.dtype.name in _ML_FLOATS:
            ds.attrs["dtype"] = array.dtype.name

    def finish(self) -> None:
        try:
            _close(self._file)
        except (OSError, RuntimeError) as exc:
            raise OutputError(f"{self.path}: cannot finish: {_one_line(exc)}") from _with_errno(exc)

    def abort(self) -> None:
        try:
            _close(self._file)
        except Exception:  # already failing: the caller deletes the partial file
            pass
