"""Reads what the report shows from the database into the frozen dataclasses of ``report.data``.

The caller owns the session. Demo rounds are read tolerantly: a metric the demo did not write, or wrote
in another shape, becomes ``None`` ("n/a" in the report) rather than an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import repositories as repo
from db.schema import DemoRound, DemoRun, ModelStatus, ModelTask, ModelVersion
from defectloop.errors import DefectloopError
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

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 60
_SECRET_WORDS = ("secret", "password", "api_key", "token")


class DemoRunNotFoundError(DefectloopError, LookupError):
    """``--run NAME`` names no demo run of this database."""


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _floats(value: Any) -> tuple[float | None, ...]:
    return tuple(_float(v) for v in value) if isinstance(value, list | tuple) else ()


def parse_confusion(value: Any) -> Confusion | None:
    """A ``{"classes": [...], "matrix": [[...]]}`` mapping as a `Confusion`, or None if it is not one."""
    if not isinstance(value, Mapping):
        return None
    classes, matrix = value.get("classes"), value.get("matrix")
    if not isinstance(classes, list | tuple) or not isinstance(matrix, list | tuple) or not classes:
        return None
    rows: list[tuple[int, ...]] = []
    for row in matrix:
        if not isinstance(row, list | tuple) or len(row) != len(classes):
            return None
        cells = [_int(cell) for cell in row]
        if any(cell is None for cell in cells):
            return None
        rows.append(tuple(int(cell or 0) for cell in cells))
    if len(rows) != len(classes):
        return None
    return Confusion(classes=tuple(str(c) for c in classes), matrix=tuple(rows))


def parse_calibration(value: Any) -> Calibration | None:
    """Reliability bins as a `Calibration`, or None when they are missing or do not line up."""
    if not isinstance(value, Mapping):
        return None
    edges = _floats(value.get("bin_edges"))
    confidence = _floats(value.get("confidence"))
    accuracy = _floats(value.get("accuracy"))
    counts = (
        tuple(_int(v) or 0 for v in value.get("count") or ()) if isinstance(value.get("count"), list) else ()
    )
    n = len(confidence)
    if n == 0 or len(accuracy) != n or (counts and len(counts) != n):
        return None
    if any(e is None for e in edges) or (edges and len(edges) != n + 1):
        edges = ()
    return Calibration(
        bin_edges=tuple(float(e or 0.0) for e in edges),
        confidence=confidence,
        accuracy=accuracy,
        count=counts or (0,) * n,
    )


def parse_round(row: DemoRound) -> RoundPoint:
    """One demo round row as a `RoundPoint`, keeping whatever of its metrics is usable."""
    metrics: Mapping[str, Any] = row.metrics if isinstance(row.metrics, Mapping) else {}
    confusion = metrics.get("confusion")
    confusion = confusion if isinstance(confusion, Mapping) else {}
    timings = row.timings if isinstance(row.timings, Mapping) else {}
    return RoundPoint(
        round=int(row.round),
        arm=str(row.arm.value if hasattr(row.arm, "value") else row.arm),
        labels_used=int(row.labels_used),
        defects_found=int(row.defects_found),
        binary_version=row.binary_version,
        multiclass_version=row.multiclass_version,
        macro_f1=_float(metrics.get("macro_f1")),
        defect_recall=_float(metrics.get("defect_recall")),
        defect_precision=_float(metrics.get("defect_precision")),
        accuracy=_float(metrics.get("accuracy")),
        multiclass_macro_f1=_float(metrics.get("multiclass_macro_f1")),
        ece=_float(metrics.get("ece")),
        n_eval=_int(metrics.get("n_eval")),
        threshold=_float(metrics.get("threshold")),
        threshold_flag=_text(metrics.get("threshold_flag")),
        calibration=parse_calibration(metrics.get("calibration")),
        confusion_binary=parse_confusion(confusion.get("binary")),
        confusion_multiclass=parse_confusion(confusion.get("multiclass")),
        timings=tuple(
            (str(stage), seconds)
            for stage, value in timings.items()
            if (seconds := _float(value)) is not None
        ),
    )


def flatten_settings(values: Mapping[str, Any], prefix: str = "") -> tuple[tuple[str, str], ...]:
    """Settings as sorted (name, text) pairs; nested mappings get dotted names, secrets are masked."""
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs.extend(flatten_settings(value, prefix=f"{name}."))
            continue
        if any(word in name.lower() for word in _SECRET_WORDS) and value not in (None, "", "(not set)"):
            text = "********"
        elif isinstance(value, list | tuple):
            text = ", ".join(str(v) for v in value)
        else:
            text = "(not set)" if value is None else str(value)
        pairs.append((name, text))
    return tuple(sorted(pairs))


def _run_info(run: DemoRun) -> DemoRunInfo:
    settings = run.settings if isinstance(run.settings, Mapping) else {}
    return DemoRunInfo(
        name=run.name,
        status=str(run.status.value if hasattr(run.status, "value") else run.status),
        started_at=run.started_at,
        finished_at=run.finished_at,
        reason=run.reason,
        settings=flatten_settings(settings),
    )


def _report_numbers(numbers: Any, side: str) -> float | None:
    if not isinstance(numbers, Mapping):
        return None
    part = numbers.get(side)
    return _float(part.get("macro_f1")) if isinstance(part, Mapping) else None


def _history(session: Session, names: Mapping[int, str]) -> tuple[tuple[HistoryEntry, ...], int]:
    """Comparisons (with the promotion each led to) and manual promotions / rejections / rollbacks,
    oldest first; the newest ``HISTORY_LIMIT`` of them, and how many there are in all."""
    comparisons = repo.list_comparisons(session=session, limit=HISTORY_LIMIT)
    promotions = repo.list_promotions(session=session)
    by_comparison = {p.comparison_id: p for p in promotions if p.comparison_id is not None}
    shown_ids = {c.id for c in comparisons}
    entries: list[HistoryEntry] = []
    for comparison in comparisons:
        numbers = comparison.numbers if isinstance(comparison.numbers, Mapping) else {}
        bootstrap = _mapping(numbers.get("bootstrap"))
        mcnemar = _mapping(numbers.get("mcnemar"))
        promotion = by_comparison.get(comparison.id)
        action = str(comparison.decision.value)
        if promotion is not None and promotion.action.value != action:
            action = f"{action} ({promotion.action.value})"
        entries.append(
            HistoryEntry(
                when=comparison.created_at,
                task=comparison.task.value,
                action=action,
                champion=names.get(comparison.champion_version_id or -1),
                challenger=names.get(
                    comparison.challenger_version_id, f"#{comparison.challenger_version_id}"
                ),
                reason=comparison.reason,
                actor=None if promotion is None else promotion.actor,
                champion_macro_f1=_report_numbers(numbers, "champion"),
                challenger_macro_f1=_report_numbers(numbers, "challenger"),
                gain=_float(numbers.get("macro_f1_gain")),
                ci_low=_float(bootstrap.get("low")),
                ci_high=_float(bootstrap.get("high")),
                p_value=_float(mcnemar.get("p_value")),
                n_eval=_int(numbers.get("n_eval")),
            )
        )
    manual = [p for p in promotions if p.comparison_id is None or p.comparison_id not in shown_ids]
    all_comparisons = repo.count_comparisons(session=session)
    if comparisons and all_comparisons > len(comparisons):
        # Manual actions from before the shown comparisons are as old as what the limit left out.
        oldest = min(c.created_at for c in comparisons)
        manual = [p for p in manual if p.created_at >= oldest]
    for promotion in manual:
        numbers = promotion.numbers if isinstance(promotion.numbers, Mapping) else {}
        entries.append(
            HistoryEntry(
                when=promotion.created_at,
                task=promotion.task.value,
                action=promotion.action.value,
                champion=names.get(promotion.from_version_id or -1),
                challenger=names.get(promotion.to_version_id, f"#{promotion.to_version_id}"),
                reason=promotion.reason,
                actor=promotion.actor,
                champion_macro_f1=_report_numbers(numbers, "champion"),
                challenger_macro_f1=_report_numbers(numbers, "challenger"),
                gain=_float(numbers.get("macro_f1_gain")),
            )
        )
    epoch = datetime.min.replace(tzinfo=UTC)
    entries.sort(key=lambda e: e.when or epoch)
    total = all_comparisons + len([p for p in promotions if p.comparison_id is None])
    return tuple(entries), total


def _champion(version: ModelVersion, since: datetime | None) -> ChampionInfo:
    metrics = version.metrics if isinstance(version.metrics, Mapping) else {}
    snapshot = version.training_snapshot if isinstance(version.training_snapshot, Mapping) else {}
    n_train = _int(snapshot.get("n_train")) or _int(metrics.get("n_train"))
    return ChampionInfo(
        task=version.task.value,
        name=version.name,
        architecture=version.architecture,
        classes=tuple(str(c) for c in version.classes),
        since=since,
        macro_f1=_float(metrics.get("macro_f1")),
        n_train=n_train,
    )


def _gallery_of(session: Session, model_key: str, size: int) -> list[GalleryItem]:
    items: list[GalleryItem] = []
    most = repo.list_predictions_by_confidence(session=session, model_key=model_key, limit=size)
    least = repo.list_predictions_by_confidence(
        session=session,
        model_key=model_key,
        limit=size,
        most_certain=False,
        exclude_image_ids=[image.id for _, image in most],
    )
    for rows, most_certain in ((most, True), (least, False)):
        for prediction, image in rows:
            items.append(
                GalleryItem(
                    image_id=image.id,
                    name=image.original_name or Path(image.path).name,
                    path=image.path,
                    guess=prediction.predicted_label,
                    confidence=float(prediction.confidence),
                    label=repo.current_label(session=session, image_id=image.id),
                    most_certain=most_certain,
                )
            )
    return items


def _gallery(session: Session, size: int) -> tuple[tuple[GalleryItem, ...], str | None, str | None]:
    """The ``size`` most and ``size`` least certain images under the current champions; when they have
    predicted nothing yet (no champion, or the pool not yet re-scored), under the models that predicted
    last, saying so."""
    current = repo.current_model_key(session=session)
    if current is not None:
        items = _gallery_of(session, current, size)
        if items:
            return tuple(items), current, None
    newest = next(iter(repo.list_prediction_model_keys(session=session, limit=1)), None)
    if newest is None:
        return (), current, "no image has been predicted yet: the gallery needs predictions"
    items = _gallery_of(session, newest, size) if newest != current else []
    if not items:
        return (), current, f"no predictions by {newest} of images still on disk: no gallery"
    why = (
        "no champion now"
        if current is None
        else f"the current champions ({current}) have predicted nothing yet"
    )
    return tuple(items), newest, f"{why}: the images as the models {newest} saw them"


def load_report_data(
    session: Session,
    *,
    run_name: str | None = None,
    gallery_size: int = 6,
    database: str = "",
    current_settings: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> ReportData:
    """Everything the report shows, read in ``session``.

    ``run_name`` picks the demo run (default: the latest one; a name that is not there raises
    `DemoRunNotFoundError` naming the runs there are). ``current_settings`` are shown when no demo ran.
    """
    run = (
        repo.get_demo_run_by_name(session=session, name=run_name)
        if run_name is not None
        else repo.latest_demo_run(session=session)
    )
    names_of_runs = [r.name for r in repo.list_demo_runs(session=session)]
    if run_name is not None and run is None:
        there = ", ".join(names_of_runs[:10]) or "none: `defectloop demo` makes one"
        raise DemoRunNotFoundError(f"no demo run named {run_name!r} in this database; runs: {there}")

    versions = repo.list_model_versions(session=session)
    names = {v.id: v.name for v in versions}
    promotions = repo.list_promotions(session=session)
    champions: list[ChampionInfo] = []
    for task in ModelTask:
        champion = next((v for v in versions if v.task is task and v.status is ModelStatus.CHAMPION), None)
        if champion is None:
            continue
        since = max(
            (p.created_at for p in promotions if p.to_version_id == champion.id),
            default=champion.updated_at,
        )
        champions.append(_champion(champion, since))
    history, history_total = _history(session, names)
    gallery, gallery_key, gallery_note = _gallery(session, gallery_size)

    rounds: tuple[RoundPoint, ...] = ()
    info = None
    if run is not None:
        info = _run_info(run)
        rounds = tuple(parse_round(row) for row in repo.list_demo_rounds(session=session, run_id=run.id))
    settings, source = (
        (info.settings, f"demo run {info.name}")
        if info is not None and info.settings
        else (flatten_settings(current_settings or {}), "the current settings (no demo run recorded its own)")
    )
    counts = repo.count_images_by_status(session=session)
    return ReportData(
        generated_at=now or datetime.now(UTC),
        database=database,
        run=info,
        other_runs=tuple(n for n in names_of_runs if info is None or n != info.name),
        rounds=rounds,
        champions=tuple(champions),
        history=history,
        history_total=history_total,
        gallery=gallery,
        gallery_model_key=gallery_key,
        gallery_note=gallery_note,
        settings=settings,
        settings_source=source,
        image_counts=tuple((status.value, n) for status, n in sorted(counts.items()) if n),
    )
