"""The label space: the good class and the defect types, as one value every layer passes around.

Pure Python (no torch, no numpy), so that the torch-free modules and the workers can import it freely.
The settings build it once (``Settings.label_space``); everything below takes it instead of a loose
``good_class`` / ``defect_classes`` pair.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BINARY_CLASSES", "DEFECTIVE", "LabelSpace"]

BINARY_CLASSES: tuple[str, str] = ("ok", "defective")
DEFECTIVE = "defective"  # a label that says "some defect", with no type: binary only


@dataclass(frozen=True)
class LabelSpace:
    """The good class and the defect types (in their configured order).

    The binary task calls ``good_class`` versus any defect (columns ``BINARY_CLASSES``); the multiclass
    task tells the defect types apart (columns ``defect_classes``). A plain "defective" label (no type)
    belongs to the binary task only.
    """

    good_class: str
    defect_classes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "defect_classes", tuple(self.defect_classes))
        defects = self.defect_classes
        if not self.good_class:
            raise ValueError("the good class must be a non-empty name")
        if not defects or not all(defects) or len(set(defects)) != len(defects):
            raise ValueError(f"defect_classes must be non-empty and unique, got {defects}")
        if self.good_class in defects:
            raise ValueError(f"good_class {self.good_class!r} must not be one of defect_classes {defects}")

    @classmethod
    def from_classes(cls, classes: tuple[str, ...] | list[str]) -> LabelSpace:
        """From the configured class list: the good class first, then the defect types."""
        return cls(good_class=classes[0], defect_classes=tuple(classes[1:]))

    @property
    def classes(self) -> tuple[str, ...]:
        """The good class then the defect types: the columns of the combined distribution."""
        return (self.good_class, *self.defect_classes)

    @property
    def known_labels(self) -> tuple[str, ...]:
        """Every label an image may carry: the classes and the untyped "defective"."""
        return (self.good_class, DEFECTIVE, *self.defect_classes)

    def class_names(self, task: str) -> tuple[str, ...]:
        """The columns of ``task``'s model ("binary" or "multiclass"; a ``ModelTask`` is one)."""
        return BINARY_CLASSES if task == "binary" else self.defect_classes

    def is_defect(self, label: str) -> bool:
        """Whether ``label`` says the garment is defective (a defect type or the untyped "defective")."""
        return label == DEFECTIVE or label in self.defect_classes

    def task_label(self, label: str, task: str) -> str | None:
        """The label an image gets in ``task``, or None when it has no place there: binary keeps the
        good class and folds every defect into "defective"; multiclass keeps the defect types only."""
        if task == "binary":
            if label == self.good_class:
                return label
            return DEFECTIVE if self.is_defect(label) else None
        return label if label in self.defect_classes else None

    def defect_index(self, label: str) -> int:
        """The column of defect type ``label`` in the multiclass model (``ValueError`` if it is none)."""
        try:
            return self.defect_classes.index(label)
        except ValueError:
            raise ValueError(
                f"{label!r} is not a defect type; defect types: {', '.join(self.defect_classes)}"
            ) from None
