"""The ``defectloop`` command line: one entry point for cameras, annotators' tooling and engineers.

Settings are built here (and only here, for the CLI) and passed down. Errors the user can fix come
out as one line saying what to do, never as a traceback; exit codes: 1 = failed, 2 = bad usage or
settings, or a command that is not built yet.

The commands live in one module per group (``setup``, ``training``, ``challengers``, ``champions``,
``services``, ``label_studio``, ``demo``); this module registers them, in the order ``--help`` lists them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.logging import RichHandler
from rich.markup import escape

from db.errors import DatabaseError
from defectloop.cli import challengers, champions, demo, label_studio, services, setup, training
from defectloop.cli._common import err_console
from defectloop.errors import DefectloopError, NotBuiltYetError, SettingsError
from defectloop.settings import load_settings
from labelling.errors import LabellingError
from models.errors import ModelError
from workers.errors import WorkerError

__all__ = ["app", "main"]

app = typer.Typer(
    name="defectloop",
    help="Active-learning labelling loop for garment defect images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_PLANNED = "(not built yet)"


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Load settings once per invocation; a wrong value stops here, naming the variable."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    if settings.log_level != "DEBUG":
        # Alembic narrates every plugin it loads, and httpx every request the Label Studio SDK makes, at
        # INFO; users only need to hear about failures.
        for noisy in ("alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = settings


_COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    # setting up and looking around
    ("synth", setup.synth),
    ("doctor", setup.doctor),
    ("settings", setup.show_settings),
    ("status", setup.status),
    # engineers: train, evaluate, import labelled folders
    ("train", training.train),
    ("evaluate", training.evaluate),
    ("import", training.import_),
    # engineers: champion / challenger
    ("retrain", challengers.retrain),
    ("compare", challengers.compare_),
    ("promote", champions.promote),
    ("reject", champions.reject),
    ("rollback", champions.rollback),
    ("versions", champions.versions),
    # processes
    ("worker", services.worker),
    ("beat", services.beat),
    ("watch", services.watch),
    ("up", services.up),
    ("serve", services.serve),
    # the main job: the whole loop against a random control arm
    ("demo", demo.demo),
    ("report", demo.report),
)
for _name, _command in _COMMANDS:
    app.command(_name)(_command)
app.add_typer(setup.db_app, name="db")
app.add_typer(label_studio.labelling_app, name="labelling")


# --- planned commands: listed so --help shows the whole design, refusing loudly until built ----


def _planned(typer_app: typer.Typer, name: str, summary: str, plan: str) -> None:
    def command() -> NoReturn:
        raise NotBuiltYetError(f"`defectloop {name}` is not built yet: {plan}")

    command.__doc__ = f"{_PLANNED} {summary}"
    typer_app.command(
        name.split()[-1],
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(command)


# Nothing is planned but unbuilt at present; a command designed ahead of its code is listed with
# ``_planned(app, name, summary, plan)``.


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SettingsError as exc:
        err_console.print(f"[red]{exc}[/]", highlight=False)
        sys.exit(2)
    except NotBuiltYetError as exc:
        err_console.print(f"[yellow]{exc}[/]", highlight=False)
        sys.exit(2)
    except (DefectloopError, DatabaseError, ModelError, WorkerError, LabellingError) as exc:
        # escape: a message may hold brackets (a list of classes) that rich would read as markup.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
