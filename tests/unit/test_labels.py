"""LabelSpace: the good class and the defect types as one checked value."""

from __future__ import annotations

import pytest

from db.schema import ModelTask
from models.labels import BINARY_CLASSES, DEFECTIVE, LabelSpace

SPACE = LabelSpace(good_class="ok", defect_classes=("hole", "raw_edge"))


def test_from_classes_takes_the_good_class_first() -> None:
    assert LabelSpace.from_classes(("ok", "hole", "raw_edge")) == SPACE
    assert SPACE.classes == ("ok", "hole", "raw_edge")
    assert SPACE.known_labels == ("ok", DEFECTIVE, "hole", "raw_edge")


def test_defect_classes_become_a_tuple() -> None:
    assert LabelSpace("ok", ["hole"]).defect_classes == ("hole",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("good", "defects", "match"),
    [
        ("ok", (), "non-empty"),
        ("ok", ("hole", "hole"), "unique"),
        ("ok", ("hole", ""), "non-empty"),
        ("hole", ("hole",), "must not be one of"),
        ("", ("hole",), "good class"),
    ],
)
def test_a_bad_label_space_is_refused(good: str, defects: tuple[str, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LabelSpace(good, defects)


@pytest.mark.parametrize(
    ("task", "expected"), [(ModelTask.BINARY, BINARY_CLASSES), (ModelTask.MULTICLASS, ("hole", "raw_edge"))]
)
def test_class_names_per_task(task: ModelTask, expected: tuple[str, ...]) -> None:
    assert SPACE.class_names(task) == expected


@pytest.mark.parametrize(
    ("label", "binary", "multiclass", "is_defect"),
    [
        ("ok", "ok", None, False),
        ("hole", DEFECTIVE, "hole", True),
        (DEFECTIVE, DEFECTIVE, None, True),
        ("stain", None, None, False),
    ],
)
def test_task_label_and_is_defect(
    label: str, binary: str | None, multiclass: str | None, is_defect: bool
) -> None:
    assert SPACE.task_label(label, ModelTask.BINARY) == binary
    assert SPACE.task_label(label, ModelTask.MULTICLASS) == multiclass
    assert SPACE.is_defect(label) is is_defect


def test_defect_index_names_the_defect_types() -> None:
    assert SPACE.defect_index("raw_edge") == 1
    with pytest.raises(ValueError, match="hole, raw_edge"):
        SPACE.defect_index("ok")
