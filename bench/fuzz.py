"""Fuzz campaign: every input path of sparsify under structure-aware mutations, in limited worker processes.

    .venv/bin/python bench/fuzz.py --minutes 25 --jobs 2            # what `make fuzz` runs
    .venv/bin/python bench/fuzz.py --minutes 2 --targets archive --engine random

Each target (archive, safetensors, npz, hdf5, pipeline, rules; see tests/fuzzing.py) gets a share of the
time and runs in its own worker process, limited to a 2 GiB address space (RLIMIT_AS) with one BLAS
thread. With ``--engine atheris`` (the default where atheris imports) the worker is coverage-guided:
libFuzzer evolves the byte strings from which the structured mutators read their choices, and keeps
those that reach new code of sparsify (instrumented on import). ``--engine random`` draws the choices
from a seeded PRNG instead. Workers classify every case (tests/fuzzing.py: ok, rejected with the tool's
own error, crash, memory, wrong output, slow), save reproducers of failures, and report counts; this
parent restarts a worker that dies (a signal) or hangs on a case, saving that case too, and writes
bench/results/fuzz.md and fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ADDRESS_SPACE = 2 * 1024**3
HANG_SECONDS = 30.0  # a case this long is killed (and counted as a hang); over SLOW_SECONDS it is slow
SHARES = {"archive": 0.5, "hdf5": 0.2, "npz": 0.13, "safetensors": 0.11, "pipeline": 0.03, "rules": 0.03}
KEEP_PER_SIGNATURE = 3
LIMIT_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# -- worker ---------------------------------------------------------------------------------------


class Stats:
    """Counts of one worker run, flushed to ``path`` as JSON."""

    def __init__(self, path: Path, findings: Path, target: str, engine: str) -> None:
        self.path, self.findings = path, findings
        self.data = {
            "target": target,
            "engine": engine,
            "cases": 0,
            "kinds": Counter(),
            "details": Counter(),
            "slow": 0,
            "max_seconds": 0.0,
            "signatures": {},
            "max_rss_mb": 0.0,
            "seconds": 0.0,
            "generator_errors": Counter(),
        }
        self.start = time.monotonic()
        self.last_flush = 0.0

    def add(self, case: fuzzing.Case, outcome: fuzzing.Outcome) -> None:
        d = self.data
        d["cases"] += 1
        d["kinds"][outcome.kind] += 1
        detail = outcome.detail
        if outcome.kind == "wrong" and fuzzing.RESIGNED in case.ops:
            detail += " " + fuzzing.RESIGNED
        d["details"][f"{outcome.kind}:{detail}"] += 1
        d["max_seconds"] = max(d["max_seconds"], outcome.seconds)
        if outcome.seconds > fuzzing.SLOW_SECONDS:
            d["slow"] += 1
        if outcome.failed:
            self.found(case, outcome)
        if time.monotonic() - self.last_flush > 2.0:
            self.flush()

    def found(self, case: fuzzing.Case, outcome: fuzzing.Outcome) -> None:
        signature = outcome.signature
        if outcome.kind == "wrong" and fuzzing.RESIGNED in case.ops:
            signature += " " + fuzzing.RESIGNED
        entry = self.data["signatures"].setdefault(
            signature, {"count": 0, "message": outcome.message, "cases": [], "ops": case.ops[:6], "seed": case.seed}
        )
        entry["count"] += 1
        if len(entry["cases"]) < KEEP_PER_SIGNATURE:
            entry["cases"].append(str(fuzzing.save_case(case, outcome, self.findings)))
            if len(case.data) < min(len(Path(p).read_bytes()) for p in entry["cases"]):
                entry["ops"], entry["seed"] = case.ops[:6], case.seed

    def flush(self) -> None:
        self.data["seconds"] = time.monotonic() - self.start
        self.data["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, allow_nan=True))
        tmp.replace(self.path)
        self.last_flush = time.monotonic()


def limit_worker() -> None:
    """The campaign's limits, applied in each worker before any work."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    warnings.simplefilter("ignore")


