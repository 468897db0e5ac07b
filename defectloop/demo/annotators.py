"""The demo's simulated annotators: they label what the loop asks for next, answering from ground truth.

``DirectAnnotator`` ranks with the loop's own ranking (``workers.labelling.choose_candidates`` over the
current champions' stored predictions, the configured strategy) and records through the loop's
recording service (``record_simulated_annotations``, origin ``simulated``). With Label Studio configured
the demo uses ``defectloop.demo.label_studio.LabelStudioAnnotator`` instead, which answers the tasks the
loop pushed there through Label Studio's API (webhooks, reconciliation and the ML backend exercised).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.session import session_scope
from defectloop.errors import DefectloopError
from defectloop.settings import Settings
from labelling.names import SIMULATED_ANNOTATOR  # the same annotator with or without Label Studio
from models.selection import STRATEGIES, strategy_spec

logger = logging.getLogger(__name__)

__all__ = ["SIMULATED_ANNOTATOR", "Annotator", "DirectAnnotator", "Truth"]

Truth = Callable[[int], str]  # image id -> ground-truth label (one of settings.classes)

_DIRECT_PROJECT = 0  # no Label Studio project: no label task is ever planned under it


class Annotator(Protocol):
    """Labels what the loop asks for next, answering from ground truth (annotation origin `simulated`)."""

    def label_batch(self, size: int) -> list[int]:
        """Label up to `size` images, the most informative first as the loop ranks them; return the
        ids of the images whose annotation is now recorded in the database, each once."""
        ...


class DirectAnnotator:
    """Ranks the current champions' predictions with the loop's ranking and records the ground truth of
    the top ``size`` directly (no Label Studio). ``timings`` holds the seconds the last batch spent
    ranking (``rank``) and recording (``label``)."""

    def __init__(self, *, sessions: sessionmaker[Session], settings: Settings, truth: Truth) -> None:
        if strategy_spec(settings.strategy).needs_embeddings:
            *others, last = (name for name, spec in STRATEGIES.items() if not spec.needs_embeddings)
            raise DefectloopError(
                f"the demo's direct annotator ranks stored predictions; strategy {settings.strategy} needs "
                f"image embeddings: set DEFECTLOOP_STRATEGY to {', '.join(others)} or {last}"
            )
        self._sessions = sessions
        self._settings = settings
        self._truth = truth
        self.timings: dict[str, float] = {}

    def label_batch(self, size: int) -> list[int]:
        from workers.labelling import choose_candidates, record_simulated_annotations

        if size <= 0:
            return []
        started = time.perf_counter()
        with session_scope(self._sessions) as session:
            model_key = repo.current_model_key(session=session)
            if model_key is None:
                raise DefectloopError("no champion yet: nothing has been predicted to rank")
            pool = repo.list_labelling_candidates(
                session=session, model_key=model_key, ls_project_id=_DIRECT_PROJECT
            )
            chosen = choose_candidates(
                pool, strategy=self._settings.strategy, k=size, classes=self._settings.classes
            )
            ids = list(dict.fromkeys(prediction.image_id for prediction, _ in chosen))
        ranked = time.perf_counter()
        labels = {image_id: self._truth(image_id) for image_id in ids}
        with session_scope(self._sessions) as session:
            record_simulated_annotations(session=session, labels=labels, annotator=SIMULATED_ANNOTATOR)
        self.timings = {"rank": ranked - started, "label": time.perf_counter() - ranked}
        logger.info(
            "simulated annotator labelled %d of %d candidates (model %s)", len(ids), len(pool), model_key
        )
        return ids
