"""A real Label Studio server for the tests: one per test session, started on a free 127.0.0.1 port.

Loaded by tests/conftest.py through ``pytest_plugins``.

- ``label_studio``: a :class:`LabelStudioServer` (its own venv, installed on first use into
  ``~/.cache/defectloop/label-studio-<version>`` or ``$DEFECTLOOP_TEST_LABEL_STUDIO_VENV``; scripts/test.sh
  installs it before pytest), with a temporary data dir and document root, and a database copied from
  an empty migrated one kept in the venv (a warm start: seconds instead of most of a minute). If Label
  Studio cannot be installed or started, every test that needs it fails with a message saying which;
  none is skipped.
- ``ls_gateway``: a :class:`LabelStudioGateway` on that server with the admin's token.
- ``ls_project_title`` / :func:`unique_project_title`: a title no other test uses, so tests never see
  each other's projects; ``ls_project``: a fresh project with :data:`TEST_CLASSES`, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelling.devserver import LabelStudioServer, default_venv_dir, ensure_template_db, ensure_venv
from labelling.errors import HarnessError, LabellingError
from labelling.gateway import LabelStudioGateway
from labelling.label_config import build_label_config

VENV_VARIABLE = "DEFECTLOOP_TEST_LABEL_STUDIO_VENV"
TEST_CLASSES = ("ok", "hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")


def unique_project_title(request: pytest.FixtureRequest) -> str:
    """A project title made of the test's name and a random suffix (Label Studio titles: 50 chars max)."""
    return f"{request.node.name[:36]} {uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio server with a fresh database, shared by the test session."""
    venv_dir = Path(os.environ.get(VENV_VARIABLE) or default_venv_dir())
    try:
        executable = ensure_venv(venv_dir)
        template_db = ensure_template_db(venv_dir)
    except HarnessError as exc:
        pytest.fail(
            f"Label Studio could not be installed into {venv_dir} (set {VENV_VARIABLE} to use another "
            f"folder; `python -m labelling.devserver ensure` installs it): {exc}",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(
        executable, data_dir=root / "data", document_root=root / "documents", template_db=template_db
    )
    try:
        server.start()
    except HarnessError as exc:
        pytest.fail(f"Label Studio is installed in {venv_dir} but could not be started: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ls_gateway(label_studio: LabelStudioServer) -> Iterator[LabelStudioGateway]:
    """A gateway on the session's Label Studio, authenticated as its admin."""
    with LabelStudioGateway(label_studio.url, label_studio.token) as gateway:
        yield gateway


@pytest.fixture
def ls_project_title(request: pytest.FixtureRequest) -> str:
    return unique_project_title(request)


@pytest.fixture
def ls_project(ls_gateway: LabelStudioGateway, ls_project_title: str) -> Iterator[int]:
    """The id of a new project with :data:`TEST_CLASSES`, deleted when the test ends."""
    project = ls_gateway.ensure_project(title=ls_project_title, label_config=build_label_config(TEST_CLASSES))
    yield project.id
    # The test may have deleted it itself; a leftover project in a throw-away server harms nobody.
    with contextlib.suppress(LabellingError):
        ls_gateway.delete_project(project_id=project.id)
