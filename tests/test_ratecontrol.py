"""Rate control and ``-p auto``: the allocation's math, and whole-model targets on the sample models."""

from __future__ import annotations

import itertools
import json
import math
import sys

import pytest
from checkers import input_unchanged, read_tensors, relative_error
from click.testing import CliRunner
from conftest import SAMPLE_FILES
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sparsify
from sparsify.archive.reader import Archive
from sparsify.cli import run
from sparsify.errors import UsageError
from sparsify.ratecontrol import AUTO_CANDIDATES, Point, TensorPlan, allocate, lower_hull, objective_weights

FP32, BF16 = SAMPLE_FILES["fp32"], SAMPLE_FILES["bf16"]


def _plans(curves: list[list[tuple[int, float]]]) -> list[TensorPlan]:
    return [
        TensorPlan(f"t{i}", 1.0, [Point(f"p{j}", r, d, math.sqrt(d)) for j, (r, d) in enumerate(c)])
        for i, c in enumerate(curves)
    ]


def _brute_force(curves, budget):
    best = math.inf
    for combo in itertools.product(*curves):
        if sum(r for r, _ in combo) <= budget:
            best = min(best, sum(d for _, d in combo))
    return best


def test_lower_hull_keeps_the_convex_non_dominated_points():
    points = [
        Point(str(i), r, d, 0.0) for i, (r, d) in enumerate([(10, 9.0), (20, 4.0), (30, 3.9), (40, 1.0), (50, 2.0)])
    ]
    # (30, 3.9) lies above the segment (20, 4) - (40, 1); (50, 2) is dominated by (40, 1)
    assert lower_hull(points) == [0, 1, 3]


convex_curve = st.lists(st.integers(1, 40), min_size=1, max_size=5).map(
    lambda steps: [(sum(steps[: k + 1]) * 10, 100.0 / (k + 1) ** 2) for k in range(len(steps))]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(convex_curve, min_size=1, max_size=3), st.integers(10, 1500))
@example(
    [[(10, 100.0), (20, 25.0)], [(10, 100.0), (120, 25.0)], [(10, 100.0), (110, 25.0), (130, 100 / 9), (140, 6.25)]],
    250,
)
def test_allocation_is_feasible_and_optimal_on_convex_curves(curves, budget):
    plans = _plans(curves)
    outcome = allocate(plans, 0, 0.0, 1.0, budget_bytes=budget)
    total_bytes = sum(t.points[t.chosen].nbytes for t in plans)
    total_error = sum(t.points[t.chosen].sq_error for t in plans)
    optimum = _brute_force(curves, budget)
    if optimum == math.inf:
        assert not outcome["met"]
    else:
        assert outcome["met"] and total_bytes <= budget
        # the greedy walk on hulls is within the break segment's ΔD of the LP relaxation's optimum,
        # so within the largest hull step of the optimum (the local search only improves on it)
        largest_step = max((a[1] - b[1] for c in curves for a, b in itertools.pairwise(c)), default=0.0)
        assert total_error <= optimum + largest_step * (1 + 1e-12)


def test_local_search_swaps_several_steps_of_one_tensor_for_another_tensors_step():
    """The greedy walk stops at 131.25 here (the third tensor three steps up, the second none); the
    local search moves the third two hull steps down to pay for the second's one: the optimum, 75."""
    curves = [
        [(10, 100.0), (20, 25.0)],
        [(10, 100.0), (120, 25.0)],
        [(10, 100.0), (110, 25.0), (130, 11.1), (140, 6.25)],
    ]
    plans = _plans(curves)
    assert allocate(plans, 0, 0.0, 1.0, budget_bytes=250)["met"]
    assert [t.chosen for t in plans] == [1, 1, 1]
    assert sum(t.points[t.chosen].sq_error for t in plans) == _brute_force(curves, 250) == 75.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 200), st.floats(0, 100)), min_size=1, max_size=5), min_size=1, max_size=4
    ),
    st.integers(1, 600),
)
def test_allocation_never_breaks_the_budget_and_is_locally_optimal(curves, budget):
    plans = _plans(curves)
    outcome = allocate(plans, 0, 0.0, 1.0, budget_bytes=budget)
    total_bytes = sum(t.points[t.chosen].nbytes for t in plans)
    if not outcome["met"]:
        assert total_bytes == sum(min(p.nbytes for p in t.points) for t in plans) or total_bytes > budget
        return
    assert total_bytes <= budget
    total_error = sum(t.points[t.chosen].sq_error for t in plans)
    for t in plans:  # no single tensor can move to a better point within the budget
        for p in t.points:
            if total_bytes - t.points[t.chosen].nbytes + p.nbytes <= budget:
                assert total_error - t.points[t.chosen].sq_error + p.sq_error >= total_error - 1e-9


