"""Start-up time of the CLI (run by ``make bench``): ``--version``, ``--help``, ``compress --help`` and
``inspect`` of small archives, each as a real subprocess of the installed entry point.

Targets (issue 11): ``--version`` and ``--help`` <= 0.3 s, ``inspect`` of a small archive <= 0.5 s.
Each command runs ``--repeats`` times (default 7) after one warm-up run; the best and the median
wall-clock time (``time.perf_counter`` around ``subprocess.run``) are reported. For scale, the same for
``python -c pass`` (the interpreter alone) and ``python -c "import numpy"``.

Writes ``<output-dir>/startup.json`` and ``startup.md`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPARSIFY = Path(sys.executable).with_name("sparsify")
TARGETS = {"--version": 0.3, "--help": 0.3, "compress --help": 0.3, "inspect": 0.5}


def timed(argv: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``argv`` (after one untimed warm-up run)."""
    subprocess.run(argv, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lossless = Path(tmp) / "digits.sparsify"
        folder = Path(tmp) / "crepe-tiny.sparsify"
        subprocess.run(
            [str(SPARSIFY), "compress", "sample_models/digits_mlp.safetensors", "-o", lossless, "-q"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        subprocess.run(
            [str(SPARSIFY), "compress", "sample_models/crepe-tiny", "-o", folder, "-q"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("python -c 'import numpy'", [sys.executable, "-c", "import numpy"], None),
            ("sparsify --version", [str(SPARSIFY), "--version"], "--version"),
            ("sparsify --help", [str(SPARSIFY), "--help"], "--help"),
            ("sparsify compress --help", [str(SPARSIFY), "compress", "--help"], "compress --help"),
            (
                f"sparsify inspect (digits MLP, {lossless.stat().st_size:,} B)",
                [str(SPARSIFY), "inspect", lossless],
                "inspect",
            ),
            ("sparsify inspect (CREPE tiny folder archive)", [str(SPARSIFY), "inspect", folder], "inspect"),
        ]
        rows = []
        for label, argv, target in commands:
            times = timed([str(a) for a in argv], args.repeats)
            limit = TARGETS.get(target) if target else None
            best = min(times)
            rows.append(
                {
                    "command": label,
                    "best_s": round(best, 3),
                    "median_s": round(statistics.median(times), 3),
                    "target_s": limit,
                    "met": None if limit is None else best <= limit,
                }
            )
            print(f"{label}: best {best:.3f} s", file=sys.stderr)
    lines = [
        f"# sparsify start-up ({datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')})",
        "",
        f"Machine: nproc {os.cpu_count()}, Python {sys.version.split()[0]}; each command {args.repeats} times after"
        " a warm-up run, wall clock of the whole subprocess.",
        "",
        "| command | best s | median s | target s | met |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| `{r['command']}` | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['target_s'] or ''} | {met} |")
    text = "\n".join(lines) + "\n"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "startup.md").write_text(text)
    (args.output_dir / "startup.json").write_text(json.dumps({"rows": rows, "repeats": args.repeats}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
