"""The main job: the whole loop against a random control arm, and its HTML report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from defectloop.cli._common import console, err_console, parse_class_map, settings_of
from defectloop.demo.plan import DEFAULT_OPTIONS as _DEMO  # pure: no torch
from defectloop.demo.plan import DemoOptions
from defectloop.report import write_report
from defectloop.settings import ARCHITECTURE_NAMES


def demo(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(min=1, help="Labelling rounds after the seed round.")] = _DEMO.rounds,
    batch: Annotated[int, typer.Option(min=1, help="Labels per round (each arm).")] = _DEMO.batch,
    seed_labels: Annotated[
        int, typer.Option(min=2, help="Round 0: labels drawn at random, shared by both arms.")
    ] = _DEMO.seed_labels,
    n: Annotated[
        int, typer.Option("--n", min=12, help="Photos in all: camera pool, frozen evaluation and test sets.")
    ] = _DEMO.n_images,
    dataset: Annotated[
        Path | None,
        typer.Option(
            exists=True, file_okay=False, help="A labelled ImageFolder instead of synthetic garments."
        ),
    ] = None,
    class_map: Annotated[
        list[str] | None,
        typer.Option(help="FOLDER=LABEL for --dataset folders not named after a class (repeatable)."),
    ] = None,
    image_size: Annotated[
        int, typer.Option(min=16, max=1024, help="Model input size in pixels.")
    ] = _DEMO.image_size,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs of each training.")] = _DEMO.epochs,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Architecture(s) the loop retrains each round (repeatable).", show_default="improved_cnn"
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the photos, the split and the random draws.")
    ] = _DEMO.seed,
    feed_seconds: Annotated[
        float, typer.Option(min=0.0, help="The camera folder is fed over this many seconds.")
    ] = _DEMO.feed_seconds,
    fresh: Annotated[
        bool, typer.Option(help="Start over: remove the demo's database, models and photos first.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Where to write report.html.", show_default="DATA_DIR/report.html")
    ] = None,
) -> None:
    """Run the whole loop (camera -> ranking -> simulated annotator -> retrain -> champion/challenger)
    for several rounds against a random control arm, and write the report; a rerun resumes the latest
    unfinished run, --fresh starts over."""
    from defectloop.demo.run import run_demo

    settings = settings_of(ctx)
    architectures = tuple(arch or _DEMO.architectures)
    bad = [a for a in architectures if a not in ARCHITECTURE_NAMES]
    if bad:
        raise typer.BadParameter(
            f"unknown architecture(s) {bad}; choose from {', '.join(ARCHITECTURE_NAMES)}"
        )
    try:
        options = DemoOptions(
            rounds=rounds,
            batch=batch,
            seed_labels=seed_labels,
            n_images=n,
            image_size=image_size,
            channels=settings.image_channels,
            epochs=epochs,
            train_batch_size=_DEMO.train_batch_size,
            patience=_DEMO.patience,
            architectures=architectures,
            dataset=None if dataset is None else str(dataset.expanduser().resolve()),
            class_map=parse_class_map(class_map),
            seed=seed,
            feed_seconds=feed_seconds,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if settings.log_level != "DEBUG":
        # The bars and the round lines tell the story; the processes' own logs go to up.log.
        logging.getLogger().setLevel(logging.WARNING)
        # The random arm trains in this process; what its trainer warns about is in its round's numbers.
        logging.getLogger("models").setLevel(logging.ERROR)
    result = run_demo(settings=settings, options=options, console=console, fresh=fresh, out=out)
    if result.status != "finished":
        console.print(f"demo run {result.run_name} {result.status}; `defectloop demo` resumes it")
        raise typer.Exit(130 if result.status == "stopped" else 1)
    if result.report is not None:
        console.print(f"report: {result.report}", highlight=False)
    if result.verdict:
        console.print(f"verdict: {result.verdict}", highlight=False)


def report(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default: report.html in the data dir).")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Demo run to show (default: the latest one).")
    ] = None,
) -> None:
    """Write the HTML report: verdict, learning curves, champions, confusion matrices, heat-maps."""
    settings = settings_of(ctx)
    path = write_report(
        settings=settings,
        out=out or settings.data_dir / "report.html",
        run_name=run,
        show_progress=err_console.is_terminal,
    )
    console.print(str(path.resolve()), highlight=False, soft_wrap=True)