def run_worker(args: argparse.Namespace) -> None:
    """One target for ``args.seconds``: generate, run and classify cases, flushing stats as it goes."""
    limit_worker()
    if args.engine == "atheris":
        instrument_sparsify()
    state = Path(args.state)
    work = state / "work"
    target = fuzzing.make_target(args.target, Path(args.seeds))
    stats = Stats(state / f"stats-{args.segment}.json", state / "findings", args.target, args.engine)
    current = state / "current.json"
    deadline = time.monotonic() + args.seconds

    def one(rng: random.Random) -> None:
        try:
            case = target.generate(rng)
        except Exception as exc:  # noqa: BLE001 - a mutator bug: counted apart, never as a case
            stats.data["generator_errors"][f"{type(exc).__name__}@{fuzzing._where(exc)}"] += 1
            return
        current.write_text(
            json.dumps({"start": time.time(), **case.sidecar(), "data": case.data.hex()}, allow_nan=True)
        )
        outcome = fuzzing.run_case(target, case, work)
        current.unlink()  # a worker that dies from here on did not die of a case
        stats.add(case, outcome)

    if args.engine == "atheris":
        run_atheris(args, one, stats, deadline, state)
    else:
        rng = random.Random(args.seed)
        while time.monotonic() < deadline:
            one(rng)
    stats.flush()
    current.unlink(missing_ok=True)


def instrument_sparsify() -> None:
    """Import every sparsify module with atheris's coverage instrumentation (before anything imports it)."""
    import atheris

    with atheris.instrument_imports(include=["sparsify"]):
        import pkgutil

        import sparsify

        for module in pkgutil.walk_packages(sparsify.__path__, "sparsify."):
            __import__(module.name)


def run_atheris(args, one, stats: Stats, deadline: float, state: Path) -> None:
    """libFuzzer drives the mutators' choices; coverage of sparsify's code decides what it keeps."""
    import atheris

    corpus = Path(args.corpus) / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        seeder = random.Random(args.seed)
        for i in range(32):
            (corpus / f"seed{i}").write_bytes(seeder.randbytes(seeder.randrange(8, 400)))

    def test_one(data: bytes) -> None:
        one(fuzzing.ByteRandom(data))
        if time.monotonic() >= deadline:
            stats.flush()
            (state / "current.json").unlink(missing_ok=True)
            os._exit(0)

    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={int(args.seconds) + 30}",
        "-timeout=3600",
        "-rss_limit_mb=0",
        "-max_len=1024",
        f"-seed={args.seed}",
        "-print_final_stats=0",
        f"-artifact_prefix={state}/libfuzzer-",
    ]
    atheris.Setup(argv, test_one)
    atheris.Fuzz()


# -- parent ---------------------------------------------------------------------------------------


def plan(targets: list[str], seconds: float, jobs: int) -> list[list[tuple[str, float]]]:
    """Per worker slot, the (target, seconds) it runs in turn: shares of jobs x seconds, longest first."""
    total = sum(SHARES[t] for t in targets)
    budget = {t: SHARES[t] / total * seconds * jobs for t in targets}
    slots: list[list[tuple[str, float]]] = [[] for _ in range(jobs)]
    loads = [0.0] * jobs
    for t in sorted(targets, key=lambda t: -budget[t]):
        remaining = budget[t]
        while remaining > 1:
            i = loads.index(min(loads))
            take = min(remaining, seconds - loads[i]) if loads[i] < seconds else remaining
            take = max(take, 1.0)
            slots[i].append((t, take))
            loads[i] += take
            remaining -= take
    return slots


