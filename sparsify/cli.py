"""The ``sparsify`` command: a thin click shell over :mod:`sparsify.api`.

Exit codes (also in ``sparsify --help`` and the README): 0 success; 1 a gate failed (an error bound
broken, or verify found a mismatch); 2 usage error; 3 unreadable, unsupported or corrupt input;
4 cannot write the output; 70 internal error (a bug: please report it, ``--debug`` shows the trace).
:func:`main` is the only place that turns exceptions into exit codes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import click

from sparsify import __version__
from sparsify.errors import ExitCode, OutputError, SparsifyError, UsageError

# The library, rich and the methods are imported by the commands that use them, so that --version
# and --help answer at once.


def _api():
    from sparsify import api

    return api


def progress_bar(label: str, enabled: bool = True):
    """:func:`sparsify.report.progress.progress_bar`, imported when a command runs."""
    from sparsify.report.progress import progress_bar as bar

    return bar(label, enabled)


INTERNAL_ERROR = 70

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  a gate failed: --max-error broken, a --target-* not reached, or verify found a mismatch
  2  usage error (bad option, pipeline or rule)
  3  unreadable, unsupported or corrupt input
  4  cannot write the output (exists without --force, permission, space)
  70 internal error (a bug; --debug shows the traceback)"""

_debug = False


def _set_debug(ctx, param, value):
    global _debug
    _debug = value or os.environ.get("SPARSIFY_DEBUG", "") not in ("", "0")
    return _debug


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "--version", prog_name="sparsify")
@click.option(
    "--debug",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_set_debug,
    help="Show tracebacks instead of one-line errors.",
)
def cli() -> None:
    """Compress saved neural-network weights (safetensors, Keras HDF5, npz) into a .sparsify archive.

    \b
    Examples:
      sparsify compress model.safetensors                       # lossless (keep+zstd)
      sparsify compress model.safetensors -p 'threshold:max_error=0.05' --max-error 0.05
      sparsify inspect model.sparsify --markdown
      sparsify decompress model.sparsify -o restored.safetensors
      sparsify methods
    """


def _report_format(json_flag: bool, markdown_flag: bool) -> str:
    if json_flag and markdown_flag:
        raise click.UsageError("choose one of --json and --markdown")
    return "json" if json_flag else "markdown" if markdown_flag else "table"


def _view(wide: bool, columns_text: str | None, all_rows: bool) -> dict:
    """The table's options (checked before any work): ``wide``, ``columns`` (keys) and ``all_rows``."""
    if wide and columns_text is not None:
        raise click.UsageError("choose one of --wide and --columns")
    columns = None
    if columns_text is not None:
        from sparsify.report.columns import parse_columns

        columns = parse_columns(columns_text)
    return {"wide": wide, "columns": columns, "all_rows": all_rows}


def _emit(report: dict, fmt: str, view: dict | None = None) -> None:
    from sparsify.report.render import render_json, render_markdown, render_table

    out = sys.stdout
    if fmt == "json":
        render_json(report, out)
    elif fmt == "markdown":
        render_markdown(report, out, **(view or {}))
    else:
        render_table(report, out, **(view or {}))


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(message, err=True)


class _WarningLine(logging.Handler):
    """The library's warnings (a stale temporary file removed) as ``sparsify: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"sparsify: {record.getMessage()}", err=True)


def _route_warnings(quiet: bool) -> None:
    """Print the ``sparsify`` logger's warnings on stderr, or none with ``--quiet``."""
    logger = logging.getLogger("sparsify")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _WarningLine)]
    handler = _WarningLine(logging.CRITICAL + 1 if quiet else logging.WARNING)
    logger.addHandler(handler)


