"""The manifest's schema (docs/FORMAT.md §8.2, docs/manifest.schema.json) and the whole-file check of
decompress (§8.5).

* docs/manifest.schema.json is what ``sparsify.archive.schema.json_schema()`` renders (regenerate it
  with the command in :data:`REGENERATE` when the schema changes);
* every golden archive's manifest, of every format version, passes ``schema.validate`` and the
  committed JSON Schema (checked by the small validator below: ``jsonschema`` is not a dependency; it
  refuses any keyword it does not implement, so a schema it cannot judge fails instead of passing),
  the manifests of 2.x and 1.0 once their SHA-256 digests are renamed as 3.0's checksums (§9.2);
* a typed field that is off is a CorruptArchiveError naming the field's path, unknown fields pass;
* a lossless archive whose manifest does not rebuild the source's bytes does not decompress.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from golden.make_golden import GOLDEN, OLDER
from test_archive import rewrite_manifest

import sparsify
from sparsify import container
from sparsify.archive import schema
from sparsify.archive.reader import unpack_manifest
from sparsify.archive.version import FORMAT_VERSION
from sparsify.errors import CorruptArchiveError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "manifest.schema.json"
GOLDEN_DIR = ROOT / "tests" / "golden"
SAMPLES = ROOT / "sample_models"
REGENERATE = (
    ".venv/bin/python -c 'import json, sparsify.archive.schema as s; "
    'open("docs/manifest.schema.json", "w").write(json.dumps(s.json_schema(), indent=2, sort_keys=True) + "\\n")\''
)


def generated() -> str:
    return json.dumps(schema.json_schema(), indent=2, sort_keys=True) + "\n"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def test_committed_schema_is_generated():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == generated(), (
        f"docs/manifest.schema.json is out of date with sparsify/archive/schema.py; regenerate it: {REGENERATE}"
    )


# -- a small JSON Schema validator (the keywords msgspec emits; anything else is refused) ------------

_ANNOTATIONS = {"title", "description", "default", "$defs"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def json_schema_errors(value: Any, node: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks the schema ``node`` (draft 2020-12 subset), as 'path: reason'."""
    unknown = set(node) - _ANNOTATIONS - {
        "$ref", "type", "properties", "required", "additionalProperties", "propertyNames", "items", "anyOf",
        "enum", "const", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
        "maxLength", "minItems", "maxItems",
    }  # fmt: skip
    if unknown:
        raise AssertionError(f"the test validator does not implement {sorted(unknown)} (at {path})")
    errors: list[str] = []
    if "$ref" in node:
        target = root
        for step in node["$ref"].removeprefix("#/").split("/"):
            target = target[step]
        errors += json_schema_errors(value, target, root, path)
    if "anyOf" in node and all(json_schema_errors(value, option, root, path) for option in node["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "type" in node and not _TYPES[node["type"]](value):
        return [*errors, f"{path}: not of type {node['type']}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if "const" in node and value != node["const"]:
        errors.append(f"{path}: {value!r} is not {node['const']!r}")
    if isinstance(value, str):
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {node['pattern']}")
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", len(value)):
            errors.append(f"{path}: bad length")
    if type(value) in (int, float):
        if value < node.get("minimum", value) or value > node.get("maximum", value):
            errors.append(f"{path}: {value} out of range")
        if "exclusiveMinimum" in node and not value > node["exclusiveMinimum"]:
            errors.append(f"{path}: {value} not above {node['exclusiveMinimum']}")
        if "exclusiveMaximum" in node and not value < node["exclusiveMaximum"]:
            errors.append(f"{path}: {value} not below {node['exclusiveMaximum']}")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0) or len(value) > node.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items")
        if "items" in node:
            for i, item in enumerate(value):
                errors += json_schema_errors(item, node["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        errors += [f"{path}: missing {key!r}" for key in node.get("required", []) if key not in value]
        for key, item in value.items():
            if "propertyNames" in node:
                errors += json_schema_errors(key, node["propertyNames"], root, f"{path} key {key!r}")
            if key in properties:
                errors += json_schema_errors(item, properties[key], root, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += json_schema_errors(item, node["additionalProperties"], root, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected {key!r}")
    return errors


def manifest_and_entries(path: Path, upgraded: bool = True) -> tuple[dict[str, Any], dict[str, container.Entry]]:
    """An archive's manifest (1.0: the metadata string itself; 2.x, 3.x: unpacked from the envelope),
    of 2.x and 1.0 in 3.0's field names unless ``upgraded`` is false (as the reader does, §9.2), and its
    container entries by name."""
    with open(path, "rb") as f:
        layout = container.read_layout(f, path.stat().st_size, CorruptArchiveError, str(path))
    outer = json.loads(layout.metadata["sparsify"])
    manifest = unpack_manifest(outer, str(path)) if "manifest_codec" in outer else outer
    if upgraded and int(manifest["format_version"].split(".")[0]) < 3:
        schema.upgrade(manifest)
    return manifest, {e.name: e for e in layout.entries}


CHECKSUM = re.compile("(xxh3:[0-9a-f]{16}|sha256:[0-9a-f]{64})")


GOLDEN_NAMES = sorted([*GOLDEN, *OLDER])


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_manifests_validate(name, committed):
    """Archives of every format version (1.0, 2.0, 2.1, 3.0, 3.1) pass the schema and its cross-checks, and
    the committed JSON Schema; the older ones once their digests are renamed (§9.2), and only then."""
    manifest, entries = manifest_and_entries(GOLDEN_DIR / name)
    schema.validate(manifest, entries, name)
    assert json_schema_errors(manifest, committed, committed) == []
    version = manifest["format_version"]
    assert version == (name.split("/")[0][1:] if "/" in name else FORMAT_VERSION)
    three = version.startswith("3.")
    algorithm = "xxh3" if three else "sha256"  # 3.x writes XXH3-64; 2.x and 1.0 digests are SHA-256
    records = [manifest["source"], *manifest["source"]["blobs"].values(), *manifest["tensors"]]
    records += [p for t in manifest["tensors"] for p in t["parts"]]
    assert all(CHECKSUM.fullmatch(r["checksum"]) and r["checksum"].startswith(algorithm + ":") for r in records)
    lossy = [t for t in manifest["tensors"] if not t["metrics"]["exact"]]
    if version == "2.1" or three:  # decoded checksums: a checksum for each lossy tensor, null for each exact one
        assert all(t["decoded_checksum"] is None for t in manifest["tensors"] if t["metrics"]["exact"])
        assert all(t["decoded_checksum"].startswith(algorithm + ":") for t in lossy)
        assert all(b["content_checksum"].startswith(algorithm + ":") for b in manifest["source"]["blobs"].values())
    else:
        assert all("decoded_checksum" not in t for t in manifest["tensors"])
    if three:  # §4.2: the safetensors header held as text, no part of its own
        assert set(manifest["source"]["inline"]) == {"header"} and manifest["source"]["blobs"] == {}
        assert not any(name.startswith("__sparsify__/") for name in entries)
    else:  # as stored, 2.x and 1.0 name their digests sha256, which 3.0's schema does not know
        raw, _ = manifest_and_entries(GOLDEN_DIR / name, upgraded=False)
        assert "sha256" in raw["source"] and "checksum" not in raw["source"] and "inline" not in raw["source"]
        with pytest.raises(CorruptArchiveError, match="checksum"):
            schema.validate(raw, entries, name)
        assert any("checksum" in e for e in json_schema_errors(raw, committed, committed))


def test_upgrade_renames_the_digests():
    """§9.2: ``sha256`` -> ``checksum`` (``"sha256:"`` prefixed), likewise ``content_sha256`` and
    ``decoded_sha256``, in the source, its blobs, the tensors and their parts; null and odd values move
    unchanged (for the schema to judge); other fields and 3.0 names are left alone."""
    hexa, hexb = "a" * 64, "b" * 64
    manifest = {
        "source": {"sha256": hexa, "blobs": {"header": {"sha256": hexb, "content_sha256": hexa, "key": "k"}}},
        "tensors": [
            {"sha256": hexa, "decoded_sha256": None, "parts": [{"sha256": hexb, "name": "p"}]},
            {"sha256": 7, "decoded_sha256": hexb, "parts": []},
            {"checksum": "xxh3:" + "0" * 16, "parts": [{"checksum": "xxh3:" + "1" * 16}]},
        ],
        "options": {"sha256": "left alone"},
    }
    assert schema.upgrade(manifest) is manifest
    assert manifest["source"] == {
        "checksum": "sha256:" + hexa,
        "blobs": {"header": {"checksum": "sha256:" + hexb, "content_checksum": "sha256:" + hexa, "key": "k"}},
    }
    first, second, third = manifest["tensors"]
    parts = [{"checksum": "sha256:" + hexb, "name": "p"}]
    assert first == {"checksum": "sha256:" + hexa, "decoded_checksum": None, "parts": parts}
    assert second == {"checksum": 7, "decoded_checksum": "sha256:" + hexb, "parts": []}
    assert third == {"checksum": "xxh3:" + "0" * 16, "parts": [{"checksum": "xxh3:" + "1" * 16}]}
    assert manifest["options"] == {"sha256": "left alone"}
    for odd in (None, [], "x", {"tensors": "x", "source": 3}):  # damaged manifests: no crash
        schema.upgrade(odd)


def test_json_schema_structure(committed):
    """The committed JSON Schema describes the fields FORMAT.md §4 and §8.2 name, and allows unknown ones."""
    defs = committed["$defs"]
    assert committed["$ref"] == "#/$defs/Manifest"
    # §8.6; (?!\n): Python's "$" would also match before a final newline (a JSON Schema's does not)
    checksum = {"pattern": "^(xxh3:[0-9a-f]{16}|sha256:[0-9a-f]{64})(?!\n)$", "type": "string"}
    assert defs["Part"]["properties"]["checksum"] == checksum
    assert defs["Blob"]["properties"]["checksum"] == checksum
    assert defs["Blob"]["properties"]["content_checksum"]["anyOf"] == [checksum, {"type": "null"}]
    assert defs["Tensor"]["properties"]["checksum"] == checksum
    assert defs["Source"]["properties"]["checksum"] == checksum
    assert defs["Tensor"]["properties"]["decoded_checksum"]["anyOf"] == [checksum, {"type": "null"}]
    assert "decoded_checksum" not in defs["Tensor"]["required"]  # 1.0 and 2.0 records have none
    assert not any("sha256" in record.get("properties", {}) for record in defs.values())  # 3.0's names only
    assert set(defs["Part"]["required"]) == {"name", "key", "dtype", "shape", "codec", "nbytes", "checksum"}
    inline = defs["Source"]["properties"]["inline"]  # §4.2: name -> text, optional (absent before 3.0)
    assert inline["type"] == "object" and inline["additionalProperties"] == {"type": "string"}
    assert "inline" not in defs["Source"]["required"] and "blobs" in defs["Source"]["required"]
    assert defs["View"]["properties"]["layout"]["enum"] == ["first", "last"]
    assert defs["Manifest"]["properties"]["format"]["enum"] == ["sparsify"]
    assert defs["Manifest"]["properties"]["format_version"]["pattern"] == r"^[0-9]+\.[0-9]+$"
    assert defs["Tensor"]["properties"]["stages"]["minItems"] == 1
    assert defs["Stage"]["properties"]["method"] == {"pattern": "^[a-z][a-z0-9_]*$", "type": "string"}  # a name
    dtype = re.compile(defs["Tensor"]["properties"]["dtype"]["pattern"])
    assert all(dtype.search(t) for t in ("F32", "BF16", "F8_E4M3", "U64", ">f4", "<c16", "|V2", "<U3", "|S8"))
    assert not any(dtype.search(t) for t in ("f32", "float32", "|O", "<f4 ", "F32|"))
    for name, record in defs.items():  # forward compatibility: no record closes its set of fields
        assert record.get("additionalProperties") is not False, name
    pattern = re.compile(checksum["pattern"])
    good = ["xxh3:" + "0123456789abcdef", "sha256:" + "f" * 64]
    bad = ["xxh3:" + "0" * 15, "xxh3:" + "0" * 17, "xxh3:" + "A" * 16, "sha256:" + "0" * 16, "0" * 64]
    bad += ["md5:" + "0" * 32, " xxh3:" + "0" * 16, "xxh3:" + "0" * 16 + "0"]
    assert all(pattern.search(v) for v in good) and not any(pattern.search(v) for v in bad)


def golden(name: str = "digits_mlp.threshold.sparsify") -> bytes:
    return (GOLDEN_DIR / name).read_bytes()


def _tensor(i: int, *keys: str, value: Any):
    def edit(manifest):
        target = manifest["tensors"][i]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


# (edit, the field path the message must name, a word of msgspec's reason)
TYPED_DEFECTS = {
    "string for a float": (_tensor(1, "metrics", "sq_norm", value="155.4"), "tensors[1].metrics.sq_norm", "float"),
    "negative count": (_tensor(1, "parts", 0, "nbytes", value=-1), "tensors[1].parts[0].nbytes", ">= 0"),
    "float for an int": (_tensor(3, "original_bytes", value=131072.0), "tensors[3].original_bytes", "int"),
    "bool for an int": (_tensor(5, "shape", value=[True, 128]), "tensors[5].shape[0]", "int"),
    "uppercase checksum": (
        _tensor(1, "parts", 1, "checksum", value="xxh3:" + "A" * 16),
        "tensors[1].parts[1].checksum",
        "match",
    ),
    "bare hex checksum": (_tensor(1, "checksum", value="0" * 64), "tensors[1].checksum", "match"),  # 2.x's form
    "unknown algorithm": (_tensor(0, "checksum", value="md5:" + "0" * 32), "tensors[0].checksum", "match"),
    "short xxh3": (_tensor(2, "parts", 0, "checksum", value="xxh3:1234"), "tensors[2].parts[0].checksum", "match"),
    "bad decoded checksum": (_tensor(3, "decoded_checksum", value="1234"), "tensors[3].decoded_checksum", "match"),
    "source checksum": (lambda m: m["source"].update(checksum=None), "source.checksum", "str"),
    # msgspec names a dict's values "inline[...]"
    "inline not text": (lambda m: m["source"]["inline"].update(header=[1]), "source.inline", "str"),
    "unknown layout": (_tensor(2, "view", "layout", value="middle"), "tensors[2].view.layout", "enum"),
    "no stages": (_tensor(1, "stages", value=[]), "tensors[1].stages", "length"),
    "stage values a list": (_tensor(1, "stages", 0, "values", value=[]), "tensors[1].stages[0].values", "object"),
    "missing metric": (lambda m: m["tensors"][4]["metrics"].pop("exact"), "tensors[4].metrics", "exact"),
    "bad dtype": (_tensor(0, "parts", 0, "dtype", value="float32"), "tensors[0].parts[0].dtype", "match"),
    "source size": (lambda m: m["source"].update(size="203840"), "source.size", "int"),
    "options": (lambda m: m["options"].update(min_size=1.5), "options.min_size", "int"),
    "cosine out of range": (_tensor(1, "metrics", "cosine", value=2.0), "tensors[1].metrics.cosine", "<="),
}


@pytest.mark.parametrize("case", sorted(TYPED_DEFECTS))
def test_typed_defect_names_its_field(case, tmp_path, committed):
    """§8.2: a field of the wrong type or range is a CorruptArchiveError naming its path, from inspect
    (which reads no part); the committed JSON Schema refuses the same manifest at the same path."""
    edit, field, reason = TYPED_DEFECTS[case]
    path = tmp_path / "bad.sparsify"
    path.write_bytes(rewrite_manifest(golden(), edit))
    with pytest.raises(CorruptArchiveError) as excinfo:
        sparsify.inspect(path)
    message = str(excinfo.value)
    assert f"invalid manifest: {field}" in message and reason in message, message
    manifest, _ = manifest_and_entries(path)
    errors = json_schema_errors(manifest, committed, committed)
    assert errors and all(e.startswith("$." + field) for e in errors), errors


def test_cross_check_messages(tmp_path):
    """§8.2 cross-checks: relations between fields, each a CorruptArchiveError saying which."""
    cases = [
        (lambda m: m["tensors"][3].update(name="fc1.weight"), "tensors[3].name 'fc1.weight' is used twice"),
        (_tensor(1, "stored_bytes", value=1), "tensors[1].stored_bytes != its parts' sum"),
        (_tensor(1, "original_bytes", value=1), "tensors[1].original_bytes does not match its dtype and shape"),
        (lambda m: m["tensors"][1]["metrics"].update(exact=True), "tensors[1].metrics: exact with an error"),
        (lambda m: m["gate"] is None and m.update(gate={"max_error": 0.1, "passed": False, "failures": ["x"]}),
         "gate.failures names 'x'"),
        (_tensor(0, "parts", 0, "key", value="fc1.weight/0.threshold.mask"), "expected 'fc1.bias/0.keep.data'"),
    ]  # fmt: skip
    path = tmp_path / "bad.sparsify"
    for edit, message in cases:
        path.write_bytes(rewrite_manifest(golden(), edit))
        with pytest.raises(CorruptArchiveError, match=re.escape(message)):
            sparsify.inspect(path)


def test_unknown_fields_and_names_pass(tmp_path):
    """Forward compatibility (§8.2, §9): unknown fields are ignored everywhere; an unknown method or
    codec makes only its tensor undecodable."""

    def future(manifest):
        manifest["future"] = {"anything": [1, 2]}
        manifest["source"]["future"] = 1
        manifest["tensors"][0]["future"] = None
        manifest["tensors"][1]["parts"][0]["future"] = "x"
        manifest["tensors"][1]["stages"][0]["future"] = True
        manifest["tensors"][1]["metrics"]["future"] = 0.5

    path = tmp_path / "future.sparsify"
    path.write_bytes(rewrite_manifest(golden(), future))
    assert [t["name"] for t in sparsify.inspect(path)["tensors"]][:2] == ["fc1.bias", "fc1.weight"]
    sparsify.decompress(path, tmp_path / "future.safetensors")

    def newer(manifest):
        manifest["tensors"][1]["stages"][0]["method"] = "wavelet"
        manifest["tensors"][3]["parts"][1]["codec"] = "brotli"

    path.write_bytes(rewrite_manifest(golden(), newer))
    sparsify.inspect(path)  # the archive opens ...
    with sparsify.archive.Archive(path) as archive:
        archive.decode(archive.tensors[0])  # ... its other tensors decode ...
        for index, message in ((1, "unknown method 'wavelet'"), (3, "unknown codec 'brotli'")):
            with pytest.raises(CorruptArchiveError, match=re.escape(message)):  # ... these two do not
                archive.decode(archive.tensors[index])


# -- §8.5: decompress checks a byte-exact rebuild against the source's size and checksum ------------


def _rename_everywhere(data: bytes, old: str, new: str) -> bytes:
    """The archive with tensor ``old`` renamed ``new`` in its record, its parts' keys and the container
    entries: a consistent archive whose names no longer match the source's own header."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header = {(new + k[len(old) :] if k.startswith(old + "/") else k): v for k, v in header.items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = struct.pack("<Q", len(raw)) + raw + data[8 + n :]

    def edit(manifest):
        record = next(t for t in manifest["tensors"] if t["name"] == old)
        record["name"] = new
        for part in record["parts"]:
            part["key"] = new + part["key"][len(old) :]

    return rewrite_manifest(data, edit)


def _decompress_refused(tmp_path: Path, data: bytes, message: str, **options) -> None:
    archive = tmp_path / "in" / "bad.sparsify"
    archive.parent.mkdir(exist_ok=True)
    archive.write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(CorruptArchiveError, match=message):
        sparsify.decompress(archive, out_dir / "restored.safetensors", **options)
    assert list(out_dir.iterdir()) == []  # nothing written, no temporary file left behind


def test_decompress_refuses_a_renamed_tensor(tmp_path):
    """A lossless safetensors archive whose manifest names a tensor differently (fc1.bias -> fc1.bia)
    does not decompress, and writes nothing."""
    edited = rewrite_manifest(golden("digits_mlp.keep.sparsify"), _tensor(0, "name", value="fc1.bia"))
    _decompress_refused(tmp_path, edited, "tensors\\[0\\].parts\\[0\\].key is 'fc1.bias/0.keep.data'")


def test_decompress_refuses_a_consistently_renamed_tensor(tmp_path):
    """Renamed in its record, its keys and the container too: the archive is consistent, but its tensors
    no longer rebuild the source; decompress must still refuse it as corrupt, writing nothing."""
    edited = _rename_everywhere(golden("digits_mlp.keep.sparsify"), "fc1.bias", "fc1.bia")
    opened = tmp_path / "renamed.sparsify"
    opened.write_bytes(edited)
    assert sparsify.inspect(opened)["tensors"][0]["name"] == "fc1.bia"  # a consistent archive ...
    _decompress_refused(tmp_path, edited, "fc1")  # ... that does not rebuild its source


@pytest.mark.parametrize(
    "field, value",
    [("checksum", "xxh3:" + "0" * 16), ("checksum", "sha256:" + "0" * 64), ("size", 203841)],
    ids=["xxh3", "sha256", "size"],
)
def test_decompress_checks_the_rebuilt_file(tmp_path, field, value):
    """§8.5: every tensor exact, same format, safetensors: the rebuilt file must have source.size and
    source.checksum (in the algorithm the string names), else a corrupt-archive error and no output."""
    edited = rewrite_manifest(golden("digits_mlp.keep.sparsify"), lambda m: m["source"].update({field: value}))
    _decompress_refused(tmp_path, edited, "differs from the file that was compressed")


def test_decompress_whole_file_check_applies_only_where_bytes_are_rebuilt(tmp_path):
    """§8.5: no whole-file check for lossy archives, for another output format, or for HDF5 (rebuilt
    tree-identical only); npz with stored members is checked."""
    wrong = lambda m: m["source"].update(checksum="xxh3:" + "0" * 16)  # noqa: E731
    out = tmp_path / "out"
    out.mkdir()
    lossy = tmp_path / "lossy.sparsify"
    lossy.write_bytes(rewrite_manifest(golden(), wrong))
    sparsify.decompress(lossy, out / "lossy.safetensors")
    keep = tmp_path / "keep.sparsify"
    keep.write_bytes(rewrite_manifest(golden("digits_mlp.keep.sparsify"), wrong))
    sparsify.decompress(keep, out / "keep.npz", format="npz")
    for source in ("digits_mlp.h5", "digits_mlp.npz"):
        made = tmp_path / f"{source}.sparsify"
        sparsify.compress(SAMPLES / source, made, pipeline="keep+zstd")
        restored = out / f"restored-{source}"
        sparsify.decompress(made, restored)
        if source.endswith(".npz"):  # its members are stored: rebuilt byte for byte
            assert restored.read_bytes() == (SAMPLES / source).read_bytes()
        edited = tmp_path / f"edited-{source}.sparsify"
        edited.write_bytes(rewrite_manifest(made.read_bytes(), wrong))
        if source.endswith(".h5"):
            sparsify.decompress(edited, out / "edited.h5")
        else:
            with pytest.raises(CorruptArchiveError, match="differs from the file that was compressed"):
                sparsify.decompress(edited, out / "edited.npz")
            assert not (out / "edited.npz").exists()
