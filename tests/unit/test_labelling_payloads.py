"""Label Studio payloads: builders (tables + hypothesis) and the webhook parser on realistic bodies."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelling.errors import LabellingError, PayloadError
from labelling.names import FROM_NAME, GUESS_NAME, HEATMAP_NAME, IMAGE_ID_KEY, IMAGE_NAME, MODEL_NAME_KEY
from labelling.payloads import (
    AnnotationAction,
    AnnotationEvent,
    TaskPrediction,
    TaskSpec,
    build_prediction,
    build_task,
    describe_guess,
    ml_predict_results,
    parse_annotation,
    parse_webhook,
    to_unit_interval,
)

CLASSES = ("ok", "hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")
TOKEN = "9105a1d897e52286"  # the project's invite token: must never reach a message or a log
FAST = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------ bodies (Label Studio 1.23)
def project_object(project_id: int = 2) -> dict[str, Any]:
    return {
        "id": project_id,
        "title": "defectloop",
        "label_config": '<View><Image name="image" value="$image"/></View>',
        "token": TOKEN,
        "model_version": "binary-3+multiclass-2",
        "sampling": "Uncertainty sampling",
        "task_number": 40,
        "organization": 1,
        "created_by": 1,
    }


def choice(label: str, from_name: str = FROM_NAME) -> dict[str, Any]:
    return {
        "id": "Xk3fQ9aZ1b",
        "from_name": from_name,
        "to_name": IMAGE_NAME,
        "type": "choices",
        "origin": "manual",
        "value": {"choices": [label]},
    }


def annotation_object(
    annotation_id: int = 17,
    task_id: int = 19,
    *,
    label: str | None = "hole",
    was_cancelled: bool = False,
    completed_by: object = 1,
) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "result": [] if label is None else [choice(label)],
        "was_cancelled": was_cancelled,
        "ground_truth": False,
        "created_at": "2021-08-17T13:52:48.536303Z",
        "updated_at": "2021-08-17T13:53:01.000100Z",
        "draft_created_at": None,
        "lead_time": 4.2,
        "prediction": {},
        "result_count": 0,
        "unique_id": "1b0c9a4e-0d6a-4c1e-9f55-2b8c3d9e7f10",
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": 2,
        "completed_by": completed_by,
        "updated_by": 1,
        "parent_prediction": 33,
        "parent_annotation": None,
        "last_created_by": None,
    }


def task_object(task_id: int = 19, image_id: object = 5) -> dict[str, Any]:
    data: dict[str, Any] = {
        IMAGE_NAME: "http://127.0.0.1:8000/media/image/5?sig=abc",
        HEATMAP_NAME: "",
        "informativeness": 0.9,
        "predicted": "ok",
    }
    if image_id is not None:
        data[IMAGE_ID_KEY] = image_id
    return {
        "id": task_id,
        "data": data,
        "meta": {},
        "created_at": "2021-08-17T13:51:02.590839Z",
        "updated_at": "2021-08-17T13:52:48.600000Z",
        "is_labeled": True,
        "overlap": 1,
        "inner_id": 3,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 1,
        "project": 2,
        "updated_by": 1,
        "file_upload": None,
    }


def webhook(action: str = "ANNOTATION_CREATED", **annotation_kwargs: Any) -> dict[str, Any]:
    annotation = annotation_object(**annotation_kwargs)
    return {
        "action": action,
        "annotation": annotation,
        "task": task_object(annotation["task"]),
        "project": project_object(),
    }


def deleted_webhook(ids: list[int]) -> dict[str, Any]:
    # What Label Studio 1.23 sends (webhooks/models.py: OnlyIDWebhookSerializer): ids only.
    return {
        "action": "ANNOTATIONS_DELETED",
        "annotations": [{"id": i} for i in ids],
        "project": project_object(),
    }


# ------------------------------------------------------------------------------------------- builders
@pytest.mark.parametrize(
    ("informativeness", "score"), [(0.0, 1.0), (1.0, 0.0), (0.25, 0.75), (0.9, 0.1), (0.7, 0.3)]
)
def test_build_prediction_scores_one_minus_informativeness(informativeness: float, score: float) -> None:
    prediction = build_prediction(label="hole", informativeness=informativeness, model_version="v7")
    assert prediction == {
        "model_version": "v7",
        "score": score,
        "result": [
            {"from_name": FROM_NAME, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": ["hole"]}}
        ],
    }


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, -math.inf, True])
def test_build_prediction_refuses_informativeness_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="informativeness"):
        build_prediction(label="hole", informativeness=bad, model_version="v7")


@pytest.mark.parametrize(("label", "version"), [("", "v7"), ("hole", "")])
def test_build_prediction_refuses_empty_label_or_version(label: str, version: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build_prediction(label=label, informativeness=0.5, model_version=version)


@FAST
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_build_prediction_most_informative_gets_lowest_score(a: float, b: float) -> None:
    score_a = build_prediction(label="ok", informativeness=a, model_version="v")["score"]
    score_b = build_prediction(label="ok", informativeness=b, model_version="v")["score"]
    assert score_a == round(1.0 - a, 6)
    assert 0.0 <= score_a <= 1.0
    if a > b:
        assert score_a <= score_b


def test_build_task_carries_urls_id_guess_and_prediction() -> None:
    spec = TaskSpec(
        image_id=5,
        image_url="http://h/media/image/5?sig=a",
        heatmap_url=None,
        predicted_label="hole",
        informativeness=0.123456789,
        model_version="binary-3",
        probabilities={"ok": 0.1, "hole": 0.9},
    )
    task = build_task(spec)
    assert task["data"] == {
        IMAGE_NAME: "http://h/media/image/5?sig=a",
        HEATMAP_NAME: "",
        IMAGE_ID_KEY: 5,
        "informativeness": 0.123457,
        "predicted": "hole",
        GUESS_NAME: "Model's guess: hole, very sure (defect 90%; hole 100% of that).",
        MODEL_NAME_KEY: "binary-3",
        "probabilities": {"ok": 0.1, "hole": 0.9},
    }
    assert task["predictions"] == [
        build_prediction(label="hole", informativeness=0.123456789, model_version="binary-3")
    ]
    json.dumps(task, allow_nan=False)  # Label Studio's import takes strict JSON


@pytest.mark.parametrize(
    ("label", "probabilities", "text"),
    [
        ("ok", {"ok": 0.72, "hole": 0.2, "raw_edge": 0.08}, "Model's guess: ok, fairly sure (defect 28%)."),
        ("ok", {"ok": 0.97, "hole": 0.03}, "Model's guess: ok, very sure (defect 3%)."),
        # At a low decision threshold a defect is called with p(defect) under one half.
        (
            "hole",
            {"ok": 0.6, "hole": 0.3, "raw_edge": 0.1},
            "Model's guess: hole, very unsure (defect 40%; hole 75% of that).",
        ),
        (
            "hole",
            {"ok": 0.05, "hole": 0.95},
            "Model's guess: hole, very sure (defect 95%; hole 100% of that).",
        ),
        (
            "raw_edge",
            {"ok": 1.0, "raw_edge": 0.0},
            "Model's guess: raw_edge, very unsure (defect 0%; raw_edge 0% of that).",
        ),
        ("ok", {}, "Model's guess: ok, very sure (defect 0%)."),
    ],
)
def test_the_guess_is_said_in_words(label: str, probabilities: dict[str, float], text: str) -> None:
    assert describe_guess(label, probabilities, good_class="ok") == text


def test_build_task_keeps_the_heatmap_url_and_refuses_bad_values() -> None:
    spec = TaskSpec(5, "http://h/i", "http://h/hm", "ok", 0.5, "v", {"ok": 1.0})
    assert build_task(spec)["data"][HEATMAP_NAME] == "http://h/hm"
    with pytest.raises(ValueError, match="NaN"):
        build_task(TaskSpec(5, "http://h/i", None, "ok", 0.5, "v", {"ok": math.nan}))
    with pytest.raises(ValueError, match="image_id"):
        build_task(TaskSpec(-1, "http://h/i", None, "ok", 0.5, "v", {}))
    with pytest.raises(ValueError, match="informativeness"):
        build_task(TaskSpec(5, "http://h/i", None, "ok", 2.0, "v", {}))


def test_ml_predict_results_one_item_per_task_in_order() -> None:
    results = ml_predict_results(
        [TaskPrediction("hole", 0.8), None, TaskPrediction("ok", 0.1)], model_version="v9"
    )
    assert [r["model_version"] for r in results] == ["v9"] * 3
    assert results[0]["result"][0]["value"] == {"choices": ["hole"]}
    assert results[0]["score"] == pytest.approx(0.2)
    assert results[1] == {"result": [], "model_version": "v9"}
    assert results[2]["score"] == pytest.approx(0.9)
    assert ml_predict_results([], model_version="v9") == []


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([], []),
        ([0.3], [1.0]),
        ([2.0, 2.0], [1.0, 1.0]),
        ([3.0, 1.0, 2.0], [1.0, 0.0, 0.5]),
        ([1.0, 1.0, 5.0, 0.0], [0.5, 0.5, 1.0, 0.0]),
        ([-4.0, 100.0], [0.0, 1.0]),
    ],
)
def test_to_unit_interval_table(scores: list[float], expected: list[float]) -> None:
    assert to_unit_interval(scores) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_to_unit_interval_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        to_unit_interval([0.1, bad])


@FAST
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.integers(0, 5).map(float), max_size=40))
def test_to_unit_interval_preserves_order_within_unit_interval(scores: list[float]) -> None:
    mapped = to_unit_interval(scores)
    assert len(mapped) == len(scores)
    assert all(0.0 <= m <= 1.0 for m in mapped)
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] < scores[j]:
                assert mapped[i] < mapped[j]
            elif scores[i] == scores[j]:
                assert mapped[i] == mapped[j]
    if len(set(scores)) > 1:
        assert min(mapped) == 0.0
        assert max(mapped) == 1.0
    # The mapped values are valid informativeness for a prediction.
    for m in mapped:
        build_prediction(label="ok", informativeness=m, model_version="v")


# -------------------------------------------------------------------------------------------- parsing
def test_created_webhook_gives_one_event() -> None:
    (event,) = parse_webhook(webhook("ANNOTATION_CREATED"), classes=CLASSES)
    assert event == AnnotationEvent(
        action=AnnotationAction.CREATED,
        ls_annotation_id=17,
        ls_task_id=19,
        ls_project_id=2,
        image_id=5,
        label="hole",
        annotator="1",
        annotated_at=datetime(2021, 8, 17, 13, 53, 1, 100, tzinfo=UTC),
        was_cancelled=False,
    )


def test_updated_webhook_takes_the_email_of_an_expanded_user() -> None:
    body = webhook("ANNOTATION_UPDATED", label="raw_edge", completed_by={"id": 3, "email": "ann@example.com"})
    (event,) = parse_webhook(body, classes=CLASSES)
    assert event.action is AnnotationAction.UPDATED
    assert (event.label, event.annotator) == ("raw_edge", "ann@example.com")
    body["annotation"]["completed_by"] = {"id": 3, "email": ""}
    assert parse_webhook(body, classes=CLASSES)[0].annotator == "3"
    body["annotation"]["completed_by"] = None
    assert parse_webhook(body, classes=CLASSES)[0].annotator is None


def test_skipped_annotation_has_no_label() -> None:
    (event,) = parse_webhook(webhook(label=None, was_cancelled=True), classes=CLASSES)
    assert event.was_cancelled is True
    assert event.label is None
    # A skip after choosing leaves the choice in the result: still no label to learn from.
    (event,) = parse_webhook(webhook(label="hole", was_cancelled=True), classes=CLASSES)
    assert event.label is None


def test_other_results_of_the_annotation_are_ignored() -> None:
    body = webhook()
    body["annotation"]["result"].insert(
        0, {"from_name": "comment", "to_name": IMAGE_NAME, "type": "textarea"}
    )
    assert parse_webhook(body, classes=CLASSES)[0].label == "hole"


def test_deleted_webhook_gives_one_event_per_annotation() -> None:
    events = parse_webhook(deleted_webhook([17, 18]), classes=CLASSES)
    assert [(e.action, e.ls_annotation_id, e.ls_task_id, e.ls_project_id) for e in events] == [
        (AnnotationAction.DELETED, 17, None, 2),
        (AnnotationAction.DELETED, 18, None, 2),
    ]
    assert all(e.label is None and e.image_id is None for e in events)


@pytest.mark.parametrize(
    "body",
    [
        {"action": "ANNOTATION_DELETED", "annotations": [{"id": 17, "task": 19}]},
        {"action": "ANNOTATION_DELETED", "annotation": {"id": 17, "task": 19}},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 17, "task": 19, "project": 2}]},
    ],
)
def test_deletion_spellings_and_task_ids_are_accepted(body: dict[str, Any]) -> None:
    (event,) = parse_webhook(body, classes=CLASSES)
    assert (event.action, event.ls_annotation_id, event.ls_task_id) == (AnnotationAction.DELETED, 17, 19)


def test_bulk_created_webhook_pairs_annotations_with_their_tasks() -> None:
    body = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [annotation_object(1, 20, label="ok"), annotation_object(2, 21, label="hole")],
        "task": [task_object(21, image_id=8), task_object(20, image_id=7)],
        "project": project_object(),
    }
    events = parse_webhook(body, classes=CLASSES)
    assert [(e.ls_annotation_id, e.ls_task_id, e.image_id, e.label) for e in events] == [
        (1, 20, 7, "ok"),
        (2, 21, 8, "hole"),
    ]


@pytest.mark.parametrize(
    "action", ["TASKS_CREATED", "PROJECT_UPDATED", "START_TRAINING", "LABEL_LINK_CREATED"]
)
def test_other_actions_are_ignored(action: str) -> None:
    assert parse_webhook({"action": action, "project": project_object()}, classes=CLASSES) == []


def test_task_without_our_image_id_gives_none() -> None:
    body = webhook()
    del body["task"]["data"][IMAGE_ID_KEY]
    assert parse_webhook(body, classes=CLASSES)[0].image_id is None


def test_project_id_falls_back_to_the_body_project() -> None:
    body = webhook()
    del body["annotation"]["project"]
    del body["task"]["project"]
    body["project"]["id"] = 9
    assert parse_webhook(body, classes=CLASSES)[0].ls_project_id == 9


def test_naive_and_offset_timestamps_become_utc() -> None:
    body = webhook()
    body["annotation"]["updated_at"] = "2021-08-17T13:53:01"
    assert parse_webhook(body, classes=CLASSES)[0].annotated_at == datetime(
        2021, 8, 17, 13, 53, 1, tzinfo=UTC
    )
    body["annotation"]["updated_at"] = "2021-08-17T15:53:01+02:00"
    at = parse_webhook(body, classes=CLASSES)[0].annotated_at
    assert at == datetime(2021, 8, 17, 13, 53, 1, tzinfo=UTC)
    assert at is not None
    assert at.utcoffset() == timedelta(0)
    body["annotation"]["updated_at"] = None
    created = parse_webhook(body, classes=CLASSES)[0].annotated_at
    assert created == datetime(2021, 8, 17, 13, 52, 48, 536303, tzinfo=UTC)


def _mutated(change: Any) -> dict[str, Any]:
    body = webhook()
    change(body)
    return body


MALFORMED: list[tuple[str, object, str]] = [
    ("list body", [webhook()], "must be a JSON object, got an array"),
    ("string body", "ANNOTATION_CREATED", "must be a JSON object, got a string"),
    ("null body", None, "must be a JSON object, got null"),
    ("no action", _mutated(lambda b: b.pop("action")), "'action' must be a non-empty string"),
    ("no annotation", _mutated(lambda b: b.pop("annotation")), "'annotation' must be a JSON object"),
    ("no task", _mutated(lambda b: b.pop("task")), "'task' must be a JSON object"),
    ("no annotation id", _mutated(lambda b: b["annotation"].pop("id")), "annotation has no 'id'"),
    ("string id", _mutated(lambda b: b["annotation"].update(id="17")), "'id' must be an integer"),
    ("bool id", _mutated(lambda b: b["annotation"].update(id=True)), "'id' must be an integer"),
    ("string task id", _mutated(lambda b: b["task"].update(id="19")), "'id' must be an integer"),
    ("task mismatch", _mutated(lambda b: b["annotation"].update(task=20)), "names task 20"),
    (
        "project not int",
        _mutated(lambda b: b["annotation"].update(project="2")),
        "'project' must be an integer",
    ),
    ("image id str", _mutated(lambda b: b["task"]["data"].update({IMAGE_ID_KEY: "5"})), IMAGE_ID_KEY),
    ("data not object", _mutated(lambda b: b["task"].update(data=[1])), "'data' must be an object"),
    ("no result", _mutated(lambda b: b["annotation"].pop("result")), "'result' must be an array"),
    ("empty result", _mutated(lambda b: b["annotation"].update(result=[])), f"no '{FROM_NAME}' choice"),
    (
        "other control only",
        _mutated(lambda b: b["annotation"].update(result=[choice("hole", from_name="other")])),
        f"no '{FROM_NAME}' choice",
    ),
    (
        "two regions",
        _mutated(lambda b: b["annotation"]["result"].append(choice("ok"))),
        f"2 '{FROM_NAME}' results",
    ),
    (
        "two choices",
        _mutated(lambda b: b["annotation"]["result"][0]["value"].update(choices=["hole", "ok"])),
        "chose 2 classes",
    ),
    (
        "no choices",
        _mutated(lambda b: b["annotation"]["result"][0]["value"].update(choices=[])),
        "chose no class",
    ),
    (
        "choices not names",
        _mutated(lambda b: b["annotation"]["result"][0].update(value={"choices": [3]})),
        "'value.choices' array",
    ),
    (
        "unknown class",
        _mutated(lambda b: b["annotation"]["result"][0]["value"].update(choices=["stain"])),
        "unknown class 'stain'; the project's classes are ok, hole, seam_puckering",
    ),
    ("bad timestamp", _mutated(lambda b: b["annotation"].update(updated_at="yesterday")), "not an ISO 8601"),
    ("number timestamp", _mutated(lambda b: b["annotation"].update(created_at=5)), "timestamp string"),
    (
        "cancelled not bool",
        _mutated(lambda b: b["annotation"].update(was_cancelled="no")),
        "must be a boolean",
    ),
    ("user list", _mutated(lambda b: b["annotation"].update(completed_by=[1])), "'completed_by'"),
    ("project list", _mutated(lambda b: b.update(project=[TOKEN])), "'project' must be an object"),
    ("deleted without ids", {"action": "ANNOTATIONS_DELETED"}, "no 'annotations' array"),
    ("deleted id str", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}, "must be an integer"),
    ("deleted item list", {"action": "ANNOTATIONS_DELETED", "annotations": [[17]]}, "must be a JSON object"),
    ("bulk not arrays", {"action": "ANNOTATIONS_CREATED", "annotation": {}, "task": {}}, "arrays"),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_bodies_raise_payload_error_naming_the_field(body: object, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_webhook(body, classes=CLASSES)
    assert message in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert isinstance(caught.value, LabellingError)
    assert isinstance(caught.value, ValueError)


def test_classes_must_be_a_sequence_of_names() -> None:
    with pytest.raises(TypeError, match="not the string"):
        parse_webhook(webhook(), classes="hole")
    with pytest.raises(ValueError, match="at least one"):
        parse_webhook(webhook(), classes=[])


def test_parse_annotation_reads_an_api_listing() -> None:
    annotation = annotation_object(40, 19, label="broken_stitch", completed_by={"id": 1, "email": "a@b.c"})
    event = parse_annotation(annotation, task_object(19, image_id=12), classes=CLASSES)
    assert event.action is AnnotationAction.UPDATED
    assert (event.ls_annotation_id, event.ls_task_id, event.image_id) == (40, 19, 12)
    assert (event.label, event.annotator, event.ls_project_id) == ("broken_stitch", "a@b.c", 2)
    created = parse_annotation(annotation, task_object(19), classes=CLASSES, action=AnnotationAction.CREATED)
    assert created.action is AnnotationAction.CREATED
    gone = parse_annotation(annotation, task_object(19), classes=CLASSES, action=AnnotationAction.DELETED)
    assert (gone.action, gone.ls_annotation_id, gone.ls_task_id, gone.label) == (
        AnnotationAction.DELETED,
        40,
        19,
        None,
    )


@pytest.mark.parametrize(
    ("created_username", "annotator"),
    [
        (
            " ann@factory.example, 7",
            "ann@factory.example",
        ),  # Label Studio's form: "<first> <last> <email>, <id>"
        ("Ann Lee ann@factory.example, 7", "ann@factory.example"),
        ("", "7"),  # no e-mail to read: the id stays (the recording worker looks it up)
        (None, "7"),
        ("no address here, 7", "7"),
    ],
)
def test_the_annotator_is_read_by_e_mail_where_the_api_says_it(
    created_username: object, annotator: str
) -> None:
    annotation = annotation_object(40, 19, label="hole", completed_by=7)
    annotation["created_username"] = created_username
    assert parse_annotation(annotation, task_object(19), classes=CLASSES).annotator == annotator


def test_parse_annotation_validates_like_the_webhook() -> None:
    annotation = annotation_object(label="stain")
    with pytest.raises(PayloadError, match="unknown class 'stain'"):
        parse_annotation(annotation, task_object(), classes=CLASSES)


def test_parsing_does_not_modify_the_body() -> None:
    body = webhook()
    before = copy.deepcopy(body)
    parse_webhook(body, classes=CLASSES)
    assert body == before


# ------------------------------------------------------------------------------------ JSON round trip
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))])
events = st.builds(
    AnnotationEvent,
    action=st.sampled_from(AnnotationAction),
    ls_annotation_id=st.integers(0, 2**53),
    ls_task_id=st.none() | st.integers(0, 2**53),
    ls_project_id=st.none() | st.integers(0, 2**31),
    image_id=st.none() | st.integers(0, 2**53),
    label=st.none() | st.sampled_from(CLASSES),
    annotator=st.none() | st.text(max_size=30),
    annotated_at=st.none() | st.datetimes(timezones=ZONES),
    was_cancelled=st.booleans(),
)


@FAST
@given(event=events)
def test_annotation_event_json_round_trip_is_exact(event: AnnotationEvent) -> None:
    wire = json.loads(json.dumps(event.to_json()))  # what a Celery JSON message does to it
    back = AnnotationEvent.from_json(wire)
    assert back == event
    assert back.to_json() == event.to_json()
    assert isinstance(back.action, AnnotationAction)


def test_parsed_event_round_trips() -> None:
    for event in parse_webhook(webhook(), classes=CLASSES) + parse_webhook(
        deleted_webhook([3]), classes=CLASSES
    ):
        assert AnnotationEvent.from_json(json.loads(json.dumps(event.to_json()))) == event


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("action"), "no 'action'"),
        (lambda d: d.update(action="moved"), "valid actions: created, updated, deleted"),
        (lambda d: d.pop("ls_annotation_id"), "no 'ls_annotation_id'"),
        (lambda d: d.update(ls_task_id="19"), "'ls_task_id' must be an integer"),
        (lambda d: d.update(label=3), "'label' must be a string or null"),
        (lambda d: d.update(annotated_at="soon"), "not an ISO 8601"),
        (lambda d: d.update(was_cancelled=None), "'was_cancelled' must be a boolean"),
    ],
)
def test_from_json_refuses_bad_events(change: Any, message: str) -> None:
    data = parse_webhook(webhook(), classes=CLASSES)[0].to_json()
    change(data)
    with pytest.raises(PayloadError, match=message):
        AnnotationEvent.from_json(data)
    with pytest.raises(PayloadError, match="JSON object"):
        AnnotationEvent.from_json([data])  # type: ignore[arg-type]
