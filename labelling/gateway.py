"""The one door to Label Studio: projects, webhooks, views, tasks, predictions and annotations.

This is the only module that imports ``label_studio_sdk`` (2.x). Every method takes keyword arguments
and returns plain Python values (ints, dicts, dataclasses), never SDK model objects, so callers and
tests do not depend on the SDK's types. SDK and HTTP failures become this package's errors:

- :class:`LabelStudioUnavailableError`: connection refused, timeout, 5xx (transient: retry with backoff);
- :class:`LabelStudioAuthError`: 401/403 (check DEFECTLOOP_LABEL_STUDIO_API_KEY);
- :class:`LabelStudioError`: any other refusal, with the server's reason.

Messages never contain the API key.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

from labelling.errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnavailableError
from labelling.names import FROM_NAME, IMAGE_NAME

logger = logging.getLogger(__name__)

SCORE_ORDERING = "tasks:predictions_score"
"""Data Manager ordering by prediction score, ascending: the order of the "Uncertainty sampling" queue.

Only predictions whose ``model_version`` equals the project's count, and we push
``score = 1 - informativeness``, so the most informative task comes first.
"""

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
RETRIEVE_PREDICTIONS_ACTION = "retrieve_tasks_predictions"
"""The Data Manager action that asks the project's ML backend to predict the selected tasks."""

_PAGE_SIZE = 100
# Label Studio answers the Data Manager's Datetime filters in this format (naive, read as UTC).
_DM_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Label Studio bumps a task's updated_at after saving its annotation; the server-side filter is only a
# pre-selection, widened by this margin against clock rounding, and the exact test is done here.
_FILTER_MARGIN = timedelta(seconds=1)
_MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class ProjectInfo:
    """A Label Studio project found or made by :meth:`LabelStudioGateway.ensure_project`."""

    id: int
    created: bool


def _plain(model: Any) -> dict[str, Any]:
    """An SDK model (pydantic) as a JSON-ready dict: datetimes as ISO strings, aliases as on the wire."""
    if isinstance(model, Mapping):
        return json.loads(json.dumps(dict(model), default=str))  # type: ignore[no-any-return]
    return model.model_dump(mode="json", by_alias=True)  # type: ignore[no-any-return]


def _parse_time(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _choice_result(choice: str | None, from_name: str, to_name: str) -> list[dict[str, Any]]:
    # A skipped task is saved with an empty result and was_cancelled=True, as the annotator UI does.
    if choice is None:
        return []
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]


