"""What the report shows, as plain frozen dataclasses: the loader fills them, the renderers read them.

Nothing here touches the database, the file system or matplotlib, so the renderers can be tested with
hand-made values. A number the database did not have is ``None`` and is shown as "n/a".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

ACTIVE = "active"
RANDOM = "random"
ARMS = (ACTIVE, RANDOM)

# The stages a demo round times, in the order they run (others found in the data are shown after them).
STAGES = ("ingest", "predict", "rank", "label", "train", "compare", "rescore")


@dataclass(frozen=True)
class Confusion:
    """A confusion matrix: rows are the true classes, columns the predicted ones."""

    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Calibration:
    """Reliability-diagram bins: mean confidence, accuracy and image count per confidence bin."""

    bin_edges: tuple[float, ...]
    confidence: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]
    count: tuple[int, ...]


@dataclass(frozen=True)
class RoundPoint:
    """One arm after one round of a demo (round 0: the seed labels)."""

    round: int
    arm: str
    labels_used: int
    defects_found: int
    binary_version: str | None = None
    multiclass_version: str | None = None
    macro_f1: float | None = None
    defect_recall: float | None = None
    defect_precision: float | None = None
    accuracy: float | None = None
    multiclass_macro_f1: float | None = None
    ece: float | None = None
    n_eval: int | None = None
    threshold: float | None = None
    threshold_flag: str | None = None
    calibration: Calibration | None = None
    confusion_binary: Confusion | None = None
    confusion_multiclass: Confusion | None = None
    timings: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class DemoRunInfo:
    """A demo run: its name, how it ended and the settings it used."""

    name: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion of one task."""

    task: str
    name: str
    architecture: str
    classes: tuple[str, ...]
    since: datetime | None
    macro_f1: float | None
    n_train: int | None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of the champion history: a comparison (and the promotion it led to) or a manual action."""

    when: datetime | None
    task: str
    action: str  # promote / keep (a comparison's decision), or reject / rollback / promote without one
    champion: str | None
    challenger: str
    reason: str
    actor: str | None = None
    champion_macro_f1: float | None = None
    challenger_macro_f1: float | None = None
    gain: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_eval: int | None = None


@dataclass(frozen=True)
class GalleryItem:
    """An image of the heat-map gallery with the champions' guess; pictures are PNG bytes once made."""

    image_id: int
    name: str
    path: str
    guess: str
    confidence: float
    label: str | None
    most_certain: bool
    photo_png: bytes | None = None
    heatmap_png: bytes | None = None
    note: str | None = None


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows."""

    generated_at: datetime
    database: str
    run: DemoRunInfo | None = None
    other_runs: tuple[str, ...] = ()
    rounds: tuple[RoundPoint, ...] = ()
    champions: tuple[ChampionInfo, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    history_total: int = 0
    gallery: tuple[GalleryItem, ...] = ()
    gallery_model_key: str | None = None
    gallery_note: str | None = None
    settings: tuple[tuple[str, str], ...] = ()
    settings_source: str = ""
    image_counts: tuple[tuple[str, int], ...] = field(default_factory=tuple)
