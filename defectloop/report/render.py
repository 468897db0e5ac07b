"""The report as one self-contained HTML page: `report.data` values in, a string out.

Pure: no database, no files, no network. Plots are SVG documents inlined as ``data:`` images, photos
and heat-maps PNG ``data:`` images, the style sheet inline; the page fetches nothing. Every missing
number is shown as "n/a"; every section without data says why instead of disappearing.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from defectloop.report import plots
from defectloop.report.data import (
    ACTIVE,
    RANDOM,
    Confusion,
    GalleryItem,
    HistoryEntry,
    ReportData,
    RoundPoint,
)

# Macro-F1 differences smaller than this (either way) are called a tie.
TIE_MARGIN = 0.02
NA = "n/a"

SECTIONS = (
    ("verdict", "Verdict"),
    ("learning-curves", "Learning curves"),
    ("defects", "Defects found per label"),
    ("champions", "Champions and their history"),
    ("confusion", "Confusion matrices of the champions"),
    ("gallery", "Heat-map gallery"),
    ("calibration", "Calibration"),
    ("timings", "Stage timings"),
    ("settings", "Settings used"),
)

NO_DEMO = (
    "No demo has run on this database, so there are no rounds to show here: "
    "<code>defectloop demo</code> runs the loop against a random control arm and fills this section."
)


@dataclass(frozen=True)
class Verdict:
    """The headline: ``win``, ``lose``, ``tie`` or ``none`` (nothing to compare), and its sentence."""

    outcome: str
    text: str


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or "n/a"."""
    return NA if value is None else f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 3) -> str:
    return NA if value is None else f"{value:+.{digits}f}".replace("-", "\u2212")


def fmt_time(value: datetime | None) -> str:
    return NA if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def headline_verdict(rounds: Sequence[RoundPoint], *, margin: float = TIE_MARGIN) -> Verdict:
    """Did active learning beat random labelling? Compared on the latest round both arms were scored in
    (both arms get the same label budget each round), with the number of rounds each was ahead."""
    if not rounds:
        return Verdict("none", "No demo has run on this database: no verdict on active learning yet.")
    active = {p.round: p for p in rounds if p.arm == ACTIVE and p.macro_f1 is not None}
    random = {p.round: p for p in rounds if p.arm == RANDOM and p.macro_f1 is not None}
    common = sorted(set(active) & set(random))
    if not common:
        return Verdict(
            "none",
            "No round has a frozen-set macro-F1 for both the active and the random arm: no verdict yet.",
        )
    last = common[-1]
    a, r = active[last], random[last]
    if last == 0:
        return Verdict(
            "none",
            f"Only round 0 (the {a.labels_used} seed labels both arms share) has been scored: "
            "no verdict on active learning yet.",
        )
    assert a.macro_f1 is not None
    assert r.macro_f1 is not None
    diff = a.macro_f1 - r.macro_f1
    if a.labels_used == r.labels_used:
        where = f"at {a.labels_used} labels each (round {last})"
    else:
        where = f"at round {last} (active {a.labels_used} labels, random {r.labels_used})"
    later = [k for k in common if k > 0]
    ahead = sum(1 for k in later if (active[k].macro_f1 or 0.0) > (random[k].macro_f1 or 0.0))
    scores = f"macro-F1 {a.macro_f1:.3f} against {r.macro_f1:.3f} ({fmt_signed(diff)})"
    rest = (
        f"ahead in {ahead} of {len(later)} scored round(s); "
        f"it found {a.defects_found} defects against {r.defects_found}."
    )
    if diff >= margin:
        return Verdict("win", f"Active learning beat random labelling: {where}, {scores}, {rest}")
    if diff <= -margin:
        return Verdict("lose", f"Active learning did not beat random labelling: {where}, {scores}, {rest}")
    return Verdict(
        "tie",
        f"Active learning and random labelling tied: {where}, {scores}, within \u00b1{margin:.2f}, {rest}",
    )


# --- building blocks -------------------------------------------------------------------------------


def _data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def plot_img(svg: bytes | None, alt: str, name: str, missing: str) -> str:
    """An inline plot (``<img class="plot">``), or a note saying why there is none."""
    if svg is None:
        return f'<p class="note">{escape(missing)}</p>'
    return (
        f'<figure class="plot" data-plot="{escape(name)}"><img class="plot" alt="{escape(alt)}" '
        f'src="{_data_uri(svg, "image/svg+xml")}"></figure>'
    )


