"""The Label Studio label config: built from class names, read back, and its validation."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelling.label_config import build_label_config, choices_in_config
from labelling.names import FROM_NAME, GUESS_NAME, HEATMAP_NAME, IMAGE_NAME

CLASSES = ("ok", "hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")


def test_config_shows_photo_and_heatmap_and_asks_for_one_class() -> None:
    root = ET.fromstring(build_label_config(CLASSES))  # noqa: S314
    assert root.tag == "View"
    images = {image.get("name"): image.get("value") for image in root.iter("Image")}
    assert images == {IMAGE_NAME: f"${IMAGE_NAME}", HEATMAP_NAME: f"${HEATMAP_NAME}"}
    headers = [header.get("value", "") for header in root.iter("Header")]
    assert any("Photo" in h for h in headers)
    assert any("Grad-CAM" in h for h in headers)
    # The model's guess in words sits under the images.
    assert [(text.get("name"), text.get("value")) for text in root.iter("Text")] == [
        (GUESS_NAME, f"${GUESS_NAME}")
    ]
    (choices,) = root.iter("Choices")
    assert choices.get("name") == FROM_NAME
    assert choices.get("toName") == IMAGE_NAME
    assert choices.get("choice") == "single"
    assert choices.get("required") == "true"
    assert [c.get("value") for c in choices.iter("Choice")] == list(CLASSES)
    # One digit key per class, and the header says which.
    assert [c.get("hotkey") for c in choices.iter("Choice")] == ["1", "2", "3", "4", "5", "6"]
    assert any("keys 1-6" in h and "Skip" in h for h in headers)


def test_photo_and_heatmap_sit_side_by_side_and_zoom() -> None:
    root = ET.fromstring(build_label_config(CLASSES))  # noqa: S314
    (row,) = [view for view in root.iter("View") if "display: flex" in view.get("style", "")]
    assert sorted(image.get("name") for image in row.iter("Image")) == sorted([IMAGE_NAME, HEATMAP_NAME])
    for image in row.iter("Image"):
        assert image.get("zoom") == "true"
        assert image.get("zoomControl") == "true"


def test_classes_beyond_ten_have_no_hotkey() -> None:
    names = [f"c{i}" for i in range(12)]
    root = ET.fromstring(build_label_config(names))  # noqa: S314
    keys = [c.get("hotkey") for c in root.iter("Choice")]
    assert keys == [*"1234567890", None, None]


def test_choices_round_trip_in_order() -> None:
    assert choices_in_config(build_label_config(CLASSES)) == list(CLASSES)
    assert choices_in_config(build_label_config(["b", "a"])) == ["b", "a"]


def test_xml_special_characters_are_escaped() -> None:
    names = ["a&b", "<script>", 'say "hi"', "it's", "ünïcödé 缝"]
    config = build_label_config(names)
    assert "<script>" not in config
    assert choices_in_config(config) == names


@given(
    st.lists(st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1), max_size=12)
)
def test_any_printable_unique_names_round_trip(names: list[str]) -> None:
    names = list(dict.fromkeys(n for n in names if n.strip()))
    if not names:
        return
    assert choices_in_config(build_label_config(names)) == names


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "empty"),
        (["ok", ""], "empty or blank"),
        (["ok", "   "], "empty or blank"),
        (["ok", "hole", "ok"], "twice"),
        (["ok", "line\nbreak"], "control character"),
        (["ok", "nul\x00"], "control character"),
    ],
)
def test_bad_class_lists_are_rejected(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_label_config(classes)


def test_a_single_string_is_not_a_class_list() -> None:
    with pytest.raises(TypeError):
        build_label_config("ok")


def test_choices_in_a_foreign_config() -> None:
    foreign = (
        '<View><Image name="img" value="$img"/>'
        '<Choices name="other" toName="img"><Choice value="x"/></Choices></View>'
    )
    assert choices_in_config(foreign) == []
    with pytest.raises(ValueError, match="not well-formed"):
        choices_in_config("<View><Choices>")
