"""Label Studio payloads: tasks and predictions we push, annotation events we receive. Pure: no I/O.

The builders produce the JSON Label Studio 1.23 accepts on import and from an ML backend's ``/predict``;
the parsers turn a webhook body (or an annotation from the API listing) into ``AnnotationEvent`` values
that travel as Celery message arguments. Every malformed input raises ``PayloadError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from labelling.errors import PayloadError
from labelling.names import FROM_NAME, GUESS_NAME, HEATMAP_NAME, IMAGE_ID_KEY, IMAGE_NAME, MODEL_NAME_KEY

__all__ = [
    "CREATE_ACTIONS",
    "DELETE_ACTIONS",
    "AnnotationAction",
    "AnnotationEvent",
    "PayloadError",
    "TaskPrediction",
    "TaskSpec",
    "build_prediction",
    "build_task",
    "describe_guess",
    "ml_predict_results",
    "parse_annotation",
    "parse_webhook",
    "to_unit_interval",
]

DIGITS = 6
"""Decimals kept in scores and probabilities: far finer than any difference that should reorder a queue."""

CREATE_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED")
UPDATE_ACTION = "ANNOTATION_UPDATED"
# Label Studio 1.23 sends the plural for a single deletion too (its API view wraps the id in a list);
# its docs and issue #5 also name the singular, so both are accepted.
DELETE_ACTIONS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")

_TIMESTAMP_REPR_LIMIT = 40


# ------------------------------------------------------------------------------------------ building
@dataclass(frozen=True)
class TaskSpec:
    """What a Label Studio task for one of our images carries: the photo, the heat-map and the guess."""

    image_id: int
    image_url: str
    heatmap_url: str | None
    predicted_label: str
    informativeness: float
    """In [0, 1], higher = a label teaches the model more (see ``to_unit_interval``)."""
    model_version: str
    probabilities: Mapping[str, float]
    good_class: str = "ok"
    """The class that means "no defect" (the first of the configured classes)."""


@dataclass(frozen=True)
class TaskPrediction:
    """One ``/predict`` answer: the model's class for a task and how informative its label would be."""

    label: str
    informativeness: float


def _check_informativeness(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"informativeness must be a number in [0, 1], got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(
            f"informativeness must be finite and in [0, 1], got {x!r}; map raw strategy scores with "
            "to_unit_interval (or use models.selection's normalised informativeness)"
        )
    return x


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def build_prediction(*, label: str, informativeness: float, model_version: str) -> dict[str, Any]:
    """A Label Studio prediction choosing ``label`` for the image, scored ``1 - informativeness``.

    Why the inversion: Label Studio orders tasks by ``predictions_score`` ascending and its
    "Uncertainty sampling" queue hands out the *lowest* score first; both only look at predictions whose
    ``model_version`` equals the project's. The most informative task must therefore have the lowest score.
    """
    x = _check_informativeness(informativeness)
    return {
        "model_version": _check_text(model_version, "model_version"),
        "score": round(1.0 - x, DIGITS),
        "result": [
            {
                "from_name": FROM_NAME,
                "to_name": IMAGE_NAME,
                "type": "choices",
                "value": {"choices": [_check_text(label, "label")]},
            }
        ],
    }


# How sure the model is, in words, by the probability of its call (checked from the top).
_SURENESS = ((0.9, "very sure"), (0.7, "fairly sure"), (0.5, "unsure"), (0.0, "very unsure"))


def describe_guess(predicted_label: str, probabilities: Mapping[str, float], *, good_class: str) -> str:
    """The model's guess and how sure it is, in words an annotator reads at a glance.

    The call is two-staged (defective or not, then which defect), so the words follow it: for the good
    class, ``"Model's guess: ok, fairly sure (defect 28%)."``; for a defect,
    ``"Model's guess: hole, unsure (defect 55%; hole 80% of that)."`` The sureness words read the
    probability of the first stage's call.
    """
    shares = {str(name): float(p) for name, p in probabilities.items() if math.isfinite(float(p))}
    defect = min(1.0, max(0.0, sum(p for name, p in shares.items() if name != good_class)))
    if predicted_label == good_class:
        words = next(word for floor, word in _SURENESS if 1.0 - defect >= floor)
        return f"Model's guess: {predicted_label}, {words} (defect {defect:.0%})."
    words = next(word for floor, word in _SURENESS if defect >= floor)
    of_defects = shares.get(predicted_label, 0.0) / defect if defect > 0 else 0.0
    share = f"{predicted_label} {of_defects:.0%} of that"
    return f"Model's guess: {predicted_label}, {words} (defect {defect:.0%}; {share})."