_PIPELINE_OPTIONS = (
    click.option(
        "-p",
        "--pipeline",
        metavar="PIPELINE",
        help="Default pipeline, e.g. 'threshold:max_error=0.05', or 'auto' (with --max-error) [default: keep+zstd].",
    ),
    click.option(
        "--rule",
        "rules",
        multiple=True,
        metavar="GLOB=PIPELINE",
        help="Per-tensor pipeline; repeatable, first match wins.",
    ),
    click.option(
        "--rules",
        "rules_file",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="TOML file of rules (after --rule ones).",
    ),
    click.option(
        "--min-size",
        type=click.IntRange(min=0),
        help="Tensors with fewer elements stay lossless unless a rule names them [default: 1024].",
    ),
    click.option(
        "--max-error",
        type=click.FloatRange(min=0),
        help="Gate: exit 1 if any tensor's rel. error exceeds this (archive still written).",
    ),
    click.option(
        "--target-ratio",
        type=click.FloatRange(min=0, min_open=True),
        metavar="R",
        help="Whole model: least total error with INPUT bytes / archive bytes >= R (chooses each tensor's pipeline).",
    ),
    click.option(
        "--target-size",
        type=click.IntRange(min=1),
        metavar="BYTES",
        help="Whole model: least total error with the archive at most BYTES.",
    ),
    click.option(
        "--target-error",
        type=click.FloatRange(min=0),
        metavar="E",
        help="Whole model: fewest bytes with the weighted rel. error of the lossy tensors <= E.",
    ),
    click.option(
        "--objective",
        type=click.Choice(["sse", "relative"]),
        help="What --target-ratio/--target-size minimise: sse, the model's total squared error, or relative, "
        "the sum of each tensor's squared relative error [default: sse].",
    ),
    click.option(
        "--importance",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="With --target-ratio/--target-size: minimise the error weighted by FILE, a safetensors file of "
        "importance vectors named after the tensors (per input channel, per row NAME:rows, or per weight; "
        "sparsify.importance records one for a torch model).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for randomised methods."),
)


def _with(options):
    """A decorator that adds ``options`` to a command, in the order listed."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


_pipeline_options = _with(_PIPELINE_OPTIONS)
"""The options that choose the pipelines (shared by compress and plot), passed on as ``**choice``."""


_JOBS_OPTIONS = (
    click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=1),
        metavar="N",
        help="Worker processes [default: every core; 1 for models under 8 MB]; the archive is the same for every N.",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run the tensors on a Dask cluster, e.g. tcp://host:8786 (or $SPARSIFY_SCHEDULER; needs sparsify[dask]).",
    ),
)

_jobs_options = _with(_JOBS_OPTIONS)


_VIEW_OPTIONS = (
    click.option(
        "--wide",
        is_flag=True,
        help="Every column of the per-tensor table (split into blocks where the terminal is too narrow).",
    ),
    click.option(
        "--columns",
        "columns_text",
        metavar="COLS",
        help="The table's columns after the tensor name, comma-separated: file, shape, dtype, pipeline, original, "
        "stored, ratio, bits, values, indices, dict, scales, overhead, density, error, max-abs, snr, cosine "
        "[default: shape,pipeline,ratio,bits,error].",
    ),
    click.option(
        "--all",
        "all_rows",
        is_flag=True,
        help="A row for every tensor, also for models of more than 40 tensors (shown as a summary by default).",
    ),
)

_view_options = _with(_VIEW_OPTIONS)
"""How the report's table looks (compress, inspect), passed on as ``wide``, ``columns_text``, ``all_rows``."""