_NUMBER = re.compile(r"^[+\u2212-]?\d[\d.,]*%?$|^n/a$")


def _cell(cell: str, raw: bool) -> str:
    # Numbers line up on the right, words on the left.
    kind = ' class="num"' if _NUMBER.match(cell) else ""
    return f"<td{kind}>{cell if raw else escape(cell)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, name: str, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(cell, raw) for cell in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table data-table="{escape(name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


# --- sections ----------------------------------------------------------------------------------------


def _rounds_table(rounds: Sequence[RoundPoint]) -> str:
    rows = [
        (
            str(p.round),
            p.arm,
            str(p.labels_used),
            str(p.defects_found),
            fmt(p.macro_f1),
            fmt(p.defect_recall),
            fmt(p.defect_precision),
            fmt(p.accuracy),
            fmt(p.multiclass_macro_f1),
            fmt(p.ece),
            NA if p.n_eval is None else str(p.n_eval),
            fmt(p.threshold, 2) + ("" if not p.threshold_flag else f" ({p.threshold_flag})"),
            p.binary_version or NA,
        )
        for p in sorted(rounds, key=lambda r: (r.round, r.arm))
    ]
    headers = (
        "round",
        "arm",
        "labels",
        "defects",
        "macro-F1",
        "defect recall",
        "defect precision",
        "accuracy",
        "type macro-F1",
        "ECE",
        "eval images",
        "threshold",
        "binary model",
    )
    return table(headers, rows, name="rounds")


def learning_curves_section(data: ReportData) -> str:
    if not data.rounds:
        return f'<p class="note">{NO_DEMO}</p>'
    plot = plot_img(
        plots.learning_curves_svg(data.rounds),
        "macro-F1 and defect recall of both arms against labels used",
        "learning-curves",
        "No round recorded a macro-F1 or a defect recall: nothing to plot.",
    )
    intro = (
        '<p class="lead">Each round both arms get the same number of new labels: the active arm the '
        "images the models were least sure of, the control arm images drawn at random. Both are trained "
        "alike and scored on the same frozen evaluation set (round 0: the seed labels).</p>"
    )
    return intro + plot + _rounds_table(data.rounds)


def defects_section(data: ReportData) -> str:
    if not data.rounds:
        return f'<p class="note">{NO_DEMO}</p>'
    rows = []
    for arm, points in plots.by_arm(data.rounds).items():
        last = points[-1]
        share = NA if last.labels_used == 0 else f"{last.defects_found / last.labels_used:.2f}"
        rows.append((arm, str(last.round), str(last.labels_used), str(last.defects_found), share))
    plot = plot_img(
        plots.defects_svg(data.rounds),
        "defects found against labels used, per arm",
        "defects",
        "No rounds: nothing to plot.",
    )
    return plot + table(
        ("arm", "latest round", "labels used", "defects found", "defects per label"), rows, name="defects"
    )


def _pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.0f}%"


HISTORY_HEADERS = (
    "when (UTC)",
    "task",
    "decision",
    "champion \u2192 challenger",
    "macro-F1 champion",
    "macro-F1 challenger",
    "gain",
    "bootstrap CI",
    "McNemar p",
    "eval images",
    "by",
)


def history_table(history: Sequence[HistoryEntry]) -> str:
    """The champion history: one row of numbers per comparison or action, its reason in a row below."""
    rows = []
    for e in history:
        ci = NA
        if e.ci_low is not None and e.ci_high is not None:
            ci = f"[{fmt_signed(e.ci_low)}, {fmt_signed(e.ci_high)}]"
        numbers = (
            fmt(e.champion_macro_f1),
            fmt(e.challenger_macro_f1),
            fmt_signed(e.gain),
            ci,
            fmt(e.p_value, 4),
            NA if e.n_eval is None else str(e.n_eval),
        )
        cells = [
            f"<td>{escape(NA if e.when is None else e.when.strftime('%Y-%m-%d %H:%M'))}</td>",
            f"<td>{escape(e.task)}</td>",
            f'<td><span class="action {escape(e.action.split()[0])}">{escape(e.action)}</span></td>',
            f"<td>{escape(e.champion or '(none)')} \u2192 {escape(e.challenger)}</td>",
            *(f'<td class="num">{escape(n)}</td>' for n in numbers),
            f"<td>{escape(e.actor or NA)}</td>",
        ]
        rows.append(f'<tr class="entry">{"".join(cells)}</tr>')
        rows.append(f'<tr class="why"><td colspan="{len(HISTORY_HEADERS)}">{escape(e.reason)}</td></tr>')
    head = "".join(f"<th>{escape(h)}</th>" for h in HISTORY_HEADERS)
    return (
        f'<div class="scroll"><table data-table="history"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def champions_section(data: ReportData) -> str:
    if data.champions:
        rows = [
            (
                c.task,
                c.name,
                c.architecture,
                ", ".join(c.classes),
                fmt(c.macro_f1),
                NA if c.n_train is None else str(c.n_train),
                fmt_time(c.since),
            )
            for c in data.champions
        ]
        current = table(
            (
                "task",
                "champion",
                "architecture",
                "classes",
                "validation macro-F1",
                "trained on",
                "champion since",
            ),
            rows,
            name="champions",
        )
    else:
        current = '<p class="note">No champion yet: no model has been trained and promoted.</p>'
    if data.history:
        left_out = data.history_total - len(data.history)
        more = (
            f'<p class="note">The newest {len(data.history)} of {data.history_total} shown.</p>'
            if left_out > 0
            else ""
        )
        history = history_table(data.history) + more
    else:
        history = '<p class="note">No comparison or promotion recorded yet.</p>'
    return f"<h3>Current champions</h3>{current}<h3>History: comparisons and promotions</h3>{history}"


def confusion_table(confusion: Confusion, *, name: str) -> str:
    """A confusion matrix as a table, rows (true classes) shaded by their share of each cell."""
    head = "".join(f"<th>{escape(c)}</th>" for c in confusion.classes)
    body = []
    for true_class, row in zip(confusion.classes, confusion.matrix, strict=True):
        total = sum(row)
        cells = []
        for index, count in enumerate(row):
            share = count / total if total else 0.0
            diagonal = " diag" if confusion.classes[index] == true_class else ""
            colour = f"rgba(31,111,180,{0.08 + 0.8 * share:.2f})" if count else "transparent"
            ink = "#fff" if share > 0.55 else "inherit"
            cells.append(f'<td class="cell{diagonal}" style="background:{colour};color:{ink}">{count}</td>')
        body.append(
            f'<tr><th scope="row">{escape(true_class)}</th>{"".join(cells)}'
            f'<td class="total">{total}</td></tr>'
        )
    return (
        f'<table class="confusion" data-table="{escape(name)}"><thead><tr>'
        "<th>true \u2193 / guessed \u2192</th>"
        f"{head}<th>images</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _latest(rounds: Sequence[RoundPoint], arm: str) -> RoundPoint | None:
    points = [p for p in rounds if p.arm == arm]
    return max(points, key=lambda p: p.round) if points else None


def confusion_section(data: ReportData) -> str:
    if not data.rounds:
        return f'<p class="note">{NO_DEMO}</p>'
    latest = _latest(data.rounds, ACTIVE)
    if latest is None:
        return '<p class="note">The active arm recorded no round: no confusion matrix.</p>'
    models = ", ".join(v for v in (latest.binary_version, latest.multiclass_version) if v) or NA
    parts = [
        f'<p class="lead">The active arm\'s models after round {latest.round} ({escape(models)}), '
        "on the frozen evaluation set.</p>",
        '<div class="pair">',
    ]
    for confusion, title, name in (
        (latest.confusion_binary, "defective or ok", "confusion-binary"),
        (latest.confusion_multiclass, "defect type (defective images only)", "confusion-multiclass"),
    ):
        inner = (
            confusion_table(confusion, name=name)
            if confusion is not None
            else f'<p class="note">No {escape(title)} confusion matrix recorded (n/a).</p>'
        )
        parts.append(f"<div><h3>{escape(title)}</h3>{inner}</div>")
    parts.append("</div>")
    return "".join(parts)


def _gallery_card(item: GalleryItem) -> str:
    pictures = []
    if item.photo_png is not None:
        pictures.append(
            f'<img class="photo" alt="photo {escape(item.name)}" '
            f'src="{_data_uri(item.photo_png, "image/png")}">'
        )
    if item.heatmap_png is not None:
        pictures.append(
            f'<img class="heatmap" alt="Grad-CAM heat-map of {escape(item.name)}" '
            f'src="{_data_uri(item.heatmap_png, "image/png")}">'
        )
    if not pictures:
        pictures.append('<div class="missing">no picture</div>')
    if item.label is None:
        truth = '<span class="muted">not labelled</span>'
    else:
        mark = "right" if item.label == item.guess else "wrong"
        truth = f'label <b>{escape(item.label)}</b> <span class="{mark}">({mark})</span>'
    note = f'<p class="note small">{escape(item.note)}</p>' if item.note else ""
    return (
        f'<figure class="card" data-image-id="{item.image_id}">'
        f'<div class="pictures">{"".join(pictures)}</div>'
        f"<figcaption>guess <b>{escape(item.guess)}</b> {_pct(item.confidence)} · {truth}"
        f'<br><span class="muted small">{escape(item.name)}</span>{note}</figcaption></figure>'
    )


def gallery_section(data: ReportData) -> str:
    if not data.gallery:
        return f'<p class="note">{escape(data.gallery_note or "No predictions yet: no gallery.")}</p>'
    lead = (
        '<p class="lead">The photo and the binary champion\'s Grad-CAM heat-map (where the model looked), '
        f"with the guess of the models {escape(data.gallery_model_key or NA)} and its confidence.</p>"
    )
    if data.gallery_note:
        lead += f'<p class="note">{escape(data.gallery_note)}</p>'
    parts = [lead]
    for most, title in (
        (True, "Most certain"),
        (False, "Least certain (what the loop asks annotators about)"),
    ):
        cards = [_gallery_card(i) for i in data.gallery if i.most_certain is most]
        if cards:
            key = "most" if most else "least"
            parts.append(
                f'<h3>{escape(title)}</h3><div class="gallery" data-gallery="{key}">{"".join(cards)}</div>'
            )
    return "".join(parts)


def calibration_section(data: ReportData) -> str:
    if not data.rounds:
        return f'<p class="note">{NO_DEMO}</p>'
    curves = {}
    rows = []
    for arm in (ACTIVE, RANDOM):
        latest = _latest(data.rounds, arm)
        if latest is None:
            continue
        if latest.calibration is not None:
            curves[arm] = latest.calibration
        rows.append(
            (arm, str(latest.round), fmt(latest.ece), NA if latest.n_eval is None else str(latest.n_eval))
        )
    plot = plot_img(
        plots.calibration_svg(curves),
        "reliability diagram: accuracy against confidence",
        "calibration",
        "No calibration bins recorded (n/a).",
    )
    lead = (
        '<p class="lead">How far the binary model\'s confidence is from its accuracy; expected calibration '
        "error (ECE) is the image-weighted mean gap (0 is perfect).</p>"
    )
    return lead + plot + table(("arm", "round", "ECE", "eval images"), rows, name="calibration")


def timings_section(data: ReportData) -> str:
    if not data.rounds:
        return f'<p class="note">{NO_DEMO}</p>'
    timed = [p for p in sorted(data.rounds, key=lambda r: (r.round, r.arm)) if p.timings]
    if not timed:
        return '<p class="note">No stage timings recorded (n/a).</p>'
    stages = plots.ordered_stages(timed)
    rows = []
    for p in timed:
        seconds = dict(p.timings)
        rows.append(
            (
                str(p.round),
                p.arm,
                *(fmt(seconds.get(s), 1) for s in stages),
                fmt(sum(seconds.values()), 1),
            )
        )
    plot = plot_img(plots.timings_svg(timed), "seconds per stage of each round", "timings", "No timings.")
    return plot + table(("round", "arm", *stages, "total"), rows, name="timings")


def settings_section(data: ReportData) -> str:
    lead = f'<p class="lead">From {escape(data.settings_source or NA)}.</p>'
    if not data.settings:
        return lead + '<p class="note">No settings recorded (n/a).</p>'
    return lead + table(("setting", "value"), data.settings, name="settings")


def verdict_section(data: ReportData, verdict: Verdict) -> str:
    facts = []
    if data.run is not None:
        run = data.run
        ended = f", {run.status}" + (f": {run.reason}" if run.reason else "")
        facts.append(
            f"Demo run <b>{escape(run.name)}</b>, started {escape(fmt_time(run.started_at))}{escape(ended)}."
        )
        active_rounds = sorted({p.round for p in data.rounds})
        facts.append(f"{len(active_rounds)} round(s) recorded (round 0 is the seed labels).")
    else:
        facts.append(
            "No demo has run on this database: the registry's champions, their history and the gallery "
            "are shown; the learning curves need <code>defectloop demo</code>."
        )
    if data.other_runs:
        facts.append(
            "Other runs in this database: "
            + escape(", ".join(data.other_runs[:8]))
            + (" …" if len(data.other_runs) > 8 else "")
            + " (<code>defectloop report --run NAME</code>)."
        )
    if data.image_counts:
        facts.append("Images: " + escape(", ".join(f"{n} {status}" for status, n in data.image_counts)) + ".")
    return (
        f'<p class="verdict {verdict.outcome}" data-outcome="{verdict.outcome}">{escape(verdict.text)}</p>'
        + "".join(f'<p class="fact">{f}</p>' for f in facts)
    )


CSS = """
:root { --ink: #1d232a; --muted: #5f6b76; --line: #d9dee3; --blue: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #f5f7f9; }
header { background: #1d232a; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; color: #c5ccd3; font-size: 12px; }
nav { padding: 8px 32px; background: #fff; border-bottom: 1px solid var(--line); font-size: 13px; }
nav a { margin-right: 14px; color: var(--blue); text-decoration: none; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 32px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px 20px;
          margin: 16px 0; }
h2 { margin: 0 0 8px; font-size: 18px; } h3 { margin: 14px 0 6px; font-size: 15px; }
.verdict { font-size: 17px; font-weight: 600; padding: 10px 14px; border-radius: 4px; margin: 4px 0 10px;
           border-left: 6px solid #888; background: #f0f0f0; }
.verdict.win { border-color: #2e8540; background: #e7f4ea; }
.verdict.lose { border-color: #c0392b; background: #fbeaea; }
.verdict.tie { border-color: #d9a400; background: #fdf6e0; }
.fact, .lead { margin: 4px 0; color: var(--ink); } .note { color: var(--muted); font-style: italic; }
.muted { color: var(--muted); } .small { font-size: 11px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f4; } td.num { text-align: right; }
table[data-table="settings"] td.num { text-align: left; }
table[data-table="history"] tr.entry td { border-bottom: none; }
table[data-table="history"] tr.entry td:first-child, table[data-table="history"] td.num,
table[data-table="history"] tr.entry td:nth-child(3) { white-space: nowrap; }
table[data-table="history"] tr.why td { border-top: none; padding: 0 7px 5px 24px; font-size: 11px;
  color: var(--muted); }
.scroll { overflow-x: auto; max-width: 100%; }
.action { font-weight: 600; } .action.promote { color: #2e8540; } .action.keep { color: #8a6d00; }
.action.reject, .action.rollback { color: #c0392b; }
figure.plot { margin: 8px 0; } img.plot { max-width: 100%; height: auto; }
.pair { display: flex; flex-wrap: wrap; gap: 28px; }
.confusion td.cell { min-width: 44px; text-align: center; } .confusion td.diag { font-weight: 700; }
.confusion td.total { color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px; }
.card { margin: 0; border: 1px solid var(--line); border-radius: 4px; padding: 6px; background: #fafbfc; }
.pictures { display: flex; gap: 4px; } .pictures img { width: 50%; height: auto; image-rendering: auto; }
.missing { padding: 30px; color: var(--muted); }
figcaption { font-size: 12px; margin-top: 4px; }
.right { color: #2e8540; } .wrong { color: #c0392b; }
code { background: #eef1f4; padding: 0 4px; border-radius: 3px; }
"""


def render_report(data: ReportData) -> str:
    """The whole page."""
    verdict = headline_verdict(data.rounds)
    bodies = {
        "verdict": verdict_section(data, verdict),
        "learning-curves": learning_curves_section(data),
        "defects": defects_section(data),
        "champions": champions_section(data),
        "confusion": confusion_section(data),
        "gallery": gallery_section(data),
        "calibration": calibration_section(data),
        "timings": timings_section(data),
        "settings": settings_section(data),
    }
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in SECTIONS)
    sections = "".join(_section(key, title, bodies[key]) for key, title in SECTIONS)
    subtitle = f"generated {fmt_time(data.generated_at)} UTC" + (
        f" from {data.database}" if data.database else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be fetched: images are data: URIs, no script runs.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>defectloop report</title><style>{CSS}</style></head><body>"
        f"<header><h1>defectloop report</h1><p>{escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


__all__ = ["SECTIONS", "Verdict", "headline_verdict", "render_report"]
