"""Shared fixtures. Integration fixtures fail (never skip) when the service they need is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.synth import generate_dataset

pytest_plugins = ["tests.db_fixtures", "tests.label_studio_fixtures", "tests.browser"]


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded synthetic garment-photo folder (6 classes x 8 images, 64 px), made once per run."""
    out = tmp_path_factory.mktemp("synth") / "images"
    generate_dataset(out, n=48, seed=7, size=64)
    return out


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download from the Hugging Face hub: a test that asked for hub weights would fail fast. Modules
    whose models could reach for them take it with ``pytestmark = pytest.mark.usefixtures("hub_offline")``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
