"""The Label Studio labelling interface (XML label config) for defect classification, and a reader for it.

The annotator sees the photo and the model's Grad-CAM heat-map side by side, the model's guess and how
sure it is in words, and picks exactly one class (a digit key each) or skips when unsure. Control
and object names come from :mod:`labelling.names`, so the config, the task payloads and the webhook
parser agree.
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from labelling.names import FROM_NAME, GUESS_NAME, HEATMAP_NAME, IMAGE_NAME

HOTKEYS = "1234567890"
"""One digit per class, in the config's order (classes after the tenth have none)."""
IMAGE_MAX_WIDTH = "400px"
"""Photo and heat-map at most this wide: both side by side, the choices still in view at 1366x768."""
_ROW_STYLE = "display: flex; gap: 16px; align-items: flex-start"
_PANE_STYLE = "flex: 1 1 0; min-width: 0; max-width: 400px"
_GUESS_STYLE = "margin: 8px 0 0 0; font-size: 15px"


def build_label_config(classes: Sequence[str]) -> str:
    """The label config XML: photo and heat-map, the guess, a required single choice among ``classes``.

    Raises ``ValueError`` if ``classes`` is empty, or has an empty, duplicate or control-character name.
    """
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names, not one string")
    if not classes:
        raise ValueError("classes is empty: give at least one class name (e.g. ok, hole)")
    seen: set[str] = set()
    for name in classes:
        if not name.strip():
            raise ValueError(f"class names must not be empty or blank; got {list(classes)!r}")
        if any(unicodedata.category(char) in ("Cc", "Cs") or char in "\ufffe\uffff" for char in name):
            # XML cannot carry most control characters, and a line break in a label helps nobody.
            raise ValueError(f"class name {name!r} has a control character; use letters, digits, _ or -")
        if name in seen:
            raise ValueError(f"class name {name!r} is given twice; class names must be unique")
        seen.add(name)

    # Laid out for judging a defect on a 1366x768 screen: photo and heat-map side by side (each may be
    # zoomed by the annotator), the model's guess in words under them, the choices in one row with a
    # hotkey each, all above the fold. Label Studio's own Skip button is the "unsure" path (recorded as a
    # skipped annotation).
    view = ET.Element("View")
    panes = ET.SubElement(view, "View", style=_ROW_STYLE)
    for name, title in (
        (IMAGE_NAME, "Photo: label this one"),
        (HEATMAP_NAME, "Where the model looked (Grad-CAM)"),
    ):
        pane = ET.SubElement(panes, "View", style=_PANE_STYLE)
        ET.SubElement(pane, "Header", value=title, size="5")
        ET.SubElement(
            pane,
            "Image",
            name=name,
            value=f"${name}",
            width="100%",
            maxWidth=IMAGE_MAX_WIDTH,
            zoom="true",
            zoomControl="true",
        )
    guess = ET.SubElement(view, "View", style=_GUESS_STYLE)
    ET.SubElement(guess, "Text", name=GUESS_NAME, value=f"${GUESS_NAME}")
    keys = min(len(classes), len(HOTKEYS))
    ET.SubElement(
        view, "Header", value=f"Your call: keys {HOTKEYS[0]}-{HOTKEYS[keys - 1]}, Skip if unsure", size="5"
    )
    choices = ET.SubElement(
        view,
        "Choices",
        name=FROM_NAME,
        toName=IMAGE_NAME,
        choice="single",
        required="true",
        showInline="true",
    )
    for index, name in enumerate(classes):
        attributes = {"value": name}
        if index < len(HOTKEYS):
            attributes["hotkey"] = HOTKEYS[index]
        ET.SubElement(choices, "Choice", attributes)
    ET.indent(view, space="  ")
    # ElementTree escapes &, <, > and quotes in attribute values, so any class name is safe here.
    return ET.tostring(view, encoding="unicode")


def choices_in_config(xml: str) -> list[str]:
    """The class names of the ``<Choices name=FROM_NAME>`` control in a label config, in order.

    Empty if the config has no such control (a project made by someone else). Raises ``ValueError``
    if ``xml`` is not well-formed.
    """
    try:
        # The config comes from our own Label Studio server, and expat in Python 3.11 does not resolve
        # external entities, so the stdlib parser is safe enough here.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as exc:
        raise ValueError(f"the label config is not well-formed XML ({exc}); fix or rebuild it") from exc
    for control in root.iter("Choices"):
        if control.get("name") == FROM_NAME:
            return [choice.get("value", "") for choice in control.iter("Choice")]
    return []
