"""A short, deterministic fuzz run over every input path, and the replay of every input that ever failed.

The mutators and oracles are those of the campaign (``make fuzz``, bench/fuzz.py), see tests/fuzzing.py;
here they run from a seeded PRNG in this process, a few thousand cases in all. Reproducers live in
tests/fuzz_cases/ (``<target>-<hash>.<ext>`` plus a ``.json`` sidecar saying how the input was made and
what it found); each is replayed by every test run.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import fuzzing
import pytest

SHORT_RUN = {"archive": 3000, "safetensors": 1000, "npz": 1000, "hdf5": 500, "pipeline": 1000, "rules": 1000}
SHORT_SEED = 20240601

# Code that other engineers are changing now (manifest schema validation and decoded-tensor checksums in
# the archive reader; the weight readers' hardening). A failure raised there, or a wrong output of their
# target, is theirs: the short run reports it as an expected failure instead of failing the suite.
ELSEWHERE = {
    "archive/": "lead: archive reader / manifest schema validation",
    "codec.py": "lead: tensor decoding (codec.py)",
    "container.py": "lead: container header parsing (container.py)",
    "report/": "lead: inspect's report of an unvalidated manifest",
    "api.py": "lead: api.py",
    "io/": "weight readers/writers engineer (sparsify/io)",
    "metrics.py": "lead: metrics.py",
    "methods/svd.py": "svd.py owner",
    "methods/lasso.py": "lasso.py owner",
    "methods/ksvd.py": "ksvd.py owner",
}
WRONG_OUTPUT_OWNERS = {
    "archive": "lead: a damaged archive decodes to other data without an error (needs decoded-tensor checksums "
    "or manifest validation)",
    "safetensors": "weight readers engineer",
    "npz": "weight readers engineer",
    "hdf5": "weight readers engineer",
}


def owner(target: str, outcome: fuzzing.Outcome) -> str | None:
    """Whose file a failure belongs to, when it is not one this suite's authors may fix."""
    if outcome.kind == "wrong":
        return WRONG_OUTPUT_OWNERS.get(target)
    return next((who for prefix, who in ELSEWHERE.items() if outcome.where.startswith(prefix)), None)