def build_task(spec: TaskSpec) -> dict[str, Any]:
    """The import payload of one task: its data (URLs, our image id, the guess) and its prediction."""
    if isinstance(spec.image_id, bool) or not isinstance(spec.image_id, int) or spec.image_id < 0:
        raise ValueError(f"image_id must be a non-negative int, got {spec.image_id!r}")
    probabilities: dict[str, float] = {}
    for name, p in spec.probabilities.items():
        if not math.isfinite(float(p)):
            raise ValueError(f"probability of class {name!r} is {p!r}; JSON cannot carry NaN or infinity")
        probabilities[str(name)] = round(float(p), DIGITS)
    prediction = build_prediction(
        label=spec.predicted_label, informativeness=spec.informativeness, model_version=spec.model_version
    )
    return {
        "data": {
            IMAGE_NAME: _check_text(spec.image_url, "image_url"),
            # Label Studio's <Image> needs the key to exist; an empty URL shows an empty panel.
            HEATMAP_NAME: spec.heatmap_url or "",
            IMAGE_ID_KEY: spec.image_id,
            "informativeness": round(float(spec.informativeness), DIGITS),
            "predicted": spec.predicted_label,
            GUESS_NAME: describe_guess(spec.predicted_label, probabilities, good_class=spec.good_class),
            MODEL_NAME_KEY: spec.model_version,
            "probabilities": probabilities,
        },
        "predictions": [prediction],
    }


def ml_predict_results(
    predictions: Sequence[TaskPrediction | None], *, model_version: str
) -> list[dict[str, Any]]:
    """The ``results`` list of a ``/predict`` answer: one item per task, in the tasks' order.

    ``None`` (no prediction possible, e.g. the image is gone) gives an empty result with no score, which
    Label Studio stores as "no pre-annotation" instead of failing the whole batch.
    """
    _check_text(model_version, "model_version")
    results: list[dict[str, Any]] = []
    for item in predictions:
        if item is None:
            results.append({"result": [], "model_version": model_version})
            continue
        prediction = build_prediction(
            label=item.label, informativeness=item.informativeness, model_version=model_version
        )
        results.append(
            {"result": prediction["result"], "score": prediction["score"], "model_version": model_version}
        )
    return results


def to_unit_interval(scores: Sequence[float]) -> list[float]:
    """Map one batch's raw informativeness scores (higher = more informative) to [0, 1], keeping order.

    Rank-based: the distinct values are ranked, lowest 0.0 and highest 1.0, evenly spaced between; equal
    scores get equal values; a batch whose scores are all equal maps to 1.0 (all were chosen, none is less
    informative than another). It needs no knowledge of the strategy's range (k-center distances have
    none), but values are comparable only *within* the batch: tasks of two batches under the same model
    version interleave by rank, not by informativeness. Where the strategy's bound is known, prefer a
    bound-normalised value (``models.selection.Selection.informativeness``), which compares across batches.
    """
    values = [float(s) for s in scores]
    bad = [s for s in values if not math.isfinite(s)]
    if bad:
        raise ValueError(f"scores must be finite, got {bad[0]!r}")
    distinct = sorted(set(values))
    if len(distinct) <= 1:
        return [1.0] * len(values)
    rank = {value: i for i, value in enumerate(distinct)}
    top = len(distinct) - 1
    return [rank[value] / top for value in values]


