"""Set up the loop's Label Studio project: the project with the labelling config of the configured
classes, the webhook to the receiver, and the annotators' queue view. Idempotent: what is there already
is found, never made twice (``defectloop labelling init`` and the demo's annotator both use it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labelling.gateway import LabelStudioGateway
from labelling.label_config import build_label_config
from labelling.names import SECRET_HEADER, WEBHOOK_ACTIONS, WEBHOOK_PATH

__all__ = ["MOST_INFORMATIVE_VIEW", "ProjectSetup", "set_up_project"]

MOST_INFORMATIVE_VIEW = "Most informative first"


@dataclass(frozen=True)
class ProjectSetup:
    """What ``set_up_project`` found or made; a ``None`` url or view title: not asked for."""

    project_id: int
    project_created: bool
    webhook_url: str | None
    webhook_created: bool
    view_title: str | None
    view_created: bool


def set_up_project(
    gateway: LabelStudioGateway,
    *,
    title: str,
    classes: Sequence[str],
    public_url: str,
    webhook_secret: str | None,
    view_title: str | None = MOST_INFORMATIVE_VIEW,
) -> ProjectSetup:
    """Find or create the project called ``title``; with a ``webhook_secret``, its webhook to
    ``public_url``'s receiver (sending the secret in ``SECRET_HEADER``); with a ``view_title``, its view
    of the tasks most informative first."""
    project = gateway.ensure_project(title=title, label_config=build_label_config(classes))
    webhook_url = None
    webhook_created = False
    if webhook_secret:
        webhook_url = f"{public_url}{WEBHOOK_PATH}"
        webhook_created = gateway.ensure_webhook(
            project_id=project.id,
            url=webhook_url,
            headers={SECRET_HEADER: webhook_secret},
            actions=WEBHOOK_ACTIONS,
        )
    view_created = False
    if view_title is not None:
        view_created = gateway.ensure_view(project_id=project.id, title=view_title)
    return ProjectSetup(
        project_id=project.id,
        project_created=project.created,
        webhook_url=webhook_url,
        webhook_created=webhook_created,
        view_title=view_title,
        view_created=view_created,
    )
