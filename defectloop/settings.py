"""Settings: one frozen pydantic-settings class read from ``DEFECTLOOP_*`` environment variables.

Built only in entry points (the CLI, the Celery app module) and passed down as plain values; no other
module reads the environment. The defaults are the embedded mode: a SQLite database and a broker that
needs no server, both as files under ``DEFECTLOOP_DATA_DIR``.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from defectloop.errors import SettingsError
from models.labels import LabelSpace
from models.selection import DEFAULT_STRATEGY, STRATEGIES, strategy_spec

logger = logging.getLogger(__name__)

ENV_PREFIX = "DEFECTLOOP_"
# The names of models.registry.ARCHITECTURES, repeated so that reading settings imports no torch (a unit
# test keeps the two equal).
ARCHITECTURE_NAMES: tuple[str, ...] = (
    "baseline_cnn",
    "improved_cnn",
    "efficientnet_b0",
    "resnet18",
    "efficientnet_lite0",
)
# Retrained by default: the four trained from scratch (efficientnet_lite0 is meant to start from packaged
# ImageNet weights, which a retrain does not pass yet).
DEFAULT_RETRAIN_ARCHITECTURES: tuple[str, ...] = ARCHITECTURE_NAMES[:4]
DEFAULT_CLASSES: tuple[str, ...] = (
    "ok",
    "hole",
    "seam_puckering",
    "uncut_thread",
    "raw_edge",
    "broken_stitch",
)
# Variables under these prefixes belong to the test suite and benchmarks, not to the application.
_FOREIGN_PREFIXES = (f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def _known_strategy(name: str) -> str:
    return strategy_spec(name).name  # an unknown name raises, listing the valid ones


Strategy = Annotated[
    str,
    AfterValidator(_known_strategy),
    WithJsonSchema({"type": "string", "enum": list(STRATEGIES)}),
]
"""A name of ``models.selection.STRATEGIES``, the one registry of active-learning selection strategies."""


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` (the natural way to write a list in an environment variable) or a sequence."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Every setting of defectloop. Environment variable = ``DEFECTLOOP_`` + the field name in capitals."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Where the embedded database, broker, model artifacts and reports live "
        "(default: $XDG_DATA_HOME/defectloop, else ~/.local/share/defectloop; a relative path is taken "
        "from the directory the command starts in, once, and every process it starts gets the absolute one).",
    )
    datasets_dir: Path = Field(
        default=Path("../shared/datasets"),
        description="Where the public evaluation data sets live (aitex-tiles, stitchingnet-samples).",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the registry; empty means a SQLite file under the data directory.",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker URL (redis://...); empty means a SQLite-backed broker under the data dir.",
    )
    label_studio_url: str = Field(default="http://127.0.0.1:8080", description="Base URL of Label Studio.")
    label_studio_api_key: SecretStr | None = Field(default=None, description="Label Studio API token.")
    label_studio_project_title: str = Field(default="defectloop garment defects", min_length=1)
    webhook_secret: SecretStr | None = Field(
        default=None, description="Shared secret Label Studio sends in a header with every webhook."
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the webhook / ML-backend app.")
    http_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = Field(
        default="",
        description="URL at which Label Studio and annotators' browsers reach the webhook / ML-backend app; "
        "empty means http://HTTP_HOST:HTTP_PORT.",
    )
    labelling_push_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often beat tops Label Studio's queue up (also once when beat starts).",
    )
    labelling_queue_target: int = Field(
        default=40,
        ge=1,
        le=100_000,
        description="Open tasks beat keeps in Label Studio: each push adds up to LABELLING_BATCH_SIZE, "
        "never more than this many waiting.",
    )
    reconcile_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often beat pulls annotations (and deletions) that webhooks may have missed.",
    )
    heatmaps: bool = Field(default=True, description="Render a Grad-CAM overlay for every pushed task.")
    media_allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Browser origins allowed to load photos and heat-maps besides Label Studio's own "
        "(derived from LABEL_STUDIO_URL), comma separated, e.g. https://label.example.com",
    )

    classes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_CLASSES,
        description="Label space, comma separated; the first is the good class, the rest are defects.",
    )
    image_size: int = Field(default=128, ge=16, le=1024, description="Square input size in pixels.")
    image_channels: int = Field(default=3, description="1 = grayscale, 3 = RGB model input.")

    strategy: Strategy = Field(default=DEFAULT_STRATEGY, description="Active-learning selection strategy.")
    labelling_batch_size: int = Field(default=20, ge=1, le=10_000)
    inference_batch_size: int = Field(default=16, ge=1, le=1024)
    inference_batch_timeout_ms: int = Field(default=200, ge=0, le=60_000)
    mc_dropout_passes: int = Field(default=8, ge=1, le=256)

    retrain_min_new_labels: int = Field(
        default=50, ge=0, description="Retrain once this many new labels arrived (0 = never by count)."
    )
    retrain_interval_s: int = Field(
        default=86_400, ge=0, description="Retrain at least this often when new labels exist (0 = never)."
    )
    retrain_architectures: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_RETRAIN_ARCHITECTURES,
        description="Architectures trained as challengers on every retrain, comma separated.",
    )
    train_epochs: int = Field(default=15, ge=1, le=1000, description="Most epochs of a retrain.")
    train_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Mini-batch size of a retrain (few labels: smaller trains better).",
    )
    train_patience: int = Field(
        default=4, ge=1, le=1000, description="A retrain stops after this many epochs without a better F1."
    )
    evaluation_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of photo groups held out in the frozen evaluation sets (fixed at their creation).",
    )
    auto_promote: bool = Field(
        default=False,
        description="Promote the best challenger the policy allows after a retrain (else an engineer does).",
    )
    promotion_min_gain: float = Field(
        default=0.01, ge=-1.0, le=1.0, description="Least macro-F1 gain of a challenger over the champion."
    )
    promotion_significance: float = Field(
        default=0.05, gt=0.0, lt=1.0, description="Level of the bootstrap interval (and McNemar) test."
    )
    promotion_recall_floors: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Least recall per class of a challenger, comma separated CLASS=VALUE (e.g. hole=0.5).",
    )

    ingest_stable_seconds: float = Field(
        default=1.0, ge=0, description="A camera file is taken once unchanged for this long."
    )
    ingest_rescan_seconds: float = Field(
        default=30.0, gt=0, description="Full rescan of the camera folders (catches missed events)."
    )
    ingest_polling: bool = Field(
        default=False, description="Poll the folders instead of native events (network shares)."
    )
    ingest_extensions: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"),
        description="Accepted file extensions, comma separated (case-insensitive).",
    )
    ingest_max_pixels: int = Field(
        default=64_000_000, ge=1, description="Larger images are quarantined (decompression bombs)."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "classes",
        "ingest_extensions",
        "retrain_architectures",
        "promotion_recall_floors",
        "media_allowed_origins",
        mode="before",
    )
    @classmethod
    def _parse_classes(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2:
            raise ValueError("needs the good class and at least one defect class, e.g. 'ok,hole'")
        bad = [name for name in value if not _CLASS_NAME.match(name)]
        if bad:
            raise ValueError(f"class names must be lower-case snake_case identifiers, got {bad}")
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique, repeated: {duplicates}")
        return value

    @field_validator("ingest_extensions")
    @classmethod
    def _check_extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one extension, e.g. .jpg,.png")
        return tuple(dict.fromkeys(e.lower() if e.startswith(".") else f".{e.lower()}" for e in value))

    @field_validator("retrain_architectures")
    @classmethod
    def _check_architectures(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        valid = ARCHITECTURE_NAMES
        bad = [name for name in value if name not in valid]
        if bad or not value:
            raise ValueError(f"unknown architecture(s) {bad or 'none given'}; choose from {', '.join(valid)}")
        return tuple(dict.fromkeys(value))

    @field_validator("promotion_recall_floors")
    @classmethod
    def _check_floors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            name, sep, number = (part.strip() for part in entry.partition("="))
            try:
                floor = float(number)
            except ValueError:
                floor = float("nan")
            if not sep or not name or not 0.0 <= floor <= 1.0:
                raise ValueError(f"expected CLASS=VALUE with VALUE in [0, 1] (e.g. hole=0.5), got {entry!r}")
        return value

    @property
    def recall_floors(self) -> dict[str, float]:
        """``promotion_recall_floors`` as class -> least recall."""
        return {
            name.strip(): float(number)
            for name, _, number in (entry.partition("=") for entry in self.promotion_recall_floors)
        }

    @field_validator("media_allowed_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [entry for entry in value if not url_origin(entry) or re.search(r"://[^/?#]*(/.|[?#])", entry)]
        if bad:
            raise ValueError(f"expected origins scheme://host[:port] without a path, got {bad}")
        return tuple(dict.fromkeys(url_origin(entry) for entry in value))

    @property
    def media_origins(self) -> tuple[str, ...]:
        """Origins whose pages may load our media: Label Studio's (both loopback names when it runs on
        loopback: a browser may be pointed at either) and ``media_allowed_origins``."""
        origin = url_origin(self.label_studio_url)
        derived = [origin] if origin else []
        for name, alias in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")):
            if origin and f"//{name}" in origin:
                derived.append(origin.replace(f"//{name}", f"//{alias}", 1))
        return tuple(dict.fromkeys([*derived, *self.media_allowed_origins]))

    @field_validator("image_channels")
    @classmethod
    def _check_channels(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError("must be 1 (grayscale) or 3 (RGB)")
        return value

    @field_validator("database_url", "broker_url", "label_studio_url", "public_url")
    @classmethod
    def _check_url_shape(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError("must be a URL such as scheme://host/...")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_embedded_defaults(self) -> Settings:
        # The instance is frozen; filling derived defaults once here keeps every consumer simple.
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(self, "datasets_dir", self.datasets_dir.expanduser().resolve())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'defectloop.db'}")
        if not self.broker_url:
            object.__setattr__(self, "broker_url", f"sqla+sqlite:///{data_dir / 'broker.db'}")
        public = self.public_url or f"http://{self.http_host}:{self.http_port}"
        object.__setattr__(self, "public_url", public.rstrip("/"))
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A settings object printed into a log must not carry a database or broker password.
        for name, value in super().__repr_args__():
            yield (
                name,
                redact_url(value) if name and name.endswith("_url") and isinstance(value, str) else value,
            )

    @property
    def good_class(self) -> str:
        return self.classes[0]

    @property
    def defect_classes(self) -> tuple[str, ...]:
        return self.classes[1:]

    @property
    def label_space(self) -> LabelSpace:
        """The classes as the one value the workers and models take (the good class first)."""
        return LabelSpace.from_classes(self.classes)

    @property
    def embedded(self) -> bool:
        """True when both the database and the broker are local files (no server needed)."""
        return self.database_url.startswith("sqlite") and self.broker_url.startswith("sqla+sqlite")

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def heatmaps_dir(self) -> Path:
        return self.data_dir / "heatmaps"

    def redacted(self) -> dict[str, str]:
        """Every setting as text for display, with secrets and URL passwords masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else "(empty)"
            elif value is None:
                text = "(not set)"
            elif name.endswith("_url"):
                text = redact_url(str(value))
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            shown[env_name(name)] = text
        return shown


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/defectloop`` (``~/.local/share/defectloop``): one place, wherever a command runs."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "defectloop"


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL (lower-case scheme and host), or "" for anything else."""
    match = re.match(r"^(https?)://([^/?#@]+)(?:[/?#].*)?$", url.strip(), flags=re.IGNORECASE)
    if match is None:
        return ""
    scheme, host = match.group(1).lower(), match.group(2).lower()
    # Browsers send an origin without the scheme's default port.
    return f"{scheme}://{host.removesuffix(':443' if scheme == 'https' else ':80')}"


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``; anything else unchanged."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


SECRET_FIELDS = frozenset({"label_studio_api_key", "webhook_secret"})


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``environ`` (default: the process environment) plus explicit overrides.

    A wrong value raises :class:`SettingsError` naming each offending variable and what it expects;
    secret values are never echoed back.
    """
    env = os.environ if environ is None else environ
    _warn_unknown_variables(env)
    try:
        if environ is None:
            return Settings(**overrides)
        return _settings_from_mapping(environ, overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _settings_from_mapping(environ: Mapping[str, str], overrides: dict[str, Any]) -> Settings:
    # Tests pass an explicit mapping; translate it to field values so no process state is touched.
    values: dict[str, Any] = {}
    for key, value in environ.items():
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and value != "":
            field = upper.removeprefix(ENV_PREFIX).lower()
            if field in Settings.model_fields:
                values[field] = value
    values.update(overrides)
    return Settings.model_validate(values)


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        shown = "" if field in SECRET_FIELDS else f" (got {error.get('input')!r})"
        lines.append(f"  {env_name(field)}: {message}{shown}")
    return "\n".join(lines)


def _warn_unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = [env_name(name) for name in Settings.model_fields]
    unknown = []
    for key in environ:
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known and not upper.startswith(_FOREIGN_PREFIXES):
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("unknown setting %s is ignored%s", key, hint)
            unknown.append(key)
    return unknown