def test_error_target_takes_the_fewest_bytes_that_meet_it():
    curves = [[(10, 50.0), (20, 10.0), (40, 1.0)], [(5, 20.0), (15, 5.0), (30, 0.5)]]
    plans = _plans(curves)
    outcome = allocate(plans, 0, 0.0, 100.0, max_rel_error=math.sqrt(20.0 / 100.0))
    chosen = [(t.points[t.chosen].nbytes, t.points[t.chosen].sq_error) for t in plans]
    assert outcome["met"] and sum(d for _, d in chosen) <= 20.0
    feasible = [c for c in itertools.product(*curves) if sum(d for _, d in c) <= 20.0]
    assert sum(r for r, _ in chosen) == min(sum(r for r, _ in c) for c in feasible)


def test_target_ratio_8_lands_within_5_percent_on_every_sample(sample, tmp_path):
    path = sample
    with input_unchanged(path):
        report = sparsify.compress(path, tmp_path / "a.sparsify", target_ratio=8)
    ratio = report["totals"]["ratio"]
    assert 8 <= ratio <= 8 * 1.05, ratio
    plan = report["plan"]
    assert plan["met"] and plan["mode"] == "ratio" and plan["archive_bytes"] <= plan["budget_bytes"]
    assert any(t["reason"].startswith("rate control") for t in report["tensors"])


@pytest.mark.parametrize("target", [5.0, 9.75, 13.5])
def test_a_byte_budget_holds_by_construction(target, tmp_path, monkeypatch):
    """The written archive's size is one the planner computed exactly (from the very manifest it
    writes), and it fits: the ratio is met by construction, not by the manifest's last digits."""
    import sparsify.planner as planner

    real = planner.predicted_size
    predicted = []
    monkeypatch.setattr(planner, "predicted_size", lambda *a: predicted.append(real(*a)) or predicted[-1])
    report = sparsify.compress(SAMPLE_FILES["npz"], tmp_path / "a.sparsify", target_ratio=target)
    assert report["plan"]["met"] and report["totals"]["ratio"] >= target
    assert (tmp_path / "a.sparsify").stat().st_size in predicted  # what was planned is what was written


def test_target_size_and_error(tmp_path):
    path = FP32
    report = sparsify.compress(path, tmp_path / "s.sparsify", target_size=30_000)
    assert 0.95 * 30_000 <= report["totals"]["stored_bytes"] <= 30_000
    report = sparsify.compress(path, tmp_path / "e.sparsify", target_error=0.1)
    lossy = [t for t in report["tensors"] if not t["exact"]]
    originals, decoded = (
        read_tensors(path),
        read_tensors(sparsify.decompress(tmp_path / "e.sparsify", tmp_path / "e.st")),
    )
    sq_error = sum(
        relative_error(originals[t["name"]], decoded[t["name"]]) ** 2 * _sq(originals[t["name"]]) for t in lossy
    )
    assert math.sqrt(sq_error / sum(_sq(originals[t["name"]]) for t in lossy)) <= 0.1
    assert report["plan"]["met"]


def _sq(array) -> float:
    return float((array.astype("float64") ** 2).sum())


def test_rate_control_is_deterministic(tmp_path):
    path = BF16
    sparsify.compress(path, tmp_path / "a.sparsify", target_ratio=6)
    sparsify.compress(path, tmp_path / "b.sparsify", target_ratio=6)
    assert (tmp_path / "a.sparsify").read_bytes() == (tmp_path / "b.sparsify").read_bytes()


