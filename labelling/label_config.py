"""The Label Studio labelling interface (XML label config) for defect classification, and a reader for it.

The annotator sees the photo, then the model's Grad-CAM heat-map, and picks exactly one class. Control
and object names come from :mod:`labelling.names`, so the config, the task payloads and the webhook
parser agree.
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from labelling.names import FROM_NAME, HEATMAP_NAME, IMAGE_NAME


def build_label_config(classes: Sequence[str]) -> str:
    """The label config XML: photo, heat-map, and a required single choice among ``classes`` (in order).

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

    view = ET.Element("View")
    ET.SubElement(view, "Header", value="Photo (label this one)")
    ET.SubElement(view, "Image", name=IMAGE_NAME, value=f"${IMAGE_NAME}", zoom="true")
    ET.SubElement(view, "Header", value="Model heat-map (Grad-CAM: where the model looked)")
    ET.SubElement(view, "Image", name=HEATMAP_NAME, value=f"${HEATMAP_NAME}")
    ET.SubElement(view, "Header", value="Defect class")
    choices = ET.SubElement(
        view,
        "Choices",
        name=FROM_NAME,
        toName=IMAGE_NAME,
        choice="single",
        required="true",
        showInline="true",
    )
    for name in classes:
        ET.SubElement(choices, "Choice", value=name)
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