def _html_option(what: str):
    return click.option(
        "--html",
        "html_path",
        type=click.Path(path_type=Path),
        metavar="FILE.html",
        help=f"Also write the report as one self-contained HTML file{what}.",
    )


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Archive to write [default: INPUT with .sparsify; a folder DIR: DIR.sparsify/].",
)
@_pipeline_options
@_jobs_options
@click.option("--json", "json_flag", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--markdown", "markdown_flag", is_flag=True, help="Print the report as Markdown on stdout.")
@_view_options
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    metavar="FILE.png",
    help="Also draw the model's rate-distortion curves and per-layer bars (needs sparsify[plot]).",
)
@_html_option(
    ": summary, plots (the rate-distortion curves are measured as for --plot; needs sparsify[plot]) "
    "and a sortable, filterable table"
)
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT (and the plot and HTML report) if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or messages on stderr.")
def compress(
    input_path,
    output,
    json_flag,
    markdown_flag,
    wide,
    columns_text,
    all_rows,
    plot_path,
    html_path,
    force,
    quiet,
    jobs,
    scheduler,
    **choice,
):
    """Compress INPUT (safetensors, HDF5 or npz) into an archive and print the size/error report.

    INPUT may be a model folder (or its model.safetensors.index.json): every weight file is
    compressed into DIR.sparsify/NAME.sparsify, with one plan for the whole model; the other files
    (config, tokenizer...) are carried byte for byte, all listed in DIR.sparsify/sparsify.index.json.

    \b
    Pipelines: stages joined by '+', each 'method:key=value,...' (see `sparsify methods`):
      keep+zstd                             lossless, entropy coded
      threshold:sparsity=0.9                drop the 90% smallest weights
      threshold:max_error=0.05+zstd         largest threshold with rel. error <= 0.05
      quant:bits=4,group=128+zstd           round-to-nearest int4, a scale per 128 weights
      threshold:sparsity=0.7+int8+zstd      sparse, kept values as int8 with scales
      auto (with --max-error E)             per tensor, the fewest bytes within E
    --target-ratio/--target-size/--target-error choose every tensor's pipeline for the whole model.
    1-D, integer, bool and small tensors stay lossless unless a rule names them.
    """
    _route_warnings(quiet)
    fmt = _report_format(json_flag, markdown_flag)
    view = _view(wide, columns_text, all_rows)
    if plot_path is not None:
        _check_plot_path(plot_path, force)
    if html_path is not None:
        _check_html_path(html_path, force, input_path)
    with progress_bar("compress", enabled=not quiet) as progress:
        report = _api().compress(
            input_path, output, force=force, progress=progress, jobs=jobs, scheduler=scheduler, **choice
        )
        curves = None
        if plot_path is not None or (html_path is not None and _has_matplotlib()):
            curves = _curves(input_path, choice, progress)
        if plot_path is not None:
            from sparsify.report.plot import render_plot

            render_plot(report, curves, plot_path)
        if html_path is not None:
            _write_html(html_path, report, curves, force, input_path)
    _emit(report, fmt, view)
    status = _gates(report)
    if status == ExitCode.OK:
        written = [str(p) for p in (report["archive"]["path"], plot_path, html_path) if p is not None]
        _note("wrote " + ", ".join(written[:-1]) + (" and " if len(written) > 1 else "") + written[-1], quiet)
    return status


def _gates(report: dict) -> ExitCode:
    """Exit status from the report's gates, with a one-line message for each failure."""
    status = ExitCode.OK
    gate = report["gate"]
    if gate is not None and not gate["passed"]:
        _note(f"sparsify: gate failed: rel. error above {gate['max_error']} in {', '.join(gate['failures'])}", False)
        status = ExitCode.GATE_FAILED
    plan = report.get("plan")
    if plan is not None and plan.get("met") is False:
        target = ", ".join(f"{k} {v}" for k, v in (plan.get("target") or {}).items())
        _note(f"sparsify: target not reached ({target}): the smallest choice is {plan['archive_bytes']} bytes", False)
        status = ExitCode.GATE_FAILED
    return status


def _check_plot_path(path: Path, force: bool) -> None:
    from sparsify.report.plot import require_matplotlib

    require_matplotlib()
    if path.exists() and not force:
        raise OutputError(f"{path} exists; use --force to overwrite it")


def _curves(input_path, choice, progress) -> list:
    """The model's rate-distortion curves for the plot, with the options that chose the pipelines."""
    keys = ("rules", "rules_file", "min_size", "seed")
    return _api().rate_distortion(input_path, progress=progress, **{k: choice[k] for k in keys})


def _plot(input_path, report, plot_path, choice, progress) -> None:
    from sparsify.report.plot import render_plot

    render_plot(report, _curves(input_path, choice, progress), plot_path)


def _has_matplotlib() -> bool:
    from sparsify.report.plot import require_matplotlib

    try:
        require_matplotlib()
    except UsageError:
        return False
    return True