class Slot:
    """One worker process at a time, running its list of (target, seconds)."""

    def __init__(self, jobs: list[tuple[str, float]], args, index: int) -> None:
        self.jobs, self.args, self.index = list(jobs), args, index
        self.proc: subprocess.Popen | None = None
        self.segments = 0
        self.events: list[dict] = []

    def start_next(self) -> bool:
        if not self.jobs:
            return False
        target, seconds = self.jobs.pop(0)
        self.target, self.deadline = target, time.monotonic() + seconds
        return self._spawn(seconds)

    def _spawn(self, seconds: float) -> bool:
        state = Path(self.args.work) / self.target / f"slot{self.index}"
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.segments += 1
        seed = self.args.seed * 1000 + self.index * 100 + self.segments
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--target",
            self.target,
            "--seconds",
            f"{seconds:.1f}",
            "--engine",
            self.args.engine,
            "--state",
            str(state),
            "--seeds",
            str(Path(self.args.work) / "seeds"),
            "--corpus",
            str(Path(self.args.work) / "corpus"),
            "--seed",
            str(seed),
            "--segment",
            f"{self.index}-{self.segments}",
        ]
        log = open(state / f"worker-{self.index}-{self.segments}.log", "w")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **LIMIT_ENV}, stdout=log, stderr=subprocess.STDOUT)
        return True

    def poll(self) -> bool:
        """Check the worker; restart it after a death or a hang. False when the slot is done."""
        if self.proc is None:
            return self.start_next()
        code = self.proc.poll()
        current = self.state / "current.json"
        if code is None:
            started = _case_start(current)
            if started is not None and time.time() - started > HANG_SECONDS:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self._record("hang", f"case ran over {HANG_SECONDS:.0f} s", current)
                return self._restart()
            return True
        if code != 0 and current.exists():
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            self._record("died", why, current)
            return self._restart()
        self.proc = None
        return self.start_next()

    def _restart(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining > 5:
            return self._spawn(remaining)
        self.proc = None
        return self.start_next()

    def _record(self, kind: str, why: str, current: Path) -> None:
        info = json.loads(current.read_text())
        case = fuzzing.Case(info["target"], bytes.fromhex(info["data"]), info["seed"], info["ops"], info["expect"])
        outcome = fuzzing.Outcome(kind, why, why, "worker", time.time() - info["start"])
        path = fuzzing.save_case(case, outcome, self.state / "findings")
        current.unlink()
        self.events.append({"target": self.target, "kind": kind, "why": why, "case": str(path), "ops": case.ops[:6]})


def _case_start(current: Path) -> float | None:
    try:
        return json.loads(current.read_text())["start"]
    except (OSError, ValueError, KeyError):
        return None


def merge(work: Path, targets: list[str], events: list[dict]) -> dict:
    """Sum the workers' stats per target."""
    out = {}
    for t in targets:
        total = {
            "cases": 0,
            "kinds": Counter(),
            "details": Counter(),
            "slow": 0,
            "max_seconds": 0.0,
            "max_rss_mb": 0.0,
            "seconds": 0.0,
            "signatures": {},
            "hangs": 0,
            "deaths": 0,
            "generator_errors": Counter(),
            "engine": "",
        }
        for path in sorted((work / t).glob("*/stats-*.json")):
            d = json.loads(path.read_text())
            total["engine"] = d["engine"]
            for key in ("cases", "slow", "seconds"):
                total[key] += d[key]
            total["max_seconds"] = max(total["max_seconds"], d["max_seconds"])
            total["max_rss_mb"] = max(total["max_rss_mb"], d["max_rss_mb"])
            total["kinds"].update(d["kinds"])
            total["details"].update(d["details"])
            total["generator_errors"].update(d.get("generator_errors", {}))
            for sig, entry in d["signatures"].items():
                mine = total["signatures"].setdefault(
                    sig, {"count": 0, "message": entry["message"], "cases": [], "ops": entry["ops"]}
                )
                mine["count"] += entry["count"]
                mine["cases"] += entry["cases"][: KEEP_PER_SIGNATURE - len(mine["cases"])]
        for e in events or _worker_events(work / t):
            if e["target"] == t:
                total["hangs" if e["kind"] == "hang" else "deaths"] += 1
                total["signatures"].setdefault(
                    f"{e['kind']}:{e['why']}", {"count": 0, "message": e["why"], "cases": [], "ops": e["ops"]}
                )
                total["signatures"][f"{e['kind']}:{e['why']}"]["count"] += 1
                total["signatures"][f"{e['kind']}:{e['why']}"]["cases"].append(e["case"])
        out[t] = total
    return out


def _worker_events(directory: Path) -> list[dict]:
    """Hangs and deaths recorded by the parent, read back from their reproducers' sidecars."""
    events = []
    for sidecar in sorted(directory.glob("*/findings/*.json")):
        info = json.loads(sidecar.read_text())
        if info["found"]["kind"] in ("hang", "died"):
            case = sidecar.with_name(sidecar.name[: -len(".json")])
            events.append(
                {
                    "target": info["target"],
                    "kind": info["found"]["kind"],
                    "why": info["found"]["detail"],
                    "case": str(case),
                    "ops": info["ops"][:6],
                }
            )
    return events


def keep_cases(results: dict, directory: Path, max_bytes: int) -> list[str]:
    """Copy the smallest reproducer of every failure signature (and its sidecar) into ``directory``."""
    kept = []
    directory = directory.resolve()
    for r in results.values():
        for entry in r["signatures"].values():
            cases = [Path(c) for c in entry["cases"] if Path(c).exists() and Path(c).stat().st_size <= max_bytes]
            if not cases:
                continue
            best = min(cases, key=lambda p: p.stat().st_size)
            directory.mkdir(parents=True, exist_ok=True)
            if not (directory / best.name).exists():
                shutil.copy(best, directory / best.name)
                shutil.copy(best.with_name(best.name + ".json"), directory / (best.name + ".json"))
            entry["kept"] = str((directory / best.name).relative_to(ROOT))
            kept.append(entry["kept"])
    return kept


def _by_kind(details: dict[str, int], kind: str) -> str:
    """``type count, ...`` of the outcomes of one kind (``0`` when none)."""
    return ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(details.items()) if k.startswith(kind + ":")) or "0"