# ------------------------------------------------------------------------------------------- events
class AnnotationAction(StrEnum):
    """What happened to an annotation in Label Studio."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class AnnotationEvent:
    """One annotation change, JSON-safe via ``to_json``/``from_json`` so it can be a Celery argument.

    ``ls_task_id`` is None only for deletions: Label Studio's deletion webhook carries annotation ids
    alone. ``label`` is None for deletions and skipped (cancelled) annotations. ``annotated_at`` is UTC.
    """

    action: AnnotationAction
    ls_annotation_id: int
    ls_task_id: int | None
    ls_project_id: int | None
    image_id: int | None
    label: str | None
    annotator: str | None
    annotated_at: datetime | None
    was_cancelled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "ls_annotation_id": self.ls_annotation_id,
            "ls_task_id": self.ls_task_id,
            "ls_project_id": self.ls_project_id,
            "image_id": self.image_id,
            "label": self.label,
            "annotator": self.annotator,
            "annotated_at": None if self.annotated_at is None else self.annotated_at.isoformat(),
            "was_cancelled": self.was_cancelled,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnnotationEvent:
        """Rebuild an event from ``to_json``'s output; extra keys are ignored (a newer sender may add any)."""
        if not isinstance(data, Mapping):
            raise PayloadError(f"an annotation event must be a JSON object, got {_json_type(data)}")
        where = "annotation event"
        try:
            action = AnnotationAction(data["action"])
        except KeyError:
            raise PayloadError(f"{where} has no 'action'") from None
        except ValueError:
            valid = ", ".join(a.value for a in AnnotationAction)
            raise PayloadError(f"{where} has action {data['action']!r}; valid actions: {valid}") from None
        was_cancelled = data.get("was_cancelled")
        if not isinstance(was_cancelled, bool):
            raise PayloadError(f"{where} 'was_cancelled' must be a boolean, got {_json_type(was_cancelled)}")
        return cls(
            action=action,
            ls_annotation_id=_require_int(data, "ls_annotation_id", where),
            ls_task_id=_optional_int(data, "ls_task_id", where),
            ls_project_id=_optional_int(data, "ls_project_id", where),
            image_id=_optional_int(data, "image_id", where),
            label=_optional_str(data, "label", where),
            annotator=_optional_str(data, "annotator", where),
            # Kept as written (offset or not), so that from_json(to_json(e)) == e field for field.
            annotated_at=_parse_time(data.get("annotated_at"), "annotated_at", where, to_utc=False),
            was_cancelled=was_cancelled,
        )


# ------------------------------------------------------------------------------------------ parsing
def _json_type(value: object) -> str:
    # Messages name JSON types, and never echo the value: a body may carry the project's invite token.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    if key not in obj or obj[key] is None:
        raise PayloadError(f"{where} has no '{key}'")
    value = obj[key]
    if not _is_int(value):
        raise PayloadError(f"{where} '{key}' must be an integer, got {_json_type(value)}")
    return int(value)


def _optional_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    if obj.get(key) is None:
        return None
    return _require_int(obj, key, where)


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError(f"{where} '{key}' must be a string or null, got {_json_type(value)}")


def _require_mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} '{key}' must be a JSON object, got {_json_type(value)}")
    return value