def _check_html_path(path: Path, force: bool, *inputs: Path) -> None:
    """Fail before any work when the HTML report cannot be written (exists without --force, no folder)."""
    from sparsify.atomic import check_destination

    check_destination(path, force, tuple(Path(i) for i in inputs))


def _write_html(path: Path, report: dict, curves, force: bool, *inputs: Path, verification=None) -> None:
    from sparsify.report.html import write_html

    write_html(path, report, curves=curves, verification=verification, force=force, inputs=tuple(map(Path, inputs)))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="PNG to write [default: INPUT with .png].")
@_pipeline_options
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or messages on stderr.")
def plot(input_path, output, force, quiet, **choice):
    """Draw INPUT's rate-distortion curves and per-layer bars into a PNG (needs sparsify[plot]).

    The top panel: weighted rel. error against bits per weight for the best pipeline per tensor at
    a sweep of budgets, one uniform quantiser step for all tensors, and RTN int8/int4/int2. The
    bottom panel: bits per weight by part kind and rel. error of each tensor, for the archive that
    the options describe (default: --target-ratio 8), compressed into a temporary file.
    """
    _route_warnings(quiet)
    output = output or Path(input_path).with_suffix(".png")
    _check_plot_path(output, force)
    targets = ("pipeline", "target_ratio", "target_size", "target_error")
    if all(choice[k] is None for k in targets):
        choice["target_ratio"] = 8.0
    with progress_bar("plot", enabled=not quiet) as progress, tempfile.TemporaryDirectory() as tmp:
        report = _api().compress(input_path, Path(tmp) / "plot.sparsify", progress=progress, **choice)
        report["archive"]["path"] = "(not kept)"
        _plot(input_path, report, output, choice, progress)
    _note(f"wrote {output}", quiet)
    return ExitCode.OK


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--json", "json_flag", is_flag=True, help="Print the report as JSON.")
@click.option("--markdown", "markdown_flag", is_flag=True, help="Print the report as Markdown.")
@_view_options
@_html_option(": summary, per-tensor plot (needs sparsify[plot]) and a sortable, filterable table")
@click.option("-f", "--force", is_flag=True, help="Overwrite the HTML report if it exists.")
def inspect(archive, json_flag, markdown_flag, wide, columns_text, all_rows, html_path, force):
    """Show what is inside ARCHIVE (an archive or a folder archive), per tensor, from its manifests
    (nothing is decoded). Models of more than 40 tensors are summarised: totals, tensors grouped by
    name pattern, the worst tensors (--all for every row)."""
    from sparsify.inspection import inspect as inspect_archive

    fmt = _report_format(json_flag, markdown_flag)
    view = _view(wide, columns_text, all_rows)
    if html_path is not None:
        _check_html_path(html_path, force, archive)
    report = inspect_archive(archive)
    if html_path is not None:
        _write_html(html_path, report, None, force, archive)
    _emit(report, fmt, view)
    return ExitCode.OK


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="File to write [default: the source's name, beside ARCHIVE].",
)
@click.option(
    "--format", "fmt", type=click.Choice(["safetensors", "hdf5", "npz"]), help="Output format [default: the source's]."
)
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or messages on stderr.")
def decompress(archive, output, fmt, force, quiet):
    """Decode ARCHIVE back to dense weights, in the original format (or --format).

    The original file comes back byte-identical (safetensors, numpy-written npz) or tree-identical
    (HDF5: groups, attributes, dataset settings) wherever the pipeline was lossless. A folder
    archive comes back as the model folder (shards, shard index, config...), in its own formats.
    """
    _route_warnings(quiet)
    with progress_bar("decompress", enabled=not quiet) as progress:
        written = _api().decompress(archive, output, format=fmt, force=force, progress=progress)
    _note(f"wrote {written}", quiet)
    return ExitCode.OK


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--against",
    type=click.Path(path_type=Path),
    metavar="ORIGINAL",
    help="Measure errors against this original weight file.",
)
@click.option("--max-error", type=click.FloatRange(min=0), help="Gate: exit 1 if any tensor's rel. error exceeds this.")
@click.option("--json", "json_flag", is_flag=True, help="Print the result as JSON.")
@_html_option(": the archive's report with the outcome, per-tensor plot (needs sparsify[plot]) and table")
@click.option("-f", "--force", is_flag=True, help="Overwrite the HTML report if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; the exit code tells.")
def verify(archive, against, max_error, json_flag, html_path, force, quiet):
    """Decode every tensor of ARCHIVE, checking every checksum; exit 1 on any mismatch.

    A folder archive: also every member archive and carried file against its index; --against is
    then the original folder."""
    if html_path is not None:
        _check_html_path(html_path, force, archive, *([against] if against is not None else []))
    with progress_bar("verify", enabled=not quiet) as progress:
        result = _api().verify(archive, against=against, max_error=max_error, progress=progress)
    if html_path is not None:
        from sparsify.inspection import inspect as inspect_archive

        inputs = (archive, *([against] if against is not None else []))
        _write_html(html_path, inspect_archive(archive), None, force, *inputs, verification=result.as_dict())
    if json_flag:
        from sparsify.report.render import render_json

        render_json(result.as_dict(), sys.stdout)
    elif not quiet:
        for problem in result.problems:
            click.echo(f"mismatch: {problem}")
        if result.gate is not None and not result.gate["passed"]:
            click.echo(f"gate max_error={max_error}: FAILED for {', '.join(result.gate['failures'])}")
        click.echo(f"{archive}: {result.checked} tensors checked, " + ("OK" if result.ok else "FAILED"))
    return ExitCode.OK if result.ok else ExitCode.GATE_FAILED