def write_report(results: dict, args, wall: float, command: str) -> None:
    """bench/results/fuzz.md (summary table and every failure signature) and fuzz.json beside it."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Fuzz campaign",
        "",
        f"Command: `{command}`  ",
        f"Engine: {args.engine}; {args.jobs} worker processes, address space limited to {ADDRESS_SPACE // 1024**3} GiB "
        f"(RLIMIT_AS), OPENBLAS_NUM_THREADS=1; seed {args.seed}; wall time {wall / 60:.1f} min.  ",
        f"A case is *slow* over {fuzzing.SLOW_SECONDS:.0f} s and killed as a *hang* over {HANG_SECONDS:.0f} s. "
        "Outcomes (tests/fuzzing.py): *rejected* = a SparsifyError (the wanted result for damaged input), "
        "*crash* = any other exception, *memory* = MemoryError under the limit, *wrong* = success with output "
        "that differs from the undamaged decode / the file's real content. "
        f"`{fuzzing.RESIGNED}`: archive cases whose damaged parts carry matching sha256s "
        "(only a checksum of decoded tensors can catch those).",
        "",
        "| target | cases | cases/s | ok | rejected (by type) | crashes (by type) | memory | wrong outputs "
        "| slow > 2 s | hangs / deaths | max case s | max RSS MB | worker s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t, r in results.items():
        by = partial(_by_kind, r["details"])
        rate = r["cases"] / r["seconds"] if r["seconds"] else 0
        lines.append(
            f"| {t} | {r['cases']} | {rate:.0f} | {r['kinds'].get('ok', 0)} | {by('rejected')} | {by('crash')} | "
            f"{r['kinds'].get('memory', 0)} | {by('wrong')} | {r['slow']} | {r['hangs']} / {r['deaths']} | "
            f"{r['max_seconds']:.2f} | {r['max_rss_mb']:.0f} | {r['seconds']:.0f} |"
        )
    errors = {t: dict(r["generator_errors"]) for t, r in results.items() if r["generator_errors"]}
    lines += ["", f"Mutator errors (cases not made, not counted): {errors or 'none'}."]
    lines += [
        "",
        "## Failures by signature",
        "",
        "`kind:type@where` (where = innermost frame in sparsify); count; message; reproducer.",
        "",
    ]
    for t, r in results.items():
        for sig, entry in sorted(r["signatures"].items(), key=lambda kv: -kv[1]["count"]):
            where = entry.get("kept") or (entry["cases"][0] if entry["cases"] else "-")
            lines.append(f"- **{t}** `{sig}` x{entry['count']}: {entry['message'][:160]} — `{where}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {
        "command": command,
        "engine": args.engine,
        "jobs": args.jobs,
        "seed": args.seed,
        "wall_seconds": wall,
        "address_space_bytes": ADDRESS_SPACE,
        "slow_seconds": fuzzing.SLOW_SECONDS,
        "hang_seconds": HANG_SECONDS,
        "targets": results,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, allow_nan=True, default=dict) + "\n")


def run_parent(args: argparse.Namespace) -> None:
    targets = args.targets.split(",") if args.targets else list(SHARES)
    work = Path(args.work)
    if args.report_only:  # the report of a finished campaign's work directory, again
        results = merge(work, targets, [])
        wall = max(
            sum(json.loads(p.read_text())["seconds"] for p in work.glob(f"*/slot{i}/stats-*.json"))
            for i in range(args.jobs)
        )
        finish(results, args, wall)
        return
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "command.txt").write_text(command_line())
    print(f"fuzz: building seeds in {work}", flush=True)
    for t in targets:
        fuzzing.make_target(t, work / "seeds")
    seconds = args.minutes * 60
    slots = [Slot(jobs, args, i) for i, jobs in enumerate(plan(targets, seconds, args.jobs))]
    start = time.monotonic()
    print(
        f"fuzz: {args.engine}, {args.jobs} workers, {args.minutes} min: "
        + "; ".join(", ".join(f"{t} {s:.0f}s" for t, s in slot.jobs) for slot in slots),
        flush=True,
    )
    active = list(slots)
    last = start
    while active:
        time.sleep(0.5)
        active = [s for s in active if s.poll()]
        if time.monotonic() - last > 60:
            last = time.monotonic()
            results = merge(work, targets, [e for s in slots for e in s.events])
            print(
                f"fuzz: {(last - start) / 60:.1f} min: " + ", ".join(f"{t} {r['cases']}" for t, r in results.items()),
                flush=True,
            )
    wall = time.monotonic() - start
    finish(merge(work, targets, [e for s in slots for e in s.events]), args, wall)


def command_line() -> str:
    return "python bench/fuzz.py " + " ".join(sys.argv[1:])


def finish(results: dict, args, wall: float) -> None:
    """Keep the reproducers, write the report and print it."""
    if args.keep_cases:
        keep_cases(results, Path(args.keep_cases), args.keep_max_bytes)
    saved = Path(args.work) / "command.txt"
    command = saved.read_text() if args.report_only and saved.exists() else command_line()
    write_report(results, args, wall, command)
    print(Path(args.out).with_suffix(".md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--targets", default="", help=f"comma-separated, of {', '.join(SHARES)} (default all)")
    parser.add_argument("--engine", choices=["atheris", "random"], default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "sparsify-fuzz"))
    parser.add_argument("--resume", action="store_true", help="keep the work directory (and atheris corpus)")
    parser.add_argument("--out", default=str(RESULTS / "fuzz.md"))
    parser.add_argument("--keep-cases", default="", help="copy one reproducer per failure signature here")
    parser.add_argument("--keep-max-bytes", type=int, default=256 * 1024)
    parser.add_argument("--report-only", action="store_true", help="report the campaign already in --work")
    # worker mode (started by the parent)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--segment", default="0", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.engine is None:
        try:
            import atheris  # noqa: F401

            args.engine = "atheris"
        except ImportError:
            args.engine = "random"
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
