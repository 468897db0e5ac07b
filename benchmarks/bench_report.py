"""How long `defectloop report` takes on a fabricated database: 5 rounds x 2 arms, 500 predictions.

The database (SQLite, in a temporary folder) is made by ``defectloop.report.sample``: 100 synthetic
photos with 5 predictions each (older champions' and the current ones'), a demo run of 5 rounds (round 0
the seed labels) of both arms with calibration bins, confusion matrices and stage timings, and a
champion history with comparisons; the binary champion is a real (untrained) improved_cnn checkpoint,
so the gallery's 12 Grad-CAM heat-maps are computed. ``write_report`` is timed end to end: the first
call in a fresh process (it imports torch and loads the champion) and then ``--repeat`` warm calls; the
stages (reading the database, photos and heat-maps, plots and page) are timed separately once more.

Writes benchmarks/results/report.json and a row of docs/benchmarks.md (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import console, machine_info, relative, write_docs_row, write_json

from db.migrate import upgrade
from db.session import create_engine_for, make_session_factory, session_scope
from defectloop.app import open_database
from defectloop.report import write_report
from defectloop.report.load import load_report_data
from defectloop.report.pictures import add_pictures
from defectloop.report.render import render_report
from defectloop.report.sample import fabricate_report_data
from defectloop.settings import load_settings

RESULT = Path(__file__).resolve().parent / "results" / "report.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--predictions-per-image", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="rounds after the seed round 0")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()

    machine = machine_info(threads=1)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:
        root = Path(folder)
        settings = load_settings({"DEFECTLOOP_DATA_DIR": str(root / "data")})
        settings.data_dir.mkdir(parents=True)
        upgrade(settings.database_url)
        engine = create_engine_for(settings.database_url)
        started = time.perf_counter()
        with session_scope(make_session_factory(engine)) as session:
            fabricate_report_data(
                session,
                root=root / "sample",
                rounds=args.rounds,
                n_images=args.images,
                predictions_per_image=args.predictions_per_image,
                checkpoint=True,
            )
        engine.dispose()
        fabricate_s = time.perf_counter() - started
        console.print(f"fabricated the database in {fabricate_s:.1f} s")

        out = root / "report.html"
        started = time.perf_counter()
        write_report(settings=settings, out=out)
        first_s = time.perf_counter() - started
        warm = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            write_report(settings=settings, out=out)
            warm.append(time.perf_counter() - started)
        size_kb = out.stat().st_size / 1024
        console.print(f"write_report: first {first_s:.2f} s, warm {', '.join(f'{w:.2f}' for w in warm)} s")

        database = open_database(settings)
        try:
            stages: dict[str, float] = {}
            started = time.perf_counter()
            with session_scope(database.sessions) as session:
                data = load_report_data(session, gallery_size=6, current_settings=settings.redacted())
            stages["read the database"] = time.perf_counter() - started
            started = time.perf_counter()
            gallery = add_pictures(data.gallery, sessions=database.sessions)
            stages["photos and heat-maps"] = time.perf_counter() - started
            started = time.perf_counter()
            html = render_report(replace(data, gallery=gallery))
            stages["plots and page"] = time.perf_counter() - started
        finally:
            database.dispose()
        n_predictions = args.images * args.predictions_per_image
        n_heatmaps = html.count('class="heatmap"')

    result = {
        "what": "write_report on a fabricated SQLite database",
        "database": {
            "rounds": args.rounds + 1,
            "arms": 2,
            "images": args.images,
            "predictions": n_predictions,
            "gallery": len(gallery),
            "heatmaps": n_heatmaps,
        },
        "fabricate_s": round(fabricate_s, 2),
        "first_call_s": round(first_s, 3),
        "warm_s": [round(w, 3) for w in warm],
        "warm_median_s": round(statistics.median(warm), 3),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "html_kb": round(size_kb, 1),
        "machine": machine,
    }
    write_json(RESULT, result)
    console.print(f"wrote {relative(RESULT)}")
    if not args.no_docs:
        stage_text = ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
        write_docs_row(
            f"report: `write_report` on a fabricated SQLite database, {args.rounds + 1} rounds x 2 arms, "
            f"{n_predictions} predictions, gallery 6 + 6 with Grad-CAM of an improved_cnn at 64 px",
            f"first call in a fresh process {first_s:.2f} s (imports torch, loads the champion); warm median "
            f"{statistics.median(warm):.2f} s over {len(warm)} ({stage_text}); page {size_kb:.0f} KB, "
            f"{n_heatmaps} heat-maps (load avg at start {machine['load_average_at_start']})",
            "benchmarks/bench_report.py",
        )


if __name__ == "__main__":
    main()
