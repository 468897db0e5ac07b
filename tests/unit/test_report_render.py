"""The report's pure parts: the verdict's wording, the page's sections, tables and plots, and what it does
with missing or malformed numbers. No database, no files."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from defectloop.report import plots
from defectloop.report.data import (
    Calibration,
    ChampionInfo,
    Confusion,
    DemoRunInfo,
    GalleryItem,
    HistoryEntry,
    ReportData,
    RoundPoint,
)
from defectloop.report.load import flatten_settings, parse_calibration, parse_confusion, parse_round
from defectloop.report.render import SECTIONS, TIE_MARGIN, headline_verdict, render_report

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def point(round_: int, arm: str, f1: float | None, **extra: Any) -> RoundPoint:
    values: dict[str, Any] = {
        "labels_used": 20 + 20 * round_,
        "defects_found": 5 + 5 * round_,
        "macro_f1": f1,
        "defect_recall": None if f1 is None else f1 - 0.05,
    }
    values.update(extra)
    return RoundPoint(round=round_, arm=arm, **values)


def curves(active: list[float], random: list[float]) -> tuple[RoundPoint, ...]:
    return tuple(
        p
        for r, (a, b) in enumerate(zip(active, random, strict=True))
        for p in (point(r, "active", a), point(r, "random", b))
    )


CALIBRATION = Calibration(
    bin_edges=(0.0, 0.25, 0.5, 0.75, 1.0),
    confidence=(0.1, 0.4, 0.6, 0.9),
    accuracy=(0.2, 0.35, 0.6, 0.85),
    count=(3, 5, 10, 30),
)
BINARY = Confusion(classes=("ok", "defective"), matrix=((20, 3), (4, 13)))
TYPES = Confusion(classes=("hole", "raw_edge"), matrix=((5, 1), (2, 6)))


def full_data() -> ReportData:
    rounds = list(curves([0.5, 0.62, 0.71], [0.5, 0.55, 0.6]))
    rounds[-2] = replace(
        rounds[-2],
        calibration=CALIBRATION,
        confusion_binary=BINARY,
        confusion_multiclass=TYPES,
        ece=0.04,
        timings=(("train", 30.0), ("predict", 4.0), ("custom", 1.0)),
    )
    rounds[-1] = replace(rounds[-1], calibration=CALIBRATION, timings=(("train", 28.0),))
    return ReportData(
        generated_at=NOW,
        database="sqlite:///x.db",
        run=DemoRunInfo(
            name="run-1",
            status="finished",
            started_at=NOW,
            finished_at=NOW,
            reason=None,
            settings=(("rounds", "2"), ("strategy", "entropy")),
        ),
        rounds=tuple(rounds),
        champions=(
            ChampionInfo("binary", "binary-resnet18-0003", "resnet18", ("ok", "defective"), NOW, 0.71, 60),
        ),
        history=(
            HistoryEntry(
                when=NOW,
                task="binary",
                action="promote",
                champion="binary-resnet18-0001",
                challenger="binary-resnet18-0003",
                reason="promote: macro-F1 0.710 against 0.620",
                actor="policy",
                champion_macro_f1=0.62,
                challenger_macro_f1=0.71,
                gain=0.09,
                ci_low=0.02,
                ci_high=0.15,
                p_value=0.012,
                n_eval=60,
            ),
            HistoryEntry(
                when=NOW,
                task="binary",
                action="keep (reject)",
                champion="a",
                challenger="b",
                reason="keep: <small>",
            ),
        ),
        history_total=2,
        gallery=(
            GalleryItem(1, "a.png", "/x/a.png", "hole", 0.97, "hole", True, PNG_1PX, PNG_1PX),
            GalleryItem(2, "b.png", "/x/b.png", "ok", 0.41, None, False, PNG_1PX, None, "no heat-map: why"),
        ),
        gallery_model_key="b3-m4",
        settings=(("rounds", "2"),),
        settings_source="demo run run-1",
    )


# --- the verdict ------------------------------------------------------------------------------------


def test_a_win_says_so_with_both_numbers_the_labels_and_the_defects() -> None:
    verdict = headline_verdict(curves([0.5, 0.6, 0.72], [0.5, 0.58, 0.61]))
    assert verdict.outcome == "win"
    assert verdict.text.startswith("Active learning beat random labelling")
    assert "at 60 labels each (round 2)" in verdict.text
    assert "0.720 against 0.610 (+0.110)" in verdict.text
    assert "ahead in 2 of 2" in verdict.text
    assert "found 15 defects against 15" in verdict.text


def test_a_loss_says_active_learning_did_not_beat_random() -> None:
    verdict = headline_verdict(curves([0.5, 0.55], [0.5, 0.6]))
    assert verdict.outcome == "lose"
    assert verdict.text.startswith("Active learning did not beat random labelling")
    assert "(\u22120.050)" in verdict.text


def test_a_difference_within_the_margin_is_a_tie_and_names_the_margin() -> None:
    verdict = headline_verdict(curves([0.5, 0.61], [0.5, 0.6]))
    assert verdict.outcome == "tie"
    assert "tied" in verdict.text
    assert f"\u00b1{TIE_MARGIN:.2f}" in verdict.text


@pytest.mark.parametrize(
    ("rounds", "words"),
    [
        ((), "No demo has run"),
        (curves([0.5], [0.5]), "Only round 0"),
        ((point(0, "active", 0.5), point(1, "active", 0.6)), "No round has a frozen-set macro-F1 for both"),
        (curves([0.5, None], [0.5, None]), "Only round 0"),  # type: ignore[list-item]
    ],
)
def test_no_verdict_without_two_scored_arms(rounds: tuple[RoundPoint, ...], words: str) -> None:
    verdict = headline_verdict(rounds)
    assert verdict.outcome == "none"
    assert words in verdict.text


def test_unequal_label_counts_are_named() -> None:
    rounds = (point(0, "active", 0.5), point(0, "random", 0.5), point(1, "active", 0.7))
    rounds += (point(1, "random", 0.6, labels_used=38),)
    assert "(active 40 labels, random 38)" in headline_verdict(rounds).text


# --- the page --------------------------------------------------------------------------------------


def test_every_section_table_and_plot_is_on_the_page() -> None:
    html = render_report(full_data())
    for key, title in SECTIONS:
        assert f'<section id="{key}">' in html
        assert f"<h2>{title}</h2>" in html
    for name in ("rounds", "defects", "champions", "history", "calibration", "timings", "settings"):
        assert f'data-table="{name}"' in html, name
    for name in ("confusion-binary", "confusion-multiclass"):
        assert f'data-table="{name}"' in html
    for name in ("learning-curves", "defects", "calibration", "timings"):
        assert f'data-plot="{name}"' in html, name
    assert 'data-outcome="win"' in html
    assert html.count('class="heatmap"') == 1
    assert html.count('class="photo"') == 2
    assert "no heat-map: why" in html
    assert "keep: &lt;small&gt;" in html  # escaped
    assert "[+0.020, +0.150]" in html


def test_the_page_fetches_nothing() -> None:
    html = render_report(full_data())
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources
    assert all(s.startswith(("data:", "#")) for s in sources), [s[:40] for s in sources]
    assert "<script" not in html
    assert "@import" not in html
    assert "url(" not in html
    assert "default-src 'none'" in html


def test_plots_are_standalone_svg_documents_and_deterministic() -> None:
    rounds = full_data().rounds
    first = plots.learning_curves_svg(rounds)
    assert first is not None
    assert first == plots.learning_curves_svg(rounds)
    assert b"<svg" in first
    assert b"http://www.w3.org" in first  # the namespace only, never a fetched resource
    assert b'xlink:href="http' not in first
    assert plots.calibration_svg({"active": CALIBRATION}) is not None
    assert plots.timings_svg(rounds) is not None


def test_a_report_without_a_demo_says_so_and_still_shows_the_registry() -> None:
    data = replace(full_data(), run=None, rounds=(), settings_source="the current settings")
    html = render_report(data)
    assert html.count("No demo has run on this database") >= 5
    assert 'data-outcome="none"' in html
    assert 'data-table="champions"' in html
    assert 'data-table="history"' in html
    assert 'class="heatmap"' in html
    assert "data-plot=" not in html
    assert "From the current settings." in html


def test_missing_numbers_are_shown_as_na_and_nothing_breaks() -> None:
    rounds = (point(0, "active", None), point(0, "random", None), point(1, "active", None))
    data = ReportData(generated_at=NOW, database="", rounds=rounds)
    html = render_report(data)
    for says in (
        "n/a",
        "nothing to plot",
        "No calibration bins recorded",
        "No stage timings recorded",
        "No defective or ok confusion matrix recorded",
        "No champion yet",
        "No comparison or promotion recorded yet",
        "No predictions yet",
        "No settings recorded",
    ):
        assert says in html


def test_an_image_without_a_picture_has_no_img_but_a_reason() -> None:
    item = GalleryItem(7, "gone.png", "/gone.png", "ok", 0.9, None, True, note="photo not found at /gone.png")
    html = render_report(
        ReportData(generated_at=NOW, database="", gallery=(item,), gallery_model_key="b1-m-")
    )
    assert "photo not found at /gone.png" in html
    assert 'class="photo"' not in html
    assert "no picture" in html


# --- reading the demo's JSON tolerantly --------------------------------------------------------------


def _row(metrics: Any, timings: Any = None) -> Any:
    return SimpleNamespace(
        round=1,
        arm=SimpleNamespace(value="active"),
        labels_used=40,
        defects_found=9,
        binary_version="b",
        multiclass_version=None,
        metrics=metrics,
        timings=timings or {},
    )


def test_a_full_round_is_parsed() -> None:
    metrics = {
        "macro_f1": 0.7,
        "defect_recall": 0.6,
        "defect_precision": 0.65,
        "accuracy": 0.8,
        "multiclass_macro_f1": None,
        "ece": 0.05,
        "calibration": {
            "bin_edges": [0, 0.5, 1],
            "confidence": [0.3, 0.8],
            "accuracy": [0.2, 0.9],
            "count": [4, 6],
        },
        "confusion": {
            "binary": {"classes": ["ok", "defective"], "matrix": [[5, 1], [2, 3]]},
            "multiclass": None,
        },
        "n_eval": 11,
        "threshold": 0.4,
        "threshold_flag": "degenerate refused",
    }
    p = parse_round(_row(metrics, {"train": 12.5, "rank": "fast"}))
    assert (p.macro_f1, p.multiclass_macro_f1, p.n_eval, p.threshold_flag) == (
        0.7,
        None,
        11,
        "degenerate refused",
    )
    assert p.calibration == Calibration((0.0, 0.5, 1.0), (0.3, 0.8), (0.2, 0.9), (4, 6))
    assert p.confusion_binary == Confusion(("ok", "defective"), ((5, 1), (2, 3)))
    assert p.confusion_multiclass is None
    assert p.timings == (("train", 12.5),)


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"macro_f1": "high", "ece": float("nan"), "n_eval": True},
        None,
        {"confusion": "none", "calibration": [1]},
    ],
)
def test_malformed_or_missing_metrics_become_none(metrics: Any) -> None:
    p = parse_round(_row(metrics))
    assert p.macro_f1 is None
    assert p.ece is None
    assert p.n_eval is None
    assert p.calibration is None
    assert p.confusion_binary is None


@pytest.mark.parametrize(
    "value",
    [
        {"classes": ["a", "b"], "matrix": [[1, 2]]},
        {"classes": ["a", "b"], "matrix": [[1, 2], [3]]},
        {"classes": ["a"], "matrix": [["x"]]},
        {"classes": [], "matrix": []},
        [[1]],
    ],
)
def test_a_confusion_matrix_that_does_not_fit_its_classes_is_dropped(value: Any) -> None:
    assert parse_confusion(value) is None


def test_calibration_bins_that_do_not_line_up_are_dropped_or_lose_their_edges() -> None:
    assert parse_calibration({"confidence": [0.1, 0.2], "accuracy": [0.1]}) is None
    kept = parse_calibration({"bin_edges": [0, 1], "confidence": [0.1, 0.2], "accuracy": [0.1, 0.3]})
    assert kept is not None
    assert kept.bin_edges == ()
    assert kept.count == (0, 0)


def test_settings_are_flattened_sorted_and_secrets_masked() -> None:
    pairs = flatten_settings(
        {"b": [1, 2], "a": {"webhook_secret": "s3cret", "n": None}, "label_studio_api_key": "", "x": 1}
    )
    assert pairs == (
        ("a.n", "(not set)"),
        ("a.webhook_secret", "********"),
        ("b", "1, 2"),
        ("label_studio_api_key", ""),
        ("x", "1"),
    )


def test_empty_calibration_bins_are_skipped_in_the_plot() -> None:
    bins = {
        "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "confidence": [None, None, 0.6, 0.9],
        "accuracy": [None, None, 0.5, 0.95],
        "count": [0, 0, 4, 16],
    }
    calibration = parse_calibration(bins)
    assert calibration is not None
    assert calibration.confidence == (None, None, 0.6, 0.9)
    assert plots.calibration_svg({"active": calibration}) is not None
    empty = parse_calibration({**bins, "confidence": [None] * 4, "accuracy": [None] * 4})
    assert empty is not None
    assert plots.calibration_svg({"active": empty}) is None


def test_a_demo_that_recorded_its_settings_nested_shows_them_dotted() -> None:
    pairs = dict(
        flatten_settings({"demo": {"rounds": 3}, "settings": {"DEFECTLOOP_WEBHOOK_SECRET": "********"}})
    )
    assert pairs == {"demo.rounds": "3", "settings.DEFECTLOOP_WEBHOOK_SECRET": "********"}
