"""Model folders: sharded safetensors with their index, carried files, one plan for the whole model,
the same bytes for every number of jobs, and a folder that comes back byte for byte."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from model_folders import folder_files, load_like_from_pretrained, make_hf_folder

import sparsify
import sparsify.api
import sparsify.executor
from sparsify.archive import Archive
from sparsify.archive.folder import INDEX_NAME, index_text, read_index
from sparsify.cli import cli, run
from sparsify.errors import CorruptArchiveError, InputError, OutputError


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="module")
def lossless(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny-bert.sparsify"
    report = sparsify.compress(hf, out, jobs=1)
    return out, report


def test_a_folder_becomes_a_folder_archive_that_mirrors_it(hf, lossless):
    out, report = lossless
    names = set(folder_files(out))
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert names == {f"{s}.sparsify" for s in shards} | {
        INDEX_NAME,
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.json",
        "README.md",
        "1_Pooling/config.json",
    }
    index = read_index(out)
    assert [w["name"] for w in index["weights"]] == shards
    for weight in index["weights"]:  # each shard's archive is a complete archive of its own
        with Archive(out / weight["archive"]) as archive:
            assert archive.manifest["source"]["name"] == weight["name"]
            assert len(archive.tensors) == weight["tensors"]
    assert report["source"]["format"] == "folder" and report["totals"]["tensors"] == 55
    assert report["totals"]["lossless_tensors"] == 55
    assert {row["file"] for row in report["tensors"]} == set(shards)
    assert report["totals"]["stored_bytes"] == sum(w["archive_bytes"] for w in index["weights"])


def test_lossless_decompress_rebuilds_the_folder_byte_for_byte(hf, lossless, tmp_path):
    out, _ = lossless
    restored = sparsify.decompress(out, tmp_path / "restored")
    assert folder_files(restored) == folder_files(hf)
    original, rebuilt = load_like_from_pretrained(hf), load_like_from_pretrained(restored)
    assert original.keys() == rebuilt.keys()
    for name, array in original.items():
        assert array.dtype == rebuilt[name].dtype and np.array_equal(array.view(np.uint8), rebuilt[name].view(np.uint8))


def test_inspect_and_verify_take_the_folder(hf, lossless):
    out, report = lossless
    assert sparsify.inspect(out)["totals"] == report["totals"]
    result = sparsify.verify(out, against=hf)
    assert result.ok and result.checked == 55 and result.files == 3 + 5
    assert all(t["rel_error"] == 0 for t in result.tensors)


def test_the_shard_index_as_input_is_the_folder(hf, lossless, tmp_path):
    out, _ = lossless
    via = tmp_path / "via-index.sparsify"
    sparsify.compress(hf / "model.safetensors.index.json", via, jobs=1)
    rest = {k: v for k, v in folder_files(via).items() if k != INDEX_NAME}
    assert rest == {k: v for k, v in folder_files(out).items() if k != INDEX_NAME}
    assert read_index(via)["source"]["shard_index"] == "model.safetensors.index.json"


@pytest.mark.parametrize("options", [{}, {"target_ratio": 8}], ids=["lossless", "target_ratio_8"])
def test_jobs_do_not_change_a_byte(hf, tmp_path, options):
    one = sparsify.compress(hf, tmp_path / "one.sparsify", jobs=1, **options)
    two = sparsify.compress(hf, tmp_path / "two.sparsify", jobs=2, **options)
    assert folder_files(tmp_path / "one.sparsify") == folder_files(tmp_path / "two.sparsify")
    assert one["totals"] == two["totals"]


def test_one_plan_for_the_whole_model(hf, tmp_path):
    out = tmp_path / "8x.sparsify"
    report = sparsify.compress(hf, out, target_ratio=8, jobs=1)
    plan = report["plan"]
    assert plan["met"] and report["totals"]["ratio"] >= 8
    weights = read_index(out)["weights"]
    assert sum(w["size"] for w in weights) / sum(w["archive_bytes"] for w in weights) >= 8
    plans = []
    for weight in weights:
        with Archive(out / weight["archive"]) as archive:
            plans.append(archive.manifest["plan"])
    assert all(p == plans[0] for p in plans)  # one allocation, recorded in every shard
    # every shard is held to the model's budget, not its own: their ratios differ
    ratios = [w["size"] / w["archive_bytes"] for w in weights]
    assert max(ratios) / min(ratios) > 1.05, ratios
    planned = [t for t in report["tensors"] if t["reason"].startswith("rate control")]
    assert {t["file"] for t in planned} == {w["name"] for w in weights}
    restored = sparsify.decompress(out, tmp_path / "restored")
    assert set(folder_files(restored)) == set(folder_files(hf))
    assert sparsify.verify(out, against=hf).ok


def test_rules_match_tensor_names_across_shards(hf, tmp_path):
    report = sparsify.compress(hf, tmp_path / "r.sparsify", rules=["*.query.weight=quant:bits=4+zstd"], jobs=1)
    chosen = [t for t in report["tensors"] if t["reason"] == "rule *.query.weight"]
    assert len(chosen) == 4 and len({t["file"] for t in chosen}) > 1


def test_the_index_is_checksummed(lossless, tmp_path):
    out, _ = lossless
    copy = tmp_path / "copy.sparsify"
    shutil.copytree(out, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    index["files"][0]["size"] += 1
    (copy / INDEX_NAME).write_text(json.dumps(index))  # the old checksum: the edit shows
    with pytest.raises(CorruptArchiveError, match="checksum mismatch"):
        sparsify.inspect(copy)
    index.pop("checksum")
    index["files"][0]["name"] = "../escape.txt"
    (copy / INDEX_NAME).write_bytes(index_text(index))  # a valid checksum, a name outside the folder
    with pytest.raises(CorruptArchiveError, match="does not stay inside the folder"):
        sparsify.decompress(copy, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_damaged_members_are_found(lossless, tmp_path):
    out, _ = lossless
    copy = tmp_path / "copy.sparsify"
    shutil.copytree(out, copy)
    (copy / "config.json").write_text('{"hidden_size": 65}')
    result = sparsify.verify(copy)
    assert not result.ok and result.problems == ["config.json: missing or differs from the file the index lists"]
    with pytest.raises(CorruptArchiveError, match="config.json: differs"):
        sparsify.decompress(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (copy / "model-00002-of-00003.safetensors.sparsify").unlink()
    with pytest.raises(CorruptArchiveError, match="is missing"):
        sparsify.inspect(copy)


def test_outputs_are_never_clobbered(hf, lossless, tmp_path):
    out, _ = lossless
    with pytest.raises(OutputError, match="already exists"):
        sparsify.compress(hf, out)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="folder of other files"):
        sparsify.compress(hf, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match="input"):
        sparsify.compress(hf, hf / "inside.sparsify")
    replaced = tmp_path / "again.sparsify"
    shutil.copytree(out, replaced)
    sparsify.compress(hf, replaced, force=True, target_ratio=4, jobs=1)  # a folder archive may be replaced
    assert read_index(replaced)["plan"]["mode"] == "ratio"
    assert not [p for p in tmp_path.iterdir() if ".sparsify-tmp-" in p.name]
    with pytest.raises(OutputError, match="already exists"):
        sparsify.decompress(out, hf)  # the original folder


def test_bad_folders_are_input_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(InputError, match="without weight files"):
        sparsify.compress(empty)
    broken = make_hf_folder(tmp_path / "broken")
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(InputError, match="lists shard 'model-00002-of-00003.safetensors'"):
        sparsify.compress(broken)
    fake = make_hf_folder(tmp_path / "fake")
    (fake / "extra.safetensors").write_text("not weights")
    with pytest.raises(InputError, match="extra.safetensors"):
        sparsify.compress(fake)


def test_the_cli_takes_folders(hf, tmp_path):
    out = tmp_path / "cli.sparsify"
    runner = CliRunner()
    result = runner.invoke(cli, ["compress", str(hf), "-o", str(out), "--jobs", "2", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"]["format"] == "folder"
    result = runner.invoke(cli, ["verify", str(out), "--against", str(hf)])
    assert result.exit_code == 0 and "55 tensors checked, OK" in result.output
    assert run(["decompress", str(out), "-o", str(tmp_path / "back"), "--format", "npz", "-q"]) == 2
    assert run(["decompress", str(out), "-o", str(tmp_path / "back"), "-q"]) == 0
    assert folder_files(tmp_path / "back") == folder_files(hf)


def test_names_a_folder_archive_cannot_hold_are_refused_up_front(tmp_path):
    odd = make_hf_folder(tmp_path / "odd", shards=1)
    (odd / "a\\b.txt").write_text("a Windows path on Linux")
    with pytest.raises(InputError, match="does not stay inside the folder"):
        sparsify.compress(odd, tmp_path / "odd.sparsify")
    clash = make_hf_folder(tmp_path / "clash", shards=1)
    (clash / "model-00001-of-00001.safetensors.sparsify").write_text("an old archive")
    with pytest.raises(InputError, match="listed twice"):
        sparsify.compress(clash, tmp_path / "clash.sparsify")
    assert not (tmp_path / "odd.sparsify").exists() and not (tmp_path / "clash.sparsify").exists()


def test_the_index_source_name_cannot_send_a_rebuild_elsewhere(lossless, tmp_path):
    out, _ = lossless
    copy = tmp_path / "deep" / "copy.sparsify"
    shutil.copytree(out, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    index.pop("checksum")
    index["source"]["name"] = "../escaped"
    (copy / INDEX_NAME).write_bytes(index_text(index))
    with pytest.raises(CorruptArchiveError, match="not one plain file name"):
        sparsify.decompress(copy)
    assert not (tmp_path / "escaped").exists()


def test_a_big_tensor_s_candidates_measured_in_shares_give_the_same_plan(tmp_path, monkeypatch):
    """Candidates measured in shares (one per worker, for big tensors) and joined give the plan and
    the bytes of measuring them in one go."""
    import contextlib
    import dataclasses

    import sparsify.api
    import sparsify.planner as planner
    from sparsify.executor import open_executor

    model = make_hf_folder(tmp_path / "m", shards=2)
    one = sparsify.compress(model, tmp_path / "one.sparsify", jobs=1, target_ratio=6, max_error=0.5)
    monkeypatch.setattr(planner, "SHARE_BYTES", 1)  # every planned tensor in shares
    measured = []
    real = planner.run_all
    monkeypatch.setattr(planner, "run_all", lambda ex, fn, jobs, *a: measured.extend(jobs) or real(ex, fn, jobs, *a))
    with open_executor(jobs=1) as inline:
        three = dataclasses.replace(inline, count=3)  # as if three workers: three shares, run inline
    monkeypatch.setattr(sparsify.api, "open_executor", lambda *a: contextlib.nullcontext(three))
    report = sparsify.compress(model, tmp_path / "three.sparsify", target_ratio=6, max_error=0.5)
    assert {job.share for job in measured} >= {(0, 3), (1, 3), (2, 3)}
    assert folder_files(tmp_path / "one.sparsify") == folder_files(tmp_path / "three.sparsify")
    assert one["plan"] == report["plan"]
