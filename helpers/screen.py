"""Screen every file in a folder with the phone model: ``python -m helpers.screen FOLDER --out results.csv``.

The same pipeline as the web app (:mod:`helpers.serving.pipeline`), no TensorFlow. Every
file gets a row -- its decision and probabilities, or why it was refused; nothing is
skipped silently. The exit code says how it went: 0 every file decided, 1 some
files refused, 2 the model could not be loaded or the folder is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from helpers import imaging
from helpers.errors import UnusableInput, one_line
from helpers.progress import progress_bar
from helpers.serving import pipeline as screening  # the pipeline itself: the CLI never imports TensorFlow

EXIT_ALL_DECIDED, EXIT_SOME_REFUSED, EXIT_UNUSABLE = 0, 1, 2


def list_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Every regular file under ``folder`` (hidden files too: a refusal beats a silent skip), sorted."""
    pattern = "**/*" if recursive else "*"
    return sorted(path for path in folder.glob(pattern) if path.is_file())


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.screen", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of chest X-rays (JPEG, PNG, ...)")
    parser.add_argument("--out", type=Path, default=Path("screening_results.csv"), help="CSV to write")
    parser.add_argument("--engine", choices=screening.ONE_PASS_VARIANTS, default="int8")
    parser.add_argument("--model", default=None,
                        help=f"a one-pass .tflite (default: ${screening.MODEL_ENVIRONMENT_VARIABLE} "
                             "or artifacts/tflite/)")
    parser.add_argument("--heatmaps", type=Path, default=None, help="also save each heat-map overlay as PNG here")
    parser.add_argument("--site", default=None, help="a site_calibration.json (notebook 08) to use instead of the "
                                                     "validation operating point")
    parser.add_argument("--recursive", action="store_true", help="include sub-folders")
    parser.add_argument("--allow-stale", action="store_true",
                        help="use a model converted from another Keras model than the current one (with a warning)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if not arguments.folder.is_dir():
        print(f"error: {arguments.folder} is not a folder. Give the folder that holds the films.", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        screener = screening.Screener.load(arguments.engine, arguments.model, allow_stale=arguments.allow_stale,
                                           site=arguments.site)
    except UnusableInput as error:  # the model, its metadata, the detector or the site file
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_UNUSABLE
    if screener.engine.provenance_note:
        print(screener.engine.provenance_note, file=sys.stderr)
    files = list_files(arguments.folder, arguments.recursive)
    if arguments.heatmaps:
        arguments.heatmaps.mkdir(parents=True, exist_ok=True)
    results = []
    for path in progress_bar(files, desc="screen", disable=arguments.no_progress):
        name = str(path.relative_to(arguments.folder))
        try:
            content = path.read_bytes()
        except OSError as error:
            results.append(screening.ScreeningResult(name, False, f"{name} could not be read ({error.strerror}). "
                                                     "Check its permissions.", screener.engine.name))
            continue
        result = screener.screen_bytes(content, name)
        results.append(result)
        if arguments.heatmaps and result.accepted:
            target = arguments.heatmaps / (name.replace("/", "__") + ".heatmap.png")
            target.write_bytes(imaging.png_bytes(result.overlay(), scale=1.0))  # the overlay is in [0, 1]
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(screening.results_csv(results))
    decisions = Counter(result.decision for result in results if result.accepted)
    refused = [result for result in results if not result.accepted]
    print(f"{len(files)} files: " + ", ".join(f"{count} {decision}" for decision, count in sorted(decisions.items()))
          + f"{', ' if decisions else ''}{len(refused)} refused -> {arguments.out}")
    for result in refused:
        print(f"  refused: {result.message}")
    return EXIT_SOME_REFUSED if refused else EXIT_ALL_DECIDED


if __name__ == "__main__":
    sys.exit(main())
