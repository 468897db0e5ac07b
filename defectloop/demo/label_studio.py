"""The demo's simulated annotator working through the real Label Studio API, as a person would.

Where Label Studio is configured, the demo labels through it so that the whole labelling side runs as
in production: the loop ranks and pushes tasks (beat's push, or one this annotator asks the workers
for), the annotator takes the open tasks in the order Label Studio shows them to annotators (most
informative first), submits each with the ground-truth class through the API, and waits until the
loop recorded it (webhook -> ``serve`` -> labelling worker, or beat's reconciliation when a webhook
was lost). Nothing is written to the database here: what the loop records is what counts.

The annotations are made for a dedicated Label Studio user, ``labelling.names.SIMULATED_ANNOTATOR``
(created on first use, without a password: nobody can log in as it). The recording service records
that user's annotations with origin ``simulated``, everybody else's with origin ``label_studio``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import Annotation, ImageStatus, LabelTaskStatus
from defectloop.demo.annotators import Truth
from defectloop.errors import DefectloopError
from labelling.names import SIMULATED_ANNOTATOR

if TYPE_CHECKING:
    from defectloop.settings import Settings
    from labelling.gateway import LabelStudioGateway

logger = logging.getLogger(__name__)

__all__ = ["AnnotatorTimeoutError", "LabelStudioAnnotator", "OpenTask"]

PushRequest = Callable[[int], None]
"""Ask the loop's workers to rank and push up to this many more tasks (the loop's own push)."""


class AnnotatorTimeoutError(DefectloopError, TimeoutError):
    """The loop did not supply tasks, or did not record annotations, before the annotator's deadline."""


@dataclass(frozen=True)
class OpenTask:
    """A task waiting for a label, as the annotator sees it: Label Studio's id and our image's."""

    ls_task_id: int
    image_id: int