@cli.command()
@click.option("--json", "json_flag", is_flag=True, help="Print the methods as JSON.")
def methods(json_flag):
    """List the pipeline stages, their parameters, ranges, defaults, budgets and an example."""
    from sparsify.methods import CODERS, METHODS, VALUE_CODERS
    from sparsify.pipeline import describe_param, value_text

    stages = (
        [("method", cls) for cls in METHODS.values()]
        + [("value coder", cls) for cls in VALUE_CODERS.values()]
        + [("coder", cls) for cls in CODERS.values()]
    )
    if json_flag:
        data = [
            {
                "name": cls.name,
                "kind": kind,
                "summary": cls.summary,
                "example": cls.example,
                "params": [describe_param(p) for p in cls.params],
            }
            for kind, cls in stages
        ]
        click.echo(json.dumps(data, indent=2))
        return ExitCode.OK
    click.echo("Pipeline: stages joined by '+', each 'name:key=value,...'. Methods add up (each encodes the")
    click.echo("residual of the ones before); then at most one value coder, which stores the methods' float")
    click.echo("parts (precision, integers, codebook); byte coders come last and apply to every stored part.")
    click.echo("'-p auto' (with --max-error) or a --target-* option chooses the pipeline per tensor.\n")
    for kind, cls in stages:
        click.echo(f"{cls.name}  ({kind}) - {cls.summary}")
        budgets = [p for p in cls.params if p.budget]
        for p in cls.params:
            default = f"  [default: {value_text(p.default)}]" if p.default is not None else ""
            click.echo(f"    {p.name:<12}{p.range_text()}{default}")
            for line in textwrap.wrap(p.doc, width=84):
                click.echo(" " * 16 + line)
        if budgets:
            click.echo(f"    budget: exactly one of {', '.join(p.name for p in budgets)}")
        click.echo(f"    example: {cls.example}\n")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and exit with the code of :mod:`sparsify.errors`."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the one place errors become codes)."""
    try:
        result = cli.main(args=argv, prog_name="sparsify", standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("sparsify: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("sparsify: interrupted", err=True)
        return 130
    except SparsifyError as exc:
        if _debug:
            raise
        click.echo(f"sparsify: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # a bug: one line, not a traceback, unless --debug
        if _debug:
            raise
        click.echo(
            f"sparsify: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True
        )
        return INTERNAL_ERROR
