"""The report's plots: `report.data` values in, standalone SVG documents (bytes) out.

Pure: matplotlib's object API (``Figure``, no pyplot, no global backend), text kept as text
(``svg.fonttype = none``: small, and drawn with the reader's own fonts, so nothing is fetched), and a
fixed hash salt and no date, so the same data gives the same bytes. Each function returns None when
there is nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from defectloop.report.data import ACTIVE, ARMS, RANDOM, STAGES, Calibration, RoundPoint

ARM_COLOURS = {ACTIVE: "#1f6fb4", RANDOM: "#8c8c8c"}
ARM_NAMES = {ACTIVE: "active learning", RANDOM: "random (control)"}
STAGE_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")
_RC: Any = {"svg.fonttype": "none", "svg.hashsalt": "defectloop-report", "font.size": 9, "axes.titlesize": 10}


def _svg(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def by_arm(rounds: Sequence[RoundPoint]) -> dict[str, list[RoundPoint]]:
    """Rounds per arm, in round order (arms other than active and random are kept, after them)."""
    arms: dict[str, list[RoundPoint]] = {}
    for point in sorted(rounds, key=lambda r: (r.round, r.arm)):
        arms.setdefault(point.arm, []).append(point)
    return dict(sorted(arms.items(), key=lambda kv: (ARMS.index(kv[0]) if kv[0] in ARMS else 9, kv[0])))


def _style(arm: str) -> dict[str, Any]:
    return {
        "color": ARM_COLOURS.get(arm, "#2ca02c"),
        "label": ARM_NAMES.get(arm, arm),
        "marker": "o" if arm == ACTIVE else "s",
        "markersize": 4,
        "linewidth": 2 if arm == ACTIVE else 1.5,
    }


def learning_curves_svg(rounds: Sequence[RoundPoint]) -> bytes | None:
    """Frozen-set macro-F1 and defect recall of each arm against the labels it used."""
    panels = (("macro_f1", "binary macro-F1"), ("defect_recall", "defect recall"))
    if not any(getattr(p, name) is not None for p in rounds for name, _ in panels):
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(8.6, 3.2)
        axes = fig.subplots(1, 2)
        for ax, (name, title) in zip(axes, panels, strict=True):
            for arm, points in by_arm(rounds).items():
                xy = [(p.labels_used, getattr(p, name)) for p in points if getattr(p, name) is not None]
                if xy:
                    ax.plot([x for x, _ in xy], [y for _, y in xy], **_style(arm))
                if name == "macro_f1":
                    multi = [(p.labels_used, p.multiclass_macro_f1) for p in points]
                    multi = [(x, y) for x, y in multi if y is not None]
                    if multi:
                        ax.plot(
                            [x for x, _ in multi],
                            [y for _, y in multi],
                            color=ARM_COLOURS.get(arm, "#2ca02c"),
                            linestyle="--",
                            linewidth=1,
                            label=f"{ARM_NAMES.get(arm, arm)}: defect-type macro-F1",
                        )
            ax.set_title(title)
            ax.set_xlabel("labels used")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("score on the frozen evaluation set")
        axes[0].legend(loc="lower right", fontsize=7, frameon=False)
        return _svg(fig)


def defects_svg(rounds: Sequence[RoundPoint]) -> bytes | None:
    """Defects found (cumulative) against labels used, per arm: how many labels went to defects."""
    if not rounds:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 3.2)
        ax = fig.subplots()
        for arm, points in by_arm(rounds).items():
            ax.plot([p.labels_used for p in points], [p.defects_found for p in points], **_style(arm))
        ax.set_xlabel("labels used")
        ax.set_ylabel("defective images among them")
        ax.set_title("defects found")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        return _svg(fig)


def calibration_svg(curves: Mapping[str, Calibration]) -> bytes | None:
    """Reliability diagram: accuracy against mean confidence per bin, per arm; images per bin below."""
    curves = {arm: c for arm, c in curves.items() if any(v is not None for v in c.confidence)}
    if not curves:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 4.2)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        top.plot([0, 1], [0, 1], color="#444", linestyle=":", linewidth=1, label="perfectly calibrated")
        width = 0.8 / max(1, len(curves))
        for index, (arm, calibration) in enumerate(curves.items()):
            xy = [
                (c, a)
                for c, a in zip(calibration.confidence, calibration.accuracy, strict=True)
                if c is not None and a is not None
            ]
            top.plot([x for x, _ in xy], [y for _, y in xy], **_style(arm))
            n = len(calibration.count)
            edges = calibration.bin_edges if len(calibration.bin_edges) == n + 1 else None
            if edges:
                centres = [(edges[i] + edges[i + 1]) / 2 for i in range(n)]
            else:
                centres = [(i + 0.5) / n for i in range(n)]
            bin_width = (edges[1] - edges[0]) if edges and n else 1.0 / max(n, 1)
            offsets = [x + (index - (len(curves) - 1) / 2) * bin_width * width for x in centres]
            bottom.bar(
                offsets,
                calibration.count,
                width=bin_width * width,
                color=ARM_COLOURS.get(arm, "#2ca02c"),
                alpha=0.8,
            )
        top.set_xlim(0, 1)
        top.set_ylim(0, 1.02)
        top.set_ylabel("accuracy")
        top.set_title("reliability diagram (latest round)")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=7, frameon=False)
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("images")
        bottom.grid(alpha=0.3)
        return _svg(fig)


def ordered_stages(rounds: Sequence[RoundPoint]) -> list[str]:
    """The stages timed in these rounds: the known ones in running order, then any others by name."""
    seen = {stage for p in rounds for stage, _ in p.timings}
    return [s for s in STAGES if s in seen] + sorted(seen - set(STAGES))


def timings_svg(rounds: Sequence[RoundPoint]) -> bytes | None:
    """Seconds per stage of each round and arm, as stacked horizontal bars."""
    timed = [p for p in sorted(rounds, key=lambda r: (r.round, r.arm)) if p.timings]
    if not timed:
        return None
    stages = ordered_stages(timed)
    with matplotlib.rc_context(_RC):
        fig = _figure(8.6, 0.9 + 0.28 * len(timed))
        ax = fig.subplots()
        labels = [f"round {p.round} · {p.arm}" for p in timed]
        left = [0.0] * len(timed)
        for index, stage in enumerate(stages):
            values = [dict(p.timings).get(stage, 0.0) for p in timed]
            ax.barh(labels, values, left=left, color=STAGE_COLOURS[index % len(STAGE_COLOURS)], label=stage)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncols=min(len(stages), 8),
            fontsize=7,
            frameon=False,
        )
        return _svg(fig)