class LabelStudioGateway:
    """A client for one Label Studio server and API key.

    ``timeout_s`` bounds each request; ``max_retries`` is the SDK's own retry count for refused
    connections and 5xx answers (0 by default: callers retry with backoff, and a dead server fails fast).
    ``page_size`` is the number of tasks per listed page (small values exist for tests of paging).
    Close it (or use it as a context manager) to release its connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 0,
        page_size: int = _PAGE_SIZE,
    ) -> None:
        if not api_key:
            raise LabelStudioAuthError(
                "no Label Studio API key given: set DEFECTLOOP_LABEL_STUDIO_API_KEY to the token from "
                "Label Studio's Account & Settings page"
            )
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._page_size = page_size
        # Slow calls: an import of many tasks, or predictions that wait for the ML backend.
        self._slow_timeout_s = max(timeout_s, 120.0)
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=True)
        with self._translate("connect"):
            # The key must be passed explicitly: the SDK's default reads the environment at import.
            self._ls = LabelStudio(  # type: ignore[no-untyped-call]
                base_url=self._base_url,
                api_key=api_key,
                timeout=timeout_s,
                max_retries=max_retries,
                httpx_client=self._http,
            )

    def __repr__(self) -> str:
        return f"LabelStudioGateway(base_url={self._base_url!r})"

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioGateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- errors -------------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn SDK / httpx failures while doing ``what`` into this package's errors."""
        try:
            yield
        except ApiError as exc:
            self._raise_api_error(what, exc.status_code, exc.body)
        except httpx.TimeoutException as exc:
            raise LabelStudioUnavailableError(
                f"Label Studio at {self._base_url} did not answer within {self._timeout_s:.0f} s while "
                f"trying to {what}; it may be overloaded or down: retry later"
            ) from exc
        except httpx.TransportError as exc:
            raise LabelStudioUnavailableError(
                f"cannot reach Label Studio at {self._base_url} to {what} ({type(exc).__name__}); check "
                "that it is running and that DEFECTLOOP_LABEL_STUDIO_URL is right, then retry"
            ) from exc

    def _raise_api_error(self, what: str, status: int | None, body: Any) -> NoReturn:
        reason = body if isinstance(body, str) else json.dumps(body, default=str)
        reason = self._mask(reason)[:_MAX_MESSAGE_CHARS]
        if status in (401, 403):
            raise LabelStudioAuthError(
                f"Label Studio at {self._base_url} refused to {what} (HTTP {status}: {reason}); check "
                "DEFECTLOOP_LABEL_STUDIO_API_KEY (a legacy token or a personal access token of a user who "
                "may see the project)"
            )
        if status is None or status >= 500 or status in (408, 429):
            raise LabelStudioUnavailableError(
                f"Label Studio at {self._base_url} failed to {what} (HTTP {status}: {reason}); retry later"
            )
        raise LabelStudioError(f"Label Studio refused to {what} (HTTP {status}): {reason}")

    def _slow(self) -> RequestOptions:
        return RequestOptions(timeout=self._slow_timeout_s)

    # -- server -------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise unless the server is up and accepts the API key."""
        with self._translate("check its health"):
            response = self._http.get(f"{self._base_url}/health/")
        if response.status_code != 200:
            self._raise_api_error("check its health", response.status_code, response.text)
        with self._translate("check the API key"):
            self._ls.users.whoami()

    # -- projects -----------------------------------------------------------------------------------

    def ensure_project(self, *, title: str, label_config: str) -> ProjectInfo:
        """The project titled exactly ``title``, created if missing, with ``label_config`` as its config."""
        with self._translate(f"find project {title!r}"):
            # The server's title filter is a case-insensitive substring match: keep exact matches only.
            listed: Iterable[Any] = self._ls.projects.list(title=title, page_size=self._page_size)
            found = sorted(_id(p) for p in listed if p.title == title)
        if not found:
            with self._translate(f"create project {title!r}"):
                project = self._ls.projects.create(title=title, label_config=label_config)
            logger.info("created Label Studio project %s (id %s)", title, project.id)
            return ProjectInfo(id=_id(project), created=True)
        if len(found) > 1:
            logger.warning(
                "several Label Studio projects are titled %r (ids %s); using %s", title, found, found[0]
            )
        project_id = found[0]
        with self._translate(f"read project {project_id}"):
            current = self._ls.projects.get(id=project_id).label_config or ""
        if current.strip() != label_config.strip():
            with self._translate(f"update the label config of project {project_id}"):
                self._ls.projects.update(id=project_id, label_config=label_config)
            logger.info("updated the label config of Label Studio project %s", project_id)
        return ProjectInfo(id=project_id, created=False)

    def project_ids(self, *, title: str) -> list[int]:
        """Ids of the projects titled exactly ``title`` (one, unless someone made another by hand)."""
        with self._translate(f"find project {title!r}"):
            listed: Iterable[Any] = self._ls.projects.list(title=title, page_size=self._page_size)
            return sorted(_id(p) for p in listed if p.title == title)

    def get_project(self, *, project_id: int) -> dict[str, Any]:
        """Title, model version, sampling, label config and task count of a project."""
        with self._translate(f"read project {project_id}"):
            project = self._ls.projects.get(id=project_id)
        return {
            "id": _id(project),
            "title": project.title,
            "model_version": project.model_version or "",
            "sampling": project.sampling,
            "label_config": project.label_config,
            "task_count": int(project.task_number or 0),
        }

    def set_model_version(self, *, project_id: int, model_version: str) -> None:
        """Make the queue use predictions of ``model_version`` (and order it by "Uncertainty sampling")."""
        with self._translate(f"set the model version of project {project_id}"):
            self._ls.projects.update(
                id=project_id, model_version=model_version, sampling=UNCERTAINTY_SAMPLING
            )

    def delete_project(self, *, project_id: int) -> None:
        with self._translate(f"delete project {project_id}"):
            self._ls.projects.delete(id=project_id)

    # -- webhooks and views -------------------------------------------------------------------------

    def ensure_webhook(
        self, *, project_id: int, url: str, headers: Mapping[str, str], actions: Sequence[str]
    ) -> bool:
        """One active webhook of ``project_id`` to ``url`` with these headers and actions; True if created."""
        with self._translate(f"list the webhooks of project {project_id}"):
            existing = [w for w in self._ls.webhooks.list(project=str(project_id)) if w.project == project_id]
        same_url = sorted((w for w in existing if w.url == url), key=lambda w: int(w.id))
        wanted: dict[str, Any] = {
            "headers": dict(headers),
            "actions": list(actions),
            "send_payload": True,
            "send_for_all_actions": False,
            "is_active": True,
        }
        if not same_url:
            with self._translate(f"create a webhook for project {project_id}"):
                self._ls.webhooks.create(url=url, project=project_id, **wanted)
            logger.info("created a Label Studio webhook for project %s", project_id)
            return True
        keep, extra = same_url[0], same_url[1:]
        for duplicate in extra:
            with self._translate(f"delete duplicate webhook {duplicate.id}"):
                self._ls.webhooks.delete(id=int(duplicate.id))
        if (
            (keep.headers or {}) != wanted["headers"]
            or set(keep.actions or []) != set(actions)
            or not keep.send_payload
            or keep.send_for_all_actions
            or not keep.is_active
        ):
            with self._translate(f"update webhook {keep.id}"):
                self._ls.webhooks.update(id=int(keep.id), url=url, **wanted)
            logger.info("updated Label Studio webhook %s of project %s", keep.id, project_id)
        return False

    def list_webhooks(self, *, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks as dicts (id, url, headers, actions, ...); headers hold secrets."""
        with self._translate(f"list the webhooks of project {project_id}"):
            hooks = self._ls.webhooks.list(project=str(project_id))
        return [_plain(w) for w in hooks if w.project == project_id]

    def ensure_view(self, *, project_id: int, title: str) -> bool:
        """A Data Manager tab titled ``title`` ordered most informative first; True if created."""
        data = {"title": title, "ordering": [SCORE_ORDERING]}
        with self._translate(f"list the views of project {project_id}"):
            views = [
                v for v in self._ls.views.list(project=project_id) if (v.data or {}).get("title") == title
            ]
        if not views:
            with self._translate(f"create a view for project {project_id}"):
                self._ls.views.create(project=project_id, data=data)
            return True
        view = views[0]
        if (view.data or {}).get("ordering") != [SCORE_ORDERING]:
            with self._translate(f"update view {view.id}"):
                self._ls.views.update(id=str(view.id), project=project_id, data={**(view.data or {}), **data})
        return False

    def list_views(self, *, project_id: int) -> list[dict[str, Any]]:
        with self._translate(f"list the views of project {project_id}"):
            return [_plain(v) for v in self._ls.views.list(project=project_id)]

    # -- tasks and predictions ----------------------------------------------------------------------

    def import_tasks(self, *, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import ``tasks`` (``{"data": ..., "predictions": [...]}``); their new ids, in input order."""
        if not tasks:
            return []
        with self._translate(f"import {len(tasks)} tasks into project {project_id}"):
            response = self._ls.projects.import_tasks(
                id=project_id,
                request=[dict(task) for task in tasks],  # type: ignore[misc]
                return_task_ids=True,
                request_options=self._slow(),
            )
        # task_ids is an extra field of the response model, there only with return_task_ids=True.
        task_ids = [int(task_id) for task_id in (getattr(response, "task_ids", None) or [])]
        if len(task_ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio imported {len(task_ids)} tasks into project {project_id} instead of "
                f"{len(tasks)}; check the project in Label Studio before importing again"
            )
        return task_ids

    def add_prediction(self, *, task_id: int, prediction: Mapping[str, Any]) -> int:
        """Add a prediction (``model_version``, ``score``, ``result``) to a task; its id."""
        with self._translate(f"add a prediction to task {task_id}"):
            created = self._ls.predictions.create(
                task=task_id,
                result=list(prediction["result"]),
                score=prediction.get("score"),
                model_version=prediction.get("model_version"),
            )
        return int(created.id)

    def delete_task(self, *, task_id: int) -> bool:
        """Delete a task (its photo changed under it); False if Label Studio had no such task."""
        with self._translate(f"delete task {task_id}"):
            try:
                self._ls.tasks.delete(id=str(task_id))
            except ApiError as exc:
                if exc.status_code == 404:
                    return False
                raise
        return True

    def update_task_data(self, *, task_id: int, data: Mapping[str, Any]) -> None:
        """Replace a task's data (after a champion change: the new guess, the redrawn heat-map's URL)."""
        with self._translate(f"update the data of task {task_id}"):
            self._ls.tasks.update(id=str(task_id), data=dict(data))

    def _iter_tasks(self, *, project_id: int, query: Mapping[str, Any], fields: str) -> Iterator[Any]:
        pager: Iterable[Any] = self._ls.tasks.list(
            project=project_id, query=json.dumps(query), fields=fields, page_size=self._page_size
        )
        # The SDK's pager asks for pages until the server answers 404 after the last one.
        yield from pager

    def _tasks_by_score(self, project_id: int) -> list[Any]:
        """The project's tasks (task fields only) in the annotators' order."""
        try:
            return list(
                self._iter_tasks(
                    project_id=project_id, query={"ordering": [SCORE_ORDERING]}, fields="task_only"
                )
            )
        except ApiError as exc:
            # Label Studio 1.23 adds the score it orders by only when the project has a task: an empty
            # project answers 500 "Cannot resolve keyword 'predictions_score'". No task, no order.
            if exc.status_code == 500 and "predictions_score" in str(exc.body):
                return []
            raise

    def task_ids_by_score(self, *, project_id: int) -> list[int]:
        """Task ids in the annotators' order: prediction score ascending (most informative first)."""
        with self._translate(f"list the tasks of project {project_id}"):
            return [int(t.id) for t in self._tasks_by_score(project_id)]

    def list_tasks(self, *, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project (by id): id, data, counts, and its predictions' ids, versions, scores."""
        with self._translate(f"list the tasks of project {project_id}"):
            tasks = [
                _plain(t)
                for t in self._iter_tasks(
                    project_id=project_id, query={"ordering": ["tasks:id"]}, fields="all"
                )
            ]
        return [
            {
                "id": int(task["id"]),
                "data": task.get("data") or {},
                "is_labeled": bool(task.get("is_labeled")),
                "total_annotations": int(task.get("total_annotations") or 0),
                "cancelled_annotations": int(task.get("cancelled_annotations") or 0),
                "predictions": [
                    {"id": p.get("id"), "model_version": p.get("model_version"), "score": p.get("score")}
                    for p in task.get("predictions") or []
                ],
            }
            for task in tasks
        ]

    # -- annotations --------------------------------------------------------------------------------

    def list_annotations(
        self, *, project_id: int, updated_after: datetime | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every annotation of a project, skipped ones included, as (annotation, task) dicts.

        With ``updated_after`` (timezone-aware), only annotations whose ``updated_at`` is later. Sorted by
        ``(updated_at, id)``, so the last one's ``updated_at`` is the next watermark. Deleted annotations
        are gone from Label Studio and so are not listed.
        """
        items: list[dict[str, Any]] = []
        if updated_after is not None:
            if updated_after.tzinfo is None:
                raise ValueError("updated_after must be timezone-aware (e.g. datetime.now(UTC))")
            # Saving an annotation also bumps its task's updated_at, so this pre-selects a superset.
            since = (updated_after - _FILTER_MARGIN).astimezone(UTC).strftime(_DM_DATETIME_FORMAT)
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": since,
                }
            )
        # Ordered by id, which updates do not change: a task updated during the walk can at worst shift
        # the pages by one (a duplicate, dropped below), never hide another task.
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if items:
            query["filters"] = {"conjunction": "and", "items": items}
        found: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        with self._translate(f"list the annotations of project {project_id}"):
            for model in self._iter_tasks(project_id=project_id, query=query, fields="all"):
                task = _plain(model)
                annotations = task.pop("annotations", None) or []
                for annotation in annotations:
                    annotation = _plain(annotation)
                    if updated_after is not None and _parse_time(annotation["updated_at"]) <= updated_after:
                        continue
                    found[int(annotation["id"])] = (annotation, task)
        return sorted(
            found.values(), key=lambda pair: (_parse_time(pair[0]["updated_at"]), int(pair[0]["id"]))
        )

    def annotation_counts(self, *, project_id: int) -> dict[int, int]:
        """Task id -> how many annotations Label Studio holds for it, skipped ones included.

        One light listing (no annotation bodies): reconciliation compares it with what we hold to find
        annotations deleted while no webhook reached us.
        """
        with self._translate(f"count the annotations of project {project_id}"):
            return {
                int(task.id): int(task.total_annotations or 0) + int(task.cancelled_annotations or 0)
                for task in self._iter_tasks(
                    project_id=project_id, query={"ordering": ["tasks:id"]}, fields="task_only"
                )
            }

    def annotation_ids(self, *, task_id: int) -> set[int]:
        """The ids of the annotations Label Studio holds for one task, skipped ones included.

        Read from the task itself: the task's annotation listing (``/api/tasks/{id}/annotations``)
        leaves skipped (cancelled) annotations out.
        """
        with self._translate(f"read task {task_id}"):
            task = _plain(self._ls.tasks.get(id=str(task_id)))
        return {int(_plain(annotation)["id"]) for annotation in task.get("annotations") or []}

    def user_email(self, *, user_id: int) -> str | None:
        """The e-mail address of a Label Studio user (how annotators are recorded), None if unknown."""
        with self._translate(f"read user {user_id}"):
            try:
                user = self._ls.users.get(id=user_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return None
                raise
        return str(user.email) if getattr(user, "email", None) else None

    def ensure_user(self, *, email: str, first_name: str = "", last_name: str = "") -> int:
        """The id of the user with this e-mail in the API key's organization, created when missing.

        Created without a password, so nobody can log in as it: it exists so that annotations made
        through the API on its behalf (``create_annotation(completed_by=...)``) say who made them.
        Creating users needs the rights of an organization owner or administrator.
        """
        with self._translate("list the users"):
            users: Iterable[Any] = self._ls.users.list()
            found = sorted(_id(u) for u in users if (u.email or "").lower() == email.lower())
        if found:
            return found[0]
        with self._translate(f"create the user {email}"):
            created = self._ls.users.create(
                username=email, email=email, first_name=first_name, last_name=last_name
            )
        logger.info("created Label Studio user %s (id %s)", email, created.id)
        return _id(created)

    def open_task_ids_by_score(self, *, project_id: int) -> list[int]:
        """The ids of the tasks nobody annotated or skipped yet, in the annotators' order (most
        informative first, as :meth:`task_ids_by_score`)."""
        with self._translate(f"list the open tasks of project {project_id}"):
            return [
                int(t.id)
                for t in self._tasks_by_score(project_id)
                if not int(t.total_annotations or 0) and not int(t.cancelled_annotations or 0)
            ]

    def create_annotation(
        self,
        *,
        task_id: int,
        choice: str | None,
        from_name: str = FROM_NAME,
        to_name: str = IMAGE_NAME,
        lead_time: float = 1.0,
        was_cancelled: bool = False,
        completed_by: int | None = None,
    ) -> int:
        """Submit an annotation as an annotator does (``choice=None, was_cancelled=True``: a skip); its id.

        ``completed_by``: the id of the user it is made for (see :meth:`ensure_user`); by default the
        owner of the API key.
        """
        # Omitted rather than null: Label Studio would store a null annotator.
        extra: dict[str, Any] = {} if completed_by is None else {"completed_by": completed_by}
        with self._translate(f"annotate task {task_id}"):
            created = self._ls.annotations.create(
                id=task_id,
                result=_choice_result(choice, from_name, to_name),
                lead_time=lead_time,
                was_cancelled=was_cancelled,
                **extra,
            )
        return int(created.id)

    def update_annotation(
        self,
        *,
        annotation_id: int,
        choice: str | None,
        from_name: str = FROM_NAME,
        to_name: str = IMAGE_NAME,
        lead_time: float | None = None,
        was_cancelled: bool = False,
    ) -> None:
        """Change an annotation's choice, as an annotator's "Update" does."""
        extra: dict[str, Any] = {} if lead_time is None else {"lead_time": lead_time}
        with self._translate(f"update annotation {annotation_id}"):
            self._ls.annotations.update(
                id=annotation_id,
                result=_choice_result(choice, from_name, to_name),
                was_cancelled=was_cancelled,
                **extra,
            )

    def delete_annotation(self, *, annotation_id: int) -> None:
        with self._translate(f"delete annotation {annotation_id}"):
            self._ls.annotations.delete(id=annotation_id)

    # -- ML backend ---------------------------------------------------------------------------------

    def connect_ml_backend(self, *, project_id: int, url: str, title: str) -> int:
        """Connect the ML backend at ``url`` to a project (once per url); its id in Label Studio.

        Label Studio calls the backend's ``/health`` and ``/setup`` at once, so it must be running.
        """
        with self._translate(f"list the ML backends of project {project_id}"):
            backends = self._ls.ml.list(project=project_id)
        for backend in _sorted_by_id(backends):
            if str(backend.url).rstrip("/") == url.rstrip("/"):
                return int(backend.id)
        with self._translate(f"connect the ML backend {url} to project {project_id}"):
            created = self._ls.ml.create(project=project_id, url=url, title=title, is_interactive=False)
        logger.info("connected ML backend %s to Label Studio project %s", url, project_id)
        return int(created.id)

    def request_ml_predictions(self, *, project_id: int, task_ids: Sequence[int]) -> None:
        """Ask the project's ML backend to predict these tasks (the Data Manager's "Retrieve Predictions")."""
        if not task_ids:
            return
        with self._translate(f"request predictions for {len(task_ids)} tasks of project {project_id}"):
            self._ls.actions.create(
                id=RETRIEVE_PREDICTIONS_ACTION,
                project=project_id,
                selected_items={"all": False, "included": [int(t) for t in task_ids]},
                request_options=self._slow(),
            )


def _id(item: Any) -> int:
    """The id of an SDK object (the SDK types every id as optional; saved objects always have one)."""
    if item.id is None:
        raise LabelStudioError(f"Label Studio returned a {type(item).__name__} without an id")
    return int(item.id)


def _sorted_by_id(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=_id)