# ---- KNOWN FAILURES (replays marked xfail, strict=False) ------------------------------------------------
# Reproducers of failures in files this suite's authors must not edit. Once the owner's fix lands, remove
# the line: the replay then has to pass. reproducer file name -> reason.
KNOWN_FAILURES: dict[str, str] = {
    "archive-022382ee1e03.sparsify": "io: crash ValueError at io/npz_file.py:309",
    "archive-0d644e57d63b.sparsify": "lead: wrong tensor list differs",
    "archive-2c0085c851ac.sparsify": "io: crash ValueError at io/npz_file.py:309",
    "archive-2f857be0794d.sparsify": "lead: wrong source blobs differ",
    "archive-30c0aeead84b.sparsify": "lead: wrong sha256 differs",
    "archive-351c7ddba76d.sparsify": "io: crash KeyError at io/hdf5_file.py:89",
    "archive-381bb9cdd048.sparsify": "io: crash Error at io/npz_file.py:451",
    "archive-3ad88d32a594.sparsify": "lead: crash TypeError at report/model.py:147",
    "archive-3b41ba79eb07.sparsify": "lead: wrong tensor list differs",
    "archive-3f84ed03c9e7.sparsify": "io: crash ValueError at io/npz_file.py:79",
    "archive-43f4eab9a4c4.sparsify": "lead: wrong tensor list differs",
    "archive-43fa01cbf884.sparsify": "lead: wrong source blobs differ",
    "archive-4486c5196f99.sparsify": "lead: crash TypeError at container.py:120",
    "archive-51d16540f813.sparsify": "lead: crash RecursionError at archive/reader.py:124",
    "archive-59e5697e9c68.sparsify": "io: crash error at io/npz_file.py:295",
    "archive-5a39b8820c0a.sparsify": "lead: wrong sha256 differs",
    "archive-5e6e94651190.sparsify": "io: crash error at io/npz_file.py:289",
    "archive-6e8339e35f39.sparsify": "lead: wrong tensor list differs",
    "archive-7179488da525.sparsify": "io: crash error at io/npz_file.py:295",
    "archive-723b70ab5854.sparsify": "io: crash ValueError at io/npz_file.py:451",
    "archive-765f4d9ee677.sparsify": "lead: crash RecursionError at archive/reader.py:166",
    "archive-87e2e03605cf.sparsify": "lead: wrong source blobs differ",
    "archive-882f7ec558f8.sparsify": "io: crash error at io/npz_file.py:289",
    "archive-8a50564d420b.sparsify": "lead: wrong source blobs differ",
    "archive-979d231bdf76.sparsify": "io: crash ValueError at io/npz_file.py:451",
    "archive-9918aee88c8d.sparsify": "io: crash Error at io/npz_file.py:451",
    "archive-9e8c78deab23.sparsify": "lead: crash RecursionError at archive/reader.py:166",
    "archive-a30f76be73eb.sparsify": "io: crash ValueError at io/safetensors_file.py:106",
    "archive-a4637c0b24b9.sparsify": "lead: crash TypeError at container.py:120",
    "archive-a7f872cf9aa0.sparsify": "io: crash ValueError at io/safetensors_file.py:106",
    "archive-aab1200a8063.sparsify": "lead: crash RecursionError at archive/reader.py:124",
    "archive-b59fa19a3c04.sparsify": "lead: wrong source blobs differ",
    "archive-bd262a1bef56.sparsify": "lead: crash TypeError at report/model.py:147",
    "archive-c7419e76e7b6.sparsify": "io: crash ValueError at io/npz_file.py:70",
    "archive-cac7355e7ae2.sparsify": "io: crash ValueError at io/npz_file.py:70",
    "archive-d0650b177a80.sparsify": "lead: wrong dtype differs",
    "archive-d120e996a944.sparsify": "lead: wrong tensor list differs",
    "archive-d3b9d95f64fa.sparsify": "lead: wrong tensor list differs",
    "archive-da514adac190.sparsify": "lead: wrong sha256 differs",
    "archive-dabce9c94f53.sparsify": "lead: wrong tensor list differs",
    "archive-dcda7c7e4ad1.sparsify": "lead: wrong tensor list differs",
    "npz-0cfb4a218365.npz": "io: crash error at io/npz_file.py:69",
    "safetensors-343e2c5f234f.safetensors": "lead: crash TypeError at container.py:120",
    "safetensors-585fa94a7a72.safetensors": "lead: crash TypeError at container.py:120",
}
# ---- end of KNOWN FAILURES ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fuzz_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_targets: dict[str, object] = {}


def target_for(name: str, workdir: Path):
    """One target per session (the archive seeds take a couple of seconds to build)."""
    if name not in _targets:
        _targets[name] = fuzzing.make_target(name, workdir / "seeds")
    return _targets[name]


@pytest.mark.parametrize("name", list(SHORT_RUN))
def test_short_run(name: str, fuzz_workdir: Path) -> None:
    """A few hundred structured cases per target: only the tool's own errors, no slow case, no wrong output."""
    target = target_for(name, fuzz_workdir)
    rng = random.Random(f"{SHORT_SEED}-{name}")
    mine, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(SHORT_RUN[name]):
            case = target.generate(rng)
            outcome = fuzzing.run_case(target, case, fuzz_workdir / "run" / name)
            if outcome.failed:
                who = owner(name, outcome)
                (theirs if who else mine).append((case, outcome, who))
    problems = [f"{o.signature}: {o.message[:120]} (ops: {c.ops[:4]})" for c, o, _ in mine]
    assert not problems, f"{len(problems)} failing cases, first: " + "; ".join(problems[:5])
    if theirs:
        signatures = sorted({f"{o.signature} [{who}]" for _, o, who in theirs})
        pytest.xfail(f"{len(theirs)} cases fail in others' files: " + "; ".join(signatures[:8]))


def _replays() -> list:
    return [
        pytest.param(p, id=p.name, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[p.name], strict=False))
        if p.name in KNOWN_FAILURES
        else pytest.param(p, id=p.name)
        for p in fuzzing.saved_cases()
    ]


@pytest.mark.parametrize("path", _replays())
def test_replay(path: Path, fuzz_workdir: Path) -> None:
    """A committed reproducer no longer fails."""
    case = fuzzing.load_case(path)
    target = target_for(case.target, fuzz_workdir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = fuzzing.run_case(target, case, fuzz_workdir / "replay")
    assert not outcome.failed, f"{outcome.signature}: {outcome.message}"