class LabelStudioAnnotator:
    """Labels the open Label Studio tasks from ground truth, most informative first (``Annotator``).

    ``truth(image_id)`` is the image's class (one of ``settings.classes``). ``gateway`` (default: one
    for the settings) and ``request_push`` (default: a message to the workers' ``labelling`` queue)
    exist for tests. ``timeout_s`` bounds each wait: for enough ranked tasks, and for the recording.
    ``timings`` holds the seconds the last batch spent waiting for ranked tasks (``rank``), submitting
    them (``label``) and waiting until the loop recorded them (``record``).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        truth: Truth,
        gateway: LabelStudioGateway | None = None,
        request_push: PushRequest | None = None,
        timeout_s: float = 300.0,
        poll_s: float = 0.5,
        push_every_s: float = 15.0,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._truth = truth
        self._gateway = gateway
        self._owns_gateway = gateway is None
        self._request_push = request_push
        self._celery_app: Any = None
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._push_every_s = push_every_s
        self._project_id: int | None = None
        self._user_id: int | None = None
        self.timings: dict[str, float] = {}
        self._checked_project = False

    def __repr__(self) -> str:
        return f"LabelStudioAnnotator(project={self._settings.label_studio_project_title!r})"

    # -- parts built on first use -------------------------------------------------------------------

    @property
    def gateway(self) -> LabelStudioGateway:
        if self._gateway is None:
            from defectloop.app import label_studio_gateway

            self._gateway = label_studio_gateway(self._settings)
        return self._gateway

    @property
    def project_id(self) -> int:
        """The loop's project, with its webhook to ``serve`` (what ``defectloop labelling init`` makes:
        found when it ran, made here when it did not, so the demo needs no set-up step of its own)."""
        if self._project_id is None:
            from workers.label_studio_project import set_up_project

            secret = self._settings.webhook_secret
            project_id = set_up_project(
                self.gateway,
                title=self._settings.label_studio_project_title,
                classes=self._settings.classes,
                public_url=self._settings.public_url,
                webhook_secret=None if secret is None else secret.get_secret_value(),
                view_title=None,
            ).project_id
            self._project_id = project_id
        return self._project_id

    @property
    def user_id(self) -> int:
        """The Label Studio user the annotations are made for (created on first use)."""
        if self._user_id is None:
            self._user_id = self.gateway.ensure_user(
                email=SIMULATED_ANNOTATOR, first_name="Simulated", last_name="annotator"
            )
        return self._user_id

    def close(self) -> None:
        if self._owns_gateway and self._gateway is not None:
            self._gateway.close()
            self._gateway = None

    def __enter__(self) -> LabelStudioAnnotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _push(self, k: int) -> None:
        if self._request_push is not None:
            self._request_push(k)
            return
        from workers.labelling_tasks import PUSH_TASK
        from workers.queues import Queue

        if self._celery_app is None:
            from defectloop.app import create_celery_app

            self._celery_app = create_celery_app(self._settings)
        # The workers' own push: it re-ranks open tasks under the current champions, then ranks the
        # pool with the configured strategy and pushes the top k (one push per project at a time).
        self._celery_app.send_task(PUSH_TASK, args=[k], queue=Queue.LABELLING.value)

    # -- the Annotator protocol ---------------------------------------------------------------------

    def label_batch(self, size: int) -> list[int]:
        """Annotate up to ``size`` open tasks in Label Studio's order; the image ids once recorded.

        Asks the loop for a push when fewer than ``size`` tasks are open (and waits for open tasks
        still ranked by an earlier champion to be re-ranked); fewer than ``size`` only when the loop has
        nothing more to offer. Raises :class:`AnnotatorTimeoutError` naming what did not arrive.
        """
        if size <= 0:
            return []
        if not self._checked_project:
            self.check_project_is_ours()
            self._checked_project = True
        started = time.perf_counter()
        tasks = self.open_tasks(size)
        ranked = time.perf_counter()
        classes = tuple(self._settings.classes)
        made: dict[int, OpenTask] = {}
        for task in tasks:
            label = self._truth(task.image_id)
            if label not in classes:
                raise ValueError(
                    f"ground truth of image {task.image_id} is {label!r}, not one of the classes "
                    f"{', '.join(classes)} (DEFECTLOOP_CLASSES)"
                )
            annotation_id = self.gateway.create_annotation(
                task_id=task.ls_task_id, choice=label, completed_by=self.user_id
            )
            made[annotation_id] = task
        logger.info("annotated %d task(s) in Label Studio project %d", len(made), self.project_id)
        submitted = time.perf_counter()
        self.wait_recorded(made)
        self.timings = {
            "rank": ranked - started,
            "label": submitted - ranked,
            "record": time.perf_counter() - submitted,
        }
        return [task.image_id for task in tasks]

    # -- steps ----------------------------------------------------------------------------------------

    def check_project_is_ours(self, *, settle_s: float = 5.0) -> None:
        """Refuse a project holding tasks this database did not push (another run's, or a database made
        afresh since): their annotations would be taken for labels of this run's images.

        A task the loop is pushing right now is in Label Studio a moment before our database records it:
        unknown tasks are looked at again until they are recorded or ``settle_s`` has passed.
        """
        deadline = time.monotonic() + settle_s
        while True:
            with self._sessions() as session:
                ours = {
                    task.ls_task_id
                    for task in repo.list_label_tasks(session=session, ls_project_id=self.project_id)
                }
            foreign = set(self.gateway.task_ids_by_score(project_id=self.project_id)) - ours
            if not foreign:
                return
            if time.monotonic() >= deadline:
                raise DefectloopError(
                    f"Label Studio project {self.project_id} "
                    f"({self._settings.label_studio_project_title!r}) holds {len(foreign)} task(s) this "
                    "database did not push (an earlier run's?); their labels would be taken for this "
                    "run's images. Give the demo a project of its own "
                    "(DEFECTLOOP_LABEL_STUDIO_PROJECT_TITLE) or delete that project in Label Studio"
                )
            time.sleep(self._poll_s)

    def open_tasks(self, size: int) -> list[OpenTask]:
        """Up to ``size`` open tasks in the annotators' order, once the loop has ranked enough of them."""
        deadline = time.monotonic() + self._timeout_s
        asked_at: float | None = None
        while True:
            stale, coming = self._loop_state()
            listed = self._listed_open_tasks()
            if not stale and (len(listed) >= size or not coming):
                return listed[:size]
            now = time.monotonic()
            if now >= deadline:
                raise AnnotatorTimeoutError(
                    f"the loop offered {len(listed)} open task(s) in Label Studio project {self.project_id} "
                    f"within {self._timeout_s:.0f} s, {size} were wanted"
                    + (f"; {stale} open task(s) still ranked by an earlier champion" if stale else "")
                    + ": is a worker consuming the labelling queue (`defectloop up` or `defectloop worker`) "
                    "and does a binary champion exist?"
                )
            if asked_at is None or now - asked_at >= self._push_every_s:
                # Another push may hold the project's lease and this one then does nothing: ask again.
                self._push(max(1, size - len(listed)))
                asked_at = now
            time.sleep(self._poll_s)

    def _listed_open_tasks(self) -> list[OpenTask]:
        order = self.gateway.open_task_ids_by_score(project_id=self.project_id)
        with self._sessions() as session:
            waiting = {
                task.ls_task_id: task.image_id
                for task in repo.list_label_tasks(
                    session=session, ls_project_id=self.project_id, statuses=[LabelTaskStatus.PUSHED]
                )
                if task.ls_task_id is not None
            }
        # Only tasks the loop pushed and still waits on (not one somebody made by hand).
        return [OpenTask(ls_task_id=t, image_id=waiting[t]) for t in order if t in waiting]

    def _loop_state(self) -> tuple[int, bool]:
        """(open tasks ranked by an earlier champion, whether more candidates are or will be there)."""
        project_id = self.project_id
        with self._sessions() as session:
            model_key = repo.current_model_key(session=session)
            if model_key is None:
                return 0, True  # no champion yet: nothing is ranked until one exists
            tasks = repo.list_label_tasks(
                session=session,
                ls_project_id=project_id,
                statuses=[LabelTaskStatus.PENDING, LabelTaskStatus.FAILED, LabelTaskStatus.PUSHED],
            )
            stale = sum(1 for t in tasks if t.status is LabelTaskStatus.PUSHED and t.model_key != model_key)
            if any(t.status is not LabelTaskStatus.PUSHED for t in tasks):
                return stale, True  # planned, not pushed yet
            if repo.list_labelling_candidates(
                session=session, model_key=model_key, ls_project_id=project_id, limit=1
            ):
                return stale, True
            return stale, _images_on_their_way(session)

    def wait_recorded(self, made: dict[int, OpenTask]) -> None:
        """Wait until the loop recorded each of these annotations (Label Studio id -> task)."""
        deadline = time.monotonic() + self._timeout_s
        pending = dict(made)
        while pending:
            with self._sessions() as session:
                found = set(
                    session.scalars(
                        select(Annotation.ls_annotation_id).where(Annotation.ls_annotation_id.in_(pending))
                    )
                )
            for annotation_id in found:
                if annotation_id is not None:
                    pending.pop(annotation_id, None)
            if not pending:
                return
            if time.monotonic() >= deadline:
                missing = ", ".join(
                    f"annotation {a} (task {t.ls_task_id}, image {t.image_id})"
                    for a, t in sorted(pending.items())[:10]
                )
                raise AnnotatorTimeoutError(
                    f"{len(pending)} of {len(made)} annotation(s) made in Label Studio were not recorded "
                    f"within {self._timeout_s:.0f} s: {missing}. They reach the database through the "
                    "webhook (`defectloop serve` at DEFECTLOOP_PUBLIC_URL, reachable by Label Studio) and a "
                    "worker on the labelling queue, or through beat's reconciliation every "
                    f"{self._settings.reconcile_interval_s:.0f} s: check that they are running"
                )
            time.sleep(self._poll_s)


def _images_on_their_way(session: Session) -> bool:
    """Whether images may still become candidates: new ones being classified, or the pool a champion
    change sent back to be scored again (``queued``)."""
    counts = repo.count_images_by_status(session=session)
    return bool(counts.get(ImageStatus.NEW, 0) or counts.get(ImageStatus.QUEUED, 0))


def ground_truth_from(labels: dict[int, str] | Sequence[str]) -> Truth:
    """A ``Truth`` from a mapping (image id -> class), for tests and small scripts."""
    table = dict(labels) if isinstance(labels, dict) else dict(enumerate(labels))
    return table.__getitem__
