"""Settings: embedded defaults, parsing from the environment, and errors that name the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from defectloop.errors import SettingsError
from defectloop.settings import DEFAULT_CLASSES, Settings, load_settings, redact_url
from models.selection import DEFAULT_STRATEGY, STRATEGIES


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path / "d")})
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'defectloop.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'd' / 'broker.db'}"
    assert settings.embedded
    assert settings.classes == DEFAULT_CLASSES
    assert settings.good_class == "ok"
    assert "ok" not in settings.defect_classes
    assert settings.label_space.classes == DEFAULT_CLASSES
    assert settings.label_studio_api_key is None


def test_strategy_accepts_exactly_the_registry_names() -> None:
    assert load_settings({}).strategy == DEFAULT_STRATEGY
    for name in STRATEGIES:
        assert load_settings({"DEFECTLOOP_STRATEGY": name}).strategy == name
    for bad in ("uncertainty", "Entropy", "k-center", "entropy "):
        with pytest.raises(SettingsError, match="DEFECTLOOP_STRATEGY: unknown selection strategy") as caught:
            load_settings({"DEFECTLOOP_STRATEGY": bad})
        assert f"valid strategies: {', '.join(STRATEGIES)}" in str(caught.value)
    assert Settings.model_json_schema()["properties"]["strategy"]["enum"] == list(STRATEGIES)


def test_relative_data_dir_is_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"DEFECTLOOP_DATA_DIR": "rel"})
    assert settings.data_dir == tmp_path / "rel"
    assert settings.data_dir.is_absolute()


def test_the_default_data_dir_is_one_place_wherever_a_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    seen = set()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        seen.add(load_settings({}).data_dir)
    assert seen == {tmp_path / "xdg" / "defectloop"}
    monkeypatch.delenv("XDG_DATA_HOME")
    assert load_settings({}).data_dir == Path.home() / ".local" / "share" / "defectloop"


def test_label_studio_origins_may_load_media(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({"DEFECTLOOP_LABEL_STUDIO_URL": "http://127.0.0.1:8080/"})
    assert settings.media_origins == ("http://127.0.0.1:8080", "http://localhost:8080")
    remote = load_settings(
        {
            "DEFECTLOOP_LABEL_STUDIO_URL": "https://Label.Example.com:443/ls",
            "DEFECTLOOP_MEDIA_ALLOWED_ORIGINS": "https://review.example.com, http://10.0.0.5:8080/",
        }
    )
    assert remote.media_origins == (
        "https://label.example.com",
        "https://review.example.com",
        "http://10.0.0.5:8080",
    )
    for bad in ("https://a.example/path", "a.example", "https://a.example?x=1", "ftp://a.example"):
        with pytest.raises(SettingsError, match="DEFECTLOOP_MEDIA_ALLOWED_ORIGINS"):
            load_settings({"DEFECTLOOP_MEDIA_ALLOWED_ORIGINS": bad})


def test_values_come_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_CLASSES", "ok, hole ,raw_edge")
    monkeypatch.setenv("DEFECTLOOP_IMAGE_CHANNELS", "1")
    monkeypatch.setenv("DEFECTLOOP_STRATEGY", "margin")
    monkeypatch.setenv("DEFECTLOOP_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("DEFECTLOOP_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.classes == ("ok", "hole", "raw_edge")
    assert settings.image_channels == 1
    assert settings.strategy == "margin"
    assert settings.broker_url == "redis://127.0.0.1:6379/3"
    assert settings.log_level == "DEBUG"
    assert not settings.embedded


def test_empty_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_DATABASE_URL", "")
    assert load_settings().database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DEFECTLOOP_IMAGE_SIZE", "5", "greater than or equal to 16"),
        ("DEFECTLOOP_IMAGE_CHANNELS", "2", "must be 1 (grayscale) or 3 (RGB)"),
        ("DEFECTLOOP_STRATEGY", "smartest", "valid strategies: random, least_confidence"),
        ("DEFECTLOOP_CLASSES", "ok", "at least one defect class"),
        ("DEFECTLOOP_CLASSES", "ok,Hole", "snake_case"),
        ("DEFECTLOOP_CLASSES", "ok,hole,hole", "repeated"),
        ("DEFECTLOOP_DATABASE_URL", "defectloop.db", "must be a URL"),
        ("DEFECTLOOP_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("DEFECTLOOP_LABELLING_BATCH_SIZE", "many", "valid integer"),
    ],
)
def test_wrong_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    message = str(caught.value)
    assert f"{variable}:" in message
    assert expected in message


def test_every_wrong_variable_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DEFECTLOOP_IMAGE_SIZE": "0", "DEFECTLOOP_HTTP_PORT": "0"})
    assert "DEFECTLOOP_IMAGE_SIZE" in str(caught.value)
    assert "DEFECTLOOP_HTTP_PORT" in str(caught.value)


def test_a_wrong_secret_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({}, label_studio_api_key=["sekrit-token-value"])
    assert "DEFECTLOOP_LABEL_STUDIO_API_KEY" in str(caught.value)
    assert "sekrit" not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(ValidationError):
        settings.image_size = 64  # type: ignore[misc]


def test_redacted_masks_secrets_and_url_passwords() -> None:
    settings = load_settings(
        {
            "DEFECTLOOP_LABEL_STUDIO_API_KEY": "tok-0123456789",
            "DEFECTLOOP_WEBHOOK_SECRET": "hook-secret-value",
            "DEFECTLOOP_DATABASE_URL": "postgresql+psycopg://app:pg-pass@db:5432/x",
            "DEFECTLOOP_BROKER_URL": "redis://:redis-pass@cache:6379/0",
        }
    )
    shown = settings.redacted()
    text = repr(shown) + repr(settings)
    for secret in ("tok-0123456789", "hook-secret-value", "pg-pass", "redis-pass"):
        assert secret not in text
    assert shown["DEFECTLOOP_LABEL_STUDIO_API_KEY"] == "********"
    assert shown["DEFECTLOOP_DATABASE_URL"] == "postgresql+psycopg://app:***@db:5432/x"
    assert settings.label_studio_api_key is not None
    assert settings.label_studio_api_key.get_secret_value() == "tok-0123456789"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@h:1/0", "redis://:***@h:1/0"),
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_unknown_variable_is_reported_with_a_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="defectloop.settings"):
        load_settings({"DEFECTLOOP_DATABSE_URL": "sqlite:///x.db", "DEFECTLOOP_TEST_POSTGRES_URL": "x"})
    messages = [record.getMessage() for record in caplog.records]
    assert any("DEFECTLOOP_DATABSE_URL" in m and "DEFECTLOOP_DATABASE_URL" in m for m in messages)
    # The test suite's own variables are not the application's business.
    assert not any("DEFECTLOOP_TEST_POSTGRES_URL" in m for m in messages)


def test_every_field_has_a_flat_variable_name() -> None:
    for name in Settings.model_fields:
        assert name == name.lower()
        assert "__" not in name


def test_workers_run_mc_dropout_passes_only_for_bald() -> None:
    from defectloop.app import worker_config

    entropy = worker_config(load_settings({"DEFECTLOOP_MC_DROPOUT_PASSES": "6"}))
    bald = worker_config(load_settings({"DEFECTLOOP_MC_DROPOUT_PASSES": "6", "DEFECTLOOP_STRATEGY": "bald"}))
    assert (entropy.mc_passes, bald.mc_passes) == (0, 6)


def test_retraining_settings_parse_lists_and_floors_and_name_what_is_wrong() -> None:
    from defectloop.app import retraining_config
    from defectloop.settings import ARCHITECTURE_NAMES, DEFAULT_RETRAIN_ARCHITECTURES
    from models.registry import ARCHITECTURES

    assert sorted(ARCHITECTURE_NAMES) == sorted(ARCHITECTURES), "settings repeat the registry's names"
    settings = load_settings(
        {
            "DEFECTLOOP_RETRAIN_ARCHITECTURES": "resnet18, improved_cnn,resnet18",
            "DEFECTLOOP_PROMOTION_RECALL_FLOORS": "hole=0.5, raw_edge=0.25",
            "DEFECTLOOP_AUTO_PROMOTE": "true",
            "DEFECTLOOP_RETRAIN_MIN_NEW_LABELS": "7",
        }
    )
    assert settings.retrain_architectures == ("resnet18", "improved_cnn")
    assert settings.recall_floors == {"hole": 0.5, "raw_edge": 0.25}
    config = retraining_config(settings)
    assert config.plan.auto_promote
    assert config.plan.policy.recall_floors == {"hole": 0.5, "raw_edge": 0.25}
    assert config.min_new_labels == 7
    assert load_settings({}).retrain_architectures == DEFAULT_RETRAIN_ARCHITECTURES
    for variable, value, expected in (
        ("DEFECTLOOP_RETRAIN_ARCHITECTURES", "resnet50", "resnet50"),
        ("DEFECTLOOP_PROMOTION_RECALL_FLOORS", "hole=1.5", "CLASS=VALUE"),
        ("DEFECTLOOP_PROMOTION_RECALL_FLOORS", "hole", "CLASS=VALUE"),
        ("DEFECTLOOP_EVALUATION_FRACTION", "1", "DEFECTLOOP_EVALUATION_FRACTION"),
    ):
        with pytest.raises(SettingsError, match=expected):
            load_settings({variable: value})