def test_auto_takes_the_fewest_bytes_within_the_bound(tmp_path):
    path = FP32
    report = sparsify.compress(path, tmp_path / "auto.sparsify", pipeline="auto", max_error=0.05)
    assert report["gate"]["passed"] and report["plan"]["mode"] == "auto"
    assert report["plan"]["candidates"] == 3 * len(AUTO_CANDIDATES)
    for candidate in AUTO_CANDIDATES:
        single = sparsify.compress(path, tmp_path / "one.sparsify", pipeline=candidate.format(e=0.05), force=True)
        for row, auto_row in zip(single["tensors"], report["tensors"], strict=True):
            if auto_row["reason"].startswith("auto") and row["rel_error"] <= 0.05:
                assert auto_row["stored_bytes"] <= row["stored_bytes"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_ratio": 8, "target_size": 100}, "give one target"),
        ({"target_ratio": 8, "pipeline": "threshold:sparsity=0.5"}, "use -p auto"),
        ({"pipeline": "auto"}, "-p auto needs a bound or a target"),
        ({"target_ratio": -1}, "target_ratio must be a number > 0"),
        ({"target_ratio": 8, "objective": "cosine"}, "unknown objective 'cosine'"),
        ({"target_error": 0.1, "objective": "relative"}, "applies to a size target"),
        ({"pipeline": "auto", "max_error": 0.1, "objective": "relative"}, "applies to a size target"),
    ],
)
def test_usage_errors(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        sparsify.compress(FP32, tmp_path / "x.sparsify", **kwargs)
    assert not (tmp_path / "x.sparsify").exists()


def test_unreachable_target_exits_1_with_one_line(tmp_path, capsys):
    path = FP32
    code = run(["compress", str(path), "-o", str(tmp_path / "a.sparsify"), "--target-size", "2000", "-q", "--json"])
    assert code == 1
    assert "target not reached" in capsys.readouterr().err
    assert (tmp_path / "a.sparsify").exists()  # written all the same, with the plan saying why
    assert sparsify.inspect(tmp_path / "a.sparsify")["plan"]["met"] is False


def test_cli_target_ratio_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = FP32
    png = tmp_path / "rd.png"
    result = CliRunner().invoke(
        sparsify.cli.cli,
        [
            "compress",
            str(path),
            "-o",
            str(tmp_path / "a.sparsify"),
            "--target-ratio",
            "8",
            "--plot",
            str(png),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 8 <= report["totals"]["ratio"] <= 8.4 and report["totals"]["bits_by_kind"]["values"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(["plot", str(path), "-o", str(png), "-q"]) == 4  # no overwrite without --force
    assert "exists" in capsys.readouterr().err
    assert run(["plot", str(path), "-o", str(png), "-q", "--force"]) == 0


def test_plot_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = run(["plot", str(FP32), "-o", str(tmp_path / "p.png")])
    assert code == 2
    assert "pip install 'sparsify[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_rate_distortion_curves():
    curves = sparsify.api.rate_distortion(FP32)
    labels = [c["label"] for c in curves]
    assert labels[0].startswith("rate control") and any(label.startswith("RTN") for label in labels)
    best = sorted((p["bits_per_weight"], p["rel_error"]) for p in curves[0]["points"])
    assert len(best) >= 10
    assert all(e2 <= e1 + 1e-12 for (_, e1), (_, e2) in zip(best, best[1:], strict=False))


def test_small_tensors_are_planned_as_by_the_exhaustive_reference(tmp_path, monkeypatch):
    """Tensors too small to sample are measured exactly whatever the planner: the estimated plan of
    the digits MLP is the exhaustive one, byte for byte."""
    from sparsify.planner import RATE_CONTROL_ENV

    sparsify.compress(BF16, tmp_path / "new.sparsify", target_ratio=8)
    monkeypatch.setenv(RATE_CONTROL_ENV, "exhaustive")
    sparsify.compress(BF16, tmp_path / "ref.sparsify", target_ratio=8)
    assert (tmp_path / "new.sparsify").read_bytes() == (tmp_path / "ref.sparsify").read_bytes()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(convex_curve, st.floats(0.01, 100.0)), min_size=1, max_size=3),
    st.integers(10, 1500),
)
def test_weighted_allocation_is_optimal_for_its_own_distortion(curves_and_norms, budget):
    """With objective weights the allocation minimises the weighted error (here: each tensor's
    squared error over its squared norm, as ``relative`` weighs it), within the same budget."""
    curves = [c for c, _ in curves_and_norms]
    plans = _plans(curves)
    for t, (_, norm) in zip(plans, curves_and_norms, strict=True):
        t.sq_norm = norm
    weights = objective_weights("relative", plans)
    outcome = allocate(plans, 0, 0.0, 1.0, budget_bytes=budget, weights=weights)
    weighted = [[(r, w * d) for r, d in c] for c, w in zip(curves, weights, strict=True)]
    optimum = _brute_force(weighted, budget)
    if optimum == math.inf:
        assert not outcome["met"]
        return
    chosen = [t.points[t.chosen] for t in plans]
    assert outcome["met"] and sum(p.nbytes for p in chosen) <= budget
    total = sum(w * p.sq_error for w, p in zip(weights, chosen, strict=True))
    assert total <= optimum + max(d for c in weighted for _, d in c) * 0.5
    # the prediction is the unweighted figure, as the report measures it
    assert outcome["predicted_weighted_rel_error"] == pytest.approx(math.sqrt(sum(p.sq_error for p in chosen)))


def test_objective_weights():
    plans = [TensorPlan("a", 4.0, []), TensorPlan("b", 1.0, []), TensorPlan("c", 0.0, [])]
    assert objective_weights("sse", plans) is None
    assert objective_weights("relative", plans) == [2.5 / 4.0, 2.5 / 1.0, 1.0]  # mean norm 2.5; zero norm weighs 1


def test_relative_objective_spends_bytes_on_relative_error(tmp_path):
    """On a real model the relative objective lowers the sum of squared relative errors at the same
    size target, and the total squared error is what the default lowers; both are recorded."""
    figures = {}
    for objective in ("sse", "relative"):
        out = tmp_path / f"{objective}.sparsify"
        report = sparsify.compress(SAMPLE_FILES["crepe"], out, target_ratio=8, objective=objective)
        assert report["plan"]["met"]
        lossy = [r for r in report["tensors"] if not r["exact"]]
        figures[objective] = (
            sum(r["rel_error"] ** 2 for r in lossy),
            report["totals"]["weighted_rel_error"],
        )
        manifest = Archive(out).manifest
        assert manifest["options"].get("objective") == (None if objective == "sse" else "relative")
        assert manifest["plan"].get("objective") == (None if objective == "sse" else "relative")
    assert figures["relative"][0] < figures["sse"][0]
    assert figures["sse"][1] <= figures["relative"][1]
