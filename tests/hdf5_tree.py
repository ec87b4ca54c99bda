"""A shared checker for HDF5 round trips: two files hold the same tree, bit for bit.

``assert_hdf5_trees_equal(a, b)`` walks both files with h5py, never following soft or external links,
and compares, in iteration order:

* the user block (size and bytes) and the root group's attributes;
* every link: name, kind (hard, soft, external), target of soft/external links, and for hard links
  to an object already seen, the path it was first seen at;
* every group: link and attribute creation-order tracking, attributes;
* every dataset: type (``H5Tequal``, so byte order, string padding/charset, opaque tags count), shape,
  maxshape, layout, chunks, filter pipeline (compression and options, shuffle, fletcher32,
  scaleoffset...), fill value, fill and allocation time, time tracking, attributes and data (raw bytes);
* every attribute: name order, type (``H5Tequal`` and h5py's string info), dataspace and value.

The first difference raises an ``AssertionError`` that names the path.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from h5py import h5s


def assert_hdf5_trees_equal(path_a: Path, path_b: Path) -> None:
    """Raise AssertionError, naming the object, at the first difference between two HDF5 trees."""
    with h5py.File(path_a, "r") as a, h5py.File(path_b, "r") as b:
        _check(a.userblock_size == b.userblock_size, "/", "user block sizes differ")
        _check(_userblock(path_a, a) == _userblock(path_b, b), "/", "user block bytes differ")
        _check_group(a["/"], b["/"], "/")
        _check_children(a, b, "", {a["/"].id: "/"}, {b["/"].id: "/"})


def _check(ok: bool, path: str, what: str) -> None:
    if not ok:
        raise AssertionError(f"HDF5 trees differ at {path!r}: {what}")


def _userblock(path: Path, f: h5py.File) -> bytes:
    with open(path, "rb") as raw:
        return raw.read(f.userblock_size)


def _check_children(a: h5py.Group, b: h5py.Group, prefix: str, seen_a: dict, seen_b: dict) -> None:
    names = list(a)
    _check(names == list(b), prefix or "/", f"members {names} != {list(b)}")
    for name in names:
        path = prefix + name
        link_a, link_b = a.get(name, getlink=True), b.get(name, getlink=True)
        _check(type(link_a) is type(link_b), path, f"link kinds {type(link_a).__name__} != {type(link_b).__name__}")
        if isinstance(link_a, h5py.SoftLink):
            _check(link_a.path == link_b.path, path, "soft link targets differ")
            continue
        if isinstance(link_a, h5py.ExternalLink):
            _check((link_a.filename, link_a.path) == (link_b.filename, link_b.path), path, "external links differ")
            continue
        obj_a, obj_b = a[name], b[name]
        first_a, first_b = seen_a.setdefault(obj_a.id, path), seen_b.setdefault(obj_b.id, path)
        _check(first_a == first_b, path, f"hard link to {first_a!r} != to {first_b!r}")
        if first_a != path:
            continue
        _check(type(obj_a) is type(obj_b), path, f"{type(obj_a).__name__} != {type(obj_b).__name__}")
        if isinstance(obj_a, h5py.Group):
            _check_group(obj_a, obj_b, path)
            _check_children(obj_a, obj_b, path + "/", seen_a, seen_b)
        elif isinstance(obj_a, h5py.Dataset):
            _check_dataset(obj_a, obj_b, path)
        else:
            _check(obj_a.id == obj_b.id, path, "named datatypes differ")  # H5Tequal
            _check_attrs(obj_a, obj_b, path)


def _check_group(a: h5py.Group, b: h5py.Group, path: str) -> None:
    gcpl_a, gcpl_b = a.id.get_create_plist(), b.id.get_create_plist()
    _check(gcpl_a.get_link_creation_order() == gcpl_b.get_link_creation_order(), path, "link order tracking differs")
    _check(gcpl_a.get_attr_creation_order() == gcpl_b.get_attr_creation_order(), path, "attr order tracking differs")
    _check_attrs(a, b, path)


def _dataset_properties(ds: h5py.Dataset) -> dict:
    dcpl = ds.id.get_create_plist()
    return {
        "dtype": ds.dtype,
        "shape": ds.shape,
        "maxshape": ds.maxshape,
        "layout": dcpl.get_layout(),
        "chunks": ds.chunks,
        "compression": ds.compression,
        "compression_opts": ds.compression_opts,
        "shuffle": ds.shuffle,
        "fletcher32": ds.fletcher32,
        "scaleoffset": ds.scaleoffset,
        "filters": [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())],
        "fillvalue": _raw(ds.fillvalue),
        "fill_time": dcpl.get_fill_time(),
        "alloc_time": dcpl.get_alloc_time(),
        "track_times": dcpl.get_obj_track_times(),
        "track_order": dcpl.get_attr_creation_order(),
    }


def _check_dataset(a: h5py.Dataset, b: h5py.Dataset, path: str) -> None:
    _check(a.id.get_type() == b.id.get_type(), path, f"HDF5 types differ ({a.dtype} vs {b.dtype})")
    props_a, props_b = _dataset_properties(a), _dataset_properties(b)
    for key, value in props_a.items():
        _check(value == props_b[key], path, f"{key} {value!r} != {props_b[key]!r}")
    _check_attrs(a, b, path)
    _check(_dataset_data(a) == _dataset_data(b), path, "data differs")


def _dataset_data(ds: h5py.Dataset):
    """The data as raw bytes (read with the file type, no conversion), or a list for object types."""
    if ds.shape is None:
        return None
    if ds.dtype.hasobject:
        return _raw(ds[()])
    out = np.empty(ds.shape, ds.dtype)
    if out.size:
        ds.id.read(h5s.ALL, h5s.ALL, out, mtype=ds.id.get_type())
    return out.tobytes()


def _check_attrs(a: h5py.HLObject, b: h5py.HLObject, path: str) -> None:
    names = list(a.attrs)
    _check(names == list(b.attrs), path, f"attribute names {names} != {list(b.attrs)}")
    for name in names:
        where = f"{path}@{name}"
        id_a, id_b = a.attrs.get_id(name), b.attrs.get_id(name)
        _check(id_a.get_type() == id_b.get_type(), where, f"attribute types differ ({id_a.dtype} vs {id_b.dtype})")
        _check(id_a.dtype == id_b.dtype, where, f"attribute dtypes {id_a.dtype} != {id_b.dtype}")
        string_a, string_b = h5py.check_string_dtype(id_a.dtype), h5py.check_string_dtype(id_b.dtype)
        _check(string_a == string_b, where, f"string types {string_a} != {string_b}")
        space_a, space_b = id_a.get_space(), id_b.get_space()
        _check(space_a.get_simple_extent_type() == space_b.get_simple_extent_type(), where, "dataspace kinds differ")
        _check(id_a.shape == id_b.shape, where, f"shapes {id_a.shape} != {id_b.shape}")
        value_a, value_b = _raw(a.attrs[name]), _raw(b.attrs[name])
        _check(value_a == value_b, where, f"values {value_a!r} != {value_b!r}")


def _raw(value):
    """A comparable form of a value: bytes for numeric arrays (NaN-safe), nested lists for objects."""
    if isinstance(value, h5py.Empty):
        return ("empty", value.dtype)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return (value.shape, value.tolist())
        return (value.dtype, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return (value.dtype, value.tobytes())
    return value
