"""Predictions, and the model key (``b<binary>-m<multiclass>``) that says which champions made them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.repositories._common import _float_dict, _insert_or_get, _integrity
from db.schema import Image, ImageStatus, Prediction


def make_model_key(binary_version_id: int, multiclass_version_id: int | None) -> str:
    """``"b12-m7"``, or ``"b12-m-"`` without a multiclass model: never NULL, so uniqueness holds."""
    multiclass = "-" if multiclass_version_id is None else str(multiclass_version_id)
    return f"b{binary_version_id}-m{multiclass}"


def add_prediction(
    *,
    session: Session,
    image_id: int,
    binary_version_id: int,
    multiclass_version_id: int | None,
    probabilities: Mapping[str, Any],
    predicted_label: str,
    confidence: float,
    uncertainty: Mapping[str, Any],
) -> tuple[Prediction, bool]:
    """Record a prediction; returns ``(prediction, created)``.

    Idempotent on (image, model versions): classifying an image again with the same models returns
    the first prediction unchanged, with ``created=False``.
    """
    probs = _float_dict(probabilities, "probabilities")
    if predicted_label not in probs:
        raise ValueError(f"predicted_label {predicted_label!r} is not one of the classes {sorted(probs)}")
    model_key = make_model_key(binary_version_id, multiclass_version_id)
    values = {
        "image_id": image_id,
        "binary_version_id": binary_version_id,
        "multiclass_version_id": multiclass_version_id,
        "model_key": model_key,
        "probabilities": probs,
        "predicted_label": predicted_label,
        "confidence": float(confidence),
        "uncertainty": _float_dict(uncertainty, "uncertainty"),
    }
    with _integrity(f"prediction for image {image_id} by {model_key} could not be recorded"):
        return _insert_or_get(session, Prediction, values, ["image_id", "model_key"])


def latest_prediction(*, session: Session, image_id: int, model_key: str | None = None) -> Prediction | None:
    """The most recent prediction of an image (by those models, if `model_key` is given), or None."""
    stmt = select(Prediction).where(Prediction.image_id == image_id)
    if model_key is not None:
        stmt = stmt.where(Prediction.model_key == model_key)
    return session.scalars(stmt.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(1)).first()


def list_prediction_model_keys(*, session: Session, limit: int = 50) -> list[str]:
    """The model keys predictions were made with, newest first (the versions Label Studio may see)."""
    newest = func.max(Prediction.id)
    stmt = select(Prediction.model_key).group_by(Prediction.model_key).order_by(newest.desc()).limit(limit)
    return [str(key) for key in session.scalars(stmt)]


def list_predictions_by_confidence(
    *,
    session: Session,
    model_key: str,
    limit: int,
    most_certain: bool = True,
    exclude_image_ids: Iterable[int] = (),
) -> list[tuple[Prediction, Image]]:
    """The predictions of ``model_key`` with their images, the most confident first (or, with
    ``most_certain=False``, the least confident first); images whose bytes are gone (quarantined,
    superseded) are left out, and so are ``exclude_image_ids``."""
    order = Prediction.confidence.desc() if most_certain else Prediction.confidence.asc()
    stmt = (
        select(Prediction, Image)
        .join(Image, Image.id == Prediction.image_id)
        .where(
            Prediction.model_key == model_key,
            Image.status.not_in([ImageStatus.QUARANTINED, ImageStatus.SUPERSEDED]),
        )
        .order_by(order, Prediction.image_id)
        .limit(limit)
    )
    excluded = sorted({int(i) for i in exclude_image_ids})
    if excluded:
        stmt = stmt.where(Prediction.image_id.not_in(excluded))
    return [(row[0], row[1]) for row in session.execute(stmt)]
