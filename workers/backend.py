"""What the HTTP app (``labelling.server``) does when Label Studio calls it: the injected handlers.

Webhook events go to the ``labelling`` queue (the receiver answers at once); a task is known when
defectloop pushed it; ``/predict`` answers from stored predictions of the current champions and scores
an image on demand when it has none; ``START_TRAINING`` requests a whole retrain; media are the camera
file and the heat-map PNG of an image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus, ModelTask, TrainingTrigger
from db.session import session_scope
from labelling.names import IMAGE_ID_KEY
from labelling.payloads import AnnotationEvent, TaskPrediction, ml_predict_results
from models.selection import DEFAULT_STRATEGY, strategy_spec
from workers.labelling import choose_candidates, current_model_key, label_studio_version
from workers.retrain_policy import request_retrain

logger = logging.getLogger(__name__)

__all__ = ["LabellingHandlers"]

NO_MODEL = "none"


class LabellingHandlers:
    """``labelling.server.BackendHandlers`` on our database, broker and champions."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        publish_events: Callable[[Sequence[AnnotationEvent]], None],
        classes: Sequence[str],
        strategy: str,
        heatmaps_dir: Path | None,
        score: Callable[[Sequence[tuple[int, str]]], None] | None = None,
        publish_retrain: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._publish_retrain = publish_retrain
        self._publish = publish_events
        self._classes = tuple(classes)
        spec = strategy_spec(strategy)
        # /predict shows informativeness from stored predictions: a strategy that needs embeddings, or
        # whose scores say nothing about an image (random), is shown by the default ranking instead.
        self._strategy = spec.name if spec.model_scored and not spec.needs_embeddings else DEFAULT_STRATEGY
        self._heatmaps_dir = heatmaps_dir
        self._score = score
        self._lock = threading.Lock()

    def submit_events(self, events: Sequence[AnnotationEvent]) -> None:
        self._publish(events)

    def is_known_task(self, *, ls_project_id: int | None, ls_task_id: int, image_id: int | None) -> bool:
        with session_scope(self._sessions) as session:
            if ls_project_id is not None:
                task = repo.get_label_task_by_ls_id(
                    session=session, ls_project_id=ls_project_id, ls_task_id=ls_task_id
                )
                return task is not None and (image_id is None or task.image_id == image_id)
            return image_id is not None and bool(
                repo.list_images_by_ids(session=session, image_ids=[image_id])
            )

    def model_version(self) -> str:
        with session_scope(self._sessions) as session:
            return self._shown_version(session)

    @staticmethod
    def _shown_version(session: Session) -> str:
        model_key = current_model_key(session)
        return NO_MODEL if model_key is None else label_studio_version(session, model_key)

    def versions(self) -> list[str]:
        with session_scope(self._sessions) as session:
            return [
                label_studio_version(session, key) for key in repo.list_prediction_model_keys(session=session)
            ]

    def health(self) -> dict[str, Any]:
        with session_scope(self._sessions) as session:
            champions = {
                task.value: (
                    None if (row := repo.get_champion(session=session, task=task)) is None else row.name
                )
                for task in ModelTask
            }
            return {"model_version": self._shown_version(session), "champions": champions}

    def request_training(self, *, reason: str) -> None:
        """Queue a whole retrain (``workers.retrain_policy``; a request already pending absorbs this one)
        and tell the training worker at once, so a retrain starts now when none is running (beat's
        policy check sends it again if this message is lost; a duplicate claims nothing)."""
        created = request_retrain(sessions=self._sessions, trigger=TrainingTrigger.LS_WEBHOOK, reason=reason)
        if not created:
            logger.info("retrain already requested; %s joins it", reason)
        if self._publish_retrain is not None:
            try:
                self._publish_retrain()
            except Exception as exc:  # the request is recorded: beat's policy check publishes it
                logger.warning("retrain requested but not sent now (%s); beat's policy check will", exc)

    def _image_ids(self, tasks: Sequence[Mapping[str, Any]]) -> list[int | None]:
        ids: list[int | None] = []
        for task in tasks:
            data = task.get("data")
            value = data.get(IMAGE_ID_KEY) if isinstance(data, Mapping) else None
            ids.append(value if isinstance(value, int) and not isinstance(value, bool) else None)
        return ids

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One ML-backend result per task, in order; tasks that are not our images get an empty result."""
        image_ids = self._image_ids(tasks)
        with session_scope(self._sessions) as session:
            model_key = current_model_key(session)
            if model_key is None:
                return ml_predict_results([None] * len(tasks), model_version=NO_MODEL)
            known = {
                i.id: i.path
                for i in repo.list_images_by_ids(session=session, image_ids=[i for i in image_ids if i])
            }
            missing = [
                (image_id, known[image_id])
                for image_id in known
                if repo.latest_prediction(session=session, image_id=image_id, model_key=model_key) is None
            ]
        if missing and self._score is not None:
            with self._lock:  # one scoring at a time per process: it loads models
                self._score(missing)
        with session_scope(self._sessions) as session:
            stored = {
                image_id: prediction
                for image_id in known
                if (
                    prediction := repo.latest_prediction(
                        session=session, image_id=image_id, model_key=model_key
                    )
                )
                is not None
            }
            ranked = {
                p.image_id: info
                for p, info in choose_candidates(
                    list(stored.values()), strategy=self._strategy, k=len(stored), classes=self._classes
                )
            }
            answers: list[TaskPrediction | None] = [
                None
                if image_id is None or image_id not in stored
                else TaskPrediction(label=stored[image_id].predicted_label, informativeness=ranked[image_id])
                for image_id in image_ids
            ]
            shown = label_studio_version(session, model_key)
        return ml_predict_results(answers, model_version=shown)

    def media_path(self, kind: str, image_id: int) -> Path | None:
        if kind == "heatmap":
            if self._heatmaps_dir is None:
                return None
            path = self._heatmaps_dir / f"{int(image_id)}.png"
            return path if path.is_file() else None
        if kind == "image":
            with session_scope(self._sessions) as session:
                images = repo.list_images_by_ids(session=session, image_ids=[image_id])
                # A superseded row's file holds other bytes now: never show them under this image.
                if not images or images[0].status is ImageStatus.SUPERSEDED:
                    return None
                return Path(images[0].path)
        return None