def _parse_time(value: object, field: str, where: str, *, to_utc: bool = True) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where} '{field}' must be an ISO 8601 timestamp string, got {_json_type(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        shown = value if len(value) <= _TIMESTAMP_REPR_LIMIT else value[:_TIMESTAMP_REPR_LIMIT] + "..."
        raise PayloadError(f"{where} '{field}' {shown!r} is not an ISO 8601 timestamp") from None
    if not to_utc:
        return moment
    # Label Studio runs with USE_TZ and sends "...Z"; a naive time can only be its UTC clock.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of class names, not the string {classes!r}")
    names = tuple(classes)
    if not names:
        raise ValueError("classes must name at least one class")
    return names


def _project_id_of(body: Mapping[str, Any]) -> int | None:
    """The project id of a webhook body: ``project`` is the whole project object (or, rarely, its id)."""
    project = body.get("project")
    if project is None:
        return None
    if _is_int(project):
        return int(project)
    if isinstance(project, Mapping):
        return _optional_int(project, "id", "webhook body's project")
    raise PayloadError(f"webhook body's 'project' must be an object, got {_json_type(project)}")


def _email_in(created_username: object) -> str | None:
    # The API's display form is "<first> <last> <email>, <id>"; the e-mail is the last word before the comma.
    if not isinstance(created_username, str):
        return None
    words = created_username.rsplit(",", 1)[0].split()
    return words[-1] if words and "@" in words[-1] else None


def _annotator(value: object, where: str, created_username: object = None) -> str | None:
    """Who annotated: an e-mail address where the body tells it, else the Label Studio user id (the
    webhook's ``completed_by`` is an id alone; the recording worker looks its e-mail up)."""
    if value is None:
        return None
    if _is_int(value):
        return _email_in(created_username) or str(value)
    if isinstance(value, Mapping):
        email = value.get("email")
        if isinstance(email, str) and email:
            return email
        user_id = value.get("id")
        if _is_int(user_id):
            return str(user_id)
        raise PayloadError(f"{where} 'completed_by' object has neither an email nor an integer id")
    raise PayloadError(f"{where} 'completed_by' must be a user id or object, got {_json_type(value)}")


def _label_of(result: object, classes: tuple[str, ...], where: str) -> str:
    if not isinstance(result, list):
        raise PayloadError(f"{where} 'result' must be an array, got {_json_type(result)}")
    regions = []
    for region in result:
        if not isinstance(region, Mapping):
            raise PayloadError(f"{where} 'result' items must be objects, got {_json_type(region)}")
        if region.get("from_name") == FROM_NAME:
            regions.append(region)
    if not regions:
        raise PayloadError(
            f"{where} has no '{FROM_NAME}' choice in its result; the label config's "
            f'<Choices name="{FROM_NAME}"> must be answered, or the task skipped'
        )
    if len(regions) > 1:
        raise PayloadError(f"{where} has {len(regions)} '{FROM_NAME}' results; exactly one is expected")
    value = regions[0].get("value")
    choices = value.get("choices") if isinstance(value, Mapping) else None
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise PayloadError(f"{where} '{FROM_NAME}' result has no 'value.choices' array of class names")
    if not choices:
        raise PayloadError(f"{where} '{FROM_NAME}' result chose no class; exactly one is expected")
    if len(choices) > 1:
        raise PayloadError(
            f"{where} chose {len(choices)} classes ({', '.join(map(repr, choices))}); exactly one is "
            'expected: the label config\'s <Choices> must be choice="single"'
        )
    label = str(choices[0])
    if label not in classes:
        raise PayloadError(
            f"{where}: unknown class {label!r}; the project's classes are {', '.join(classes)}. Make the "
            "label config's choices match the configured classes"
        )
    return label


def _deletion_event(item: object, project_id: int | None) -> AnnotationEvent:
    if not isinstance(item, Mapping):
        raise PayloadError(f"a deleted annotation must be a JSON object, got {_json_type(item)}")
    annotation_id = _require_int(item, "id", "deleted annotation")
    where = f"deleted annotation {annotation_id}"
    item_project = _optional_int(item, "project", where)
    return AnnotationEvent(
        action=AnnotationAction.DELETED,
        ls_annotation_id=annotation_id,
        # Label Studio 1.23 sends only the id; a task id, where some version adds one, is kept.
        ls_task_id=_optional_int(item, "task", where),
        ls_project_id=item_project if item_project is not None else project_id,
        image_id=None,
        label=None,
        annotator=None,
        annotated_at=None,
        was_cancelled=False,
    )


def _annotation_event(
    annotation: Mapping[str, Any],
    task: Mapping[str, Any],
    *,
    classes: tuple[str, ...],
    action: AnnotationAction,
    project_id: int | None,
) -> AnnotationEvent:
    if not isinstance(annotation, Mapping):
        raise PayloadError(f"an annotation must be a JSON object, got {_json_type(annotation)}")
    if not isinstance(task, Mapping):
        raise PayloadError(f"a task must be a JSON object, got {_json_type(task)}")
    annotation_id = _require_int(annotation, "id", "annotation")
    if action is AnnotationAction.DELETED:
        return _deletion_event(
            {"id": annotation_id, "task": task.get("id"), "project": annotation.get("project")}, project_id
        )
    task_id = _require_int(task, "id", f"task of annotation {annotation_id}")
    where = f"annotation {annotation_id} of task {task_id}"
    annotation_task = annotation.get("task")
    # The API listing may expand the task into an object; webhooks give its id.
    if isinstance(annotation_task, Mapping):
        annotation_task = annotation_task.get("id")
    if annotation_task is not None and annotation_task != task_id:
        raise PayloadError(
            f"annotation {annotation_id} names task {annotation_task!r}, but came with task {task_id}"
        )
    own_project = _optional_int(annotation, "project", where)
    if own_project is None:
        own_project = _optional_int(task, "project", where)

    data = task.get("data")
    if data is not None and not isinstance(data, Mapping):
        raise PayloadError(f"task {task_id} 'data' must be an object, got {_json_type(data)}")
    image_id = _optional_int(data, IMAGE_ID_KEY, f"task {task_id} data") if data is not None else None

    was_cancelled = annotation.get("was_cancelled", False)
    if not isinstance(was_cancelled, bool):
        raise PayloadError(f"{where} 'was_cancelled' must be a boolean, got {_json_type(was_cancelled)}")
    # A skipped task is saved as a cancelled annotation, usually with an empty result: no label to learn.
    label = None if was_cancelled else _label_of(annotation.get("result"), classes, where)

    created_at = _parse_time(annotation.get("created_at"), "created_at", where)
    updated_at = _parse_time(annotation.get("updated_at"), "updated_at", where)
    return AnnotationEvent(
        action=action,
        ls_annotation_id=annotation_id,
        ls_task_id=task_id,
        ls_project_id=own_project if own_project is not None else project_id,
        image_id=image_id,
        label=label,
        annotator=_annotator(annotation.get("completed_by"), where, annotation.get("created_username")),
        annotated_at=updated_at or created_at,
        was_cancelled=was_cancelled,
    )


def parse_annotation(
    annotation: Mapping[str, Any],
    task: Mapping[str, Any],
    *,
    classes: Sequence[str],
    action: AnnotationAction = AnnotationAction.UPDATED,
) -> AnnotationEvent:
    """One annotation (webhook or API listing: the same keys) and its task as an event.

    Validation is ``parse_webhook``'s; raises ``PayloadError``. ``image_id`` is None when the task's data
    has no ``IMAGE_ID_KEY``: the caller decides whether that is a task defectloop did not push.
    """
    return _annotation_event(
        annotation, task, classes=_check_classes(classes), action=action, project_id=None
    )


def _created_batch(
    body: Mapping[str, Any], classes: tuple[str, ...], project_id: int | None
) -> list[AnnotationEvent]:
    # ANNOTATIONS_CREATED (an import with annotations) keeps the singular keys but holds arrays.
    annotations = body.get("annotation")
    tasks = body.get("task")
    if not isinstance(annotations, list) or not isinstance(tasks, list):
        raise PayloadError("ANNOTATIONS_CREATED body must carry 'annotation' and 'task' arrays")
    by_id: dict[int, Mapping[str, Any]] = {}
    for task in tasks:
        if not isinstance(task, Mapping):
            raise PayloadError(f"ANNOTATIONS_CREATED 'task' items must be objects, got {_json_type(task)}")
        by_id[_require_int(task, "id", "task")] = task
    events = []
    for annotation in annotations:
        if not isinstance(annotation, Mapping):
            raise PayloadError(f"an annotation must be a JSON object, got {_json_type(annotation)}")
        annotation_id = _require_int(annotation, "id", "annotation")
        task_id = _require_int(annotation, "task", f"annotation {annotation_id}")
        if task_id not in by_id:
            raise PayloadError(
                f"annotation {annotation_id} names task {task_id}, which the body does not carry"
            )
        events.append(
            _annotation_event(
                annotation,
                by_id[task_id],
                classes=classes,
                action=AnnotationAction.CREATED,
                project_id=project_id,
            )
        )
    return events


def parse_webhook(body: object, *, classes: Sequence[str]) -> list[AnnotationEvent]:
    """The annotation events of one Label Studio webhook body; ``[]`` for actions we do not follow.

    ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` give one event; ``ANNOTATIONS_CREATED`` one per
    annotation; ``ANNOTATIONS_DELETED`` (or ``ANNOTATION_DELETED``) one ``DELETED`` event per id.
    Raises ``PayloadError`` with a message that names the bad field and never echoes the body.
    """
    names = _check_classes(classes)
    if not isinstance(body, Mapping):
        raise PayloadError(f"webhook body must be a JSON object, got {_json_type(body)}")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise PayloadError(f"webhook body 'action' must be a non-empty string, got {_json_type(action)}")
    if action not in (*CREATE_ACTIONS, UPDATE_ACTION, *DELETE_ACTIONS):
        return []
    project_id = _project_id_of(body)

    if action in DELETE_ACTIONS:
        if isinstance(body.get("annotations"), list):
            items: list[object] = list(body["annotations"])
        elif isinstance(body.get("annotation"), Mapping):
            items = [body["annotation"]]
        elif "id" in body:
            items = [{"id": body["id"]}]
        else:
            raise PayloadError(f"{action} body has no 'annotations' array")
        return [_deletion_event(item, project_id) for item in items]

    if action == "ANNOTATIONS_CREATED":
        return _created_batch(body, names, project_id)
    kind = AnnotationAction.CREATED if action in CREATE_ACTIONS else AnnotationAction.UPDATED
    annotation = _require_mapping(body, "annotation", f"{action} body")
    task = _require_mapping(body, "task", f"{action} body")
    return [_annotation_event(annotation, task, classes=names, action=kind, project_id=project_id)]
