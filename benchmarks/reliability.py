"""Reliability of the screening entry point on the trained phone model: damaged inputs and 16-bit films.

    python benchmarks/reliability.py                 # 5,000 damaged inputs, every test film as 16-bit PNG
    python benchmarks/reliability.py --fuzz 1000 --films 100      # quicker

Writes ``<artifacts>/reliability.json``:

* ``fuzz`` -- ``inputs``, ``decided``, ``refused``, ``unhandled`` (must be 0), the slowest
  input and its time, counts per mutation kind (:mod:`helpers.fuzz`), built from real
  test films;
* ``bit16_agreement`` -- share of test films whose 16-bit PNG copy (what a 12/14-bit
  detector export looks like) gets the same decision as the 8-bit original, after the
  documented windowing (:func:`helpers.imaging.window_to_8bit`);
* ``dicom_agreement`` -- the same for three DICOM copies of each film (8-bit with its
  window, 12-bit without one, stored inverted as MONOCHROME1);
* ``guard`` -- the guard's verdict (:mod:`helpers.guard`) through the app's own path
  (PNG bytes -> Pillow -> int8 phone model's features) for every test film upright,
  inverted, upside down and rotated either way, for 120 test films under changes the
  guard never saw in training (heavy blur, posterisation, a wide black canvas, ...:
  they should be X-rays, referred when far from the training films, not refused), and
  for generated non-X-rays per kind: ``{input kind: {verdict: count}}``;
* ``concurrency`` -- ``threads``: 8 threads x 50 screens of test films on one shared
  screener, as the web app's sessions share one (:func:`helpers.concurrency.screen_under_load`:
  mismatches against each film screened alone, errors, throughput, latency p50/p95
  under load and alone); ``browser``: 4 Chromium sessions uploading a film each at the
  same moment to a real ``streamlit run``, each checked for its own answer.

Prints the counts and the slowest input. Nothing from an upload is written to disk.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install needed

from helpers import concurrency, config
from helpers.jsonio import write_json
from helpers.report import benchmark_profile

REPORT_FILE_NAME = "reliability.json"
DEFAULT_FUZZ = 5000  # fewer (or --films) make a shortened run, which make report does not use


def sixteen_bit_png(content: bytes) -> bytes:
    """The film's grey values stored as a 16-bit PNG (value * 257: the full 16-bit range)."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey * 257).save(buffer, format="PNG")
    return buffer.getvalue()


UNSEEN_FILMS = 120


def unseen_changes(films: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Grey films (H, W) uint8 under acquisition changes absent from the guard's training variants."""
    from PIL import Image, ImageFilter, ImageOps

    def each(change):
        return [np.asarray(change(Image.fromarray(film)), dtype=np.uint8) for film in films]

    def wide_canvas(image):  # the film small inside a wider black field, as an adult film or a scanned print
        canvas = Image.new("L", (int(image.width * 1.4), int(image.height * 1.2)), 0)
        canvas.paste(image, (int(image.width * 0.2), int(image.height * 0.1)))
        return canvas

    def gamma(value):
        return lambda image: Image.fromarray(np.round(255.0 * (np.asarray(image) / 255.0) ** value).astype(np.uint8))

    return {
        "much darker (gamma 2)": each(gamma(2.0)),
        "much brighter (gamma 0.5)": each(gamma(0.5)),
        "heavy blur (radius 3)": each(lambda image: image.filter(ImageFilter.GaussianBlur(3))),
        "posterised (3 bits)": each(lambda image: ImageOps.posterize(image, 3)),
        "tilted 10 degrees": each(lambda image: image.rotate(10, resample=Image.BILINEAR)),
        "centre half only": each(lambda image: image.crop((image.width // 4, image.height // 4,
                                                           3 * image.width // 4, 3 * image.height // 4))),
        "wide black canvas": each(wide_canvas),
        "squeezed sideways": each(lambda image: image.resize((int(image.width * 0.7), image.height))),
    }


def guard_outcomes(screener, films: list[np.ndarray], per_kind: int, seed: int) -> dict:
    """``{input kind: {verdict: count}}`` for films turned each way and generated non-X-rays, as PNG uploads."""
    from collections import Counter

    from helpers import guard, imaging, ood

    def verdicts(pictures) -> dict:
        counts = Counter(screener.screen_bytes(imaging.png_bytes(np.asarray(picture)), "film.png").guard
                         for picture in pictures)
        return {kind: int(counts.get(kind, 0)) for kind in guard.VERDICT_KINDS}

    stacked = np.stack([np.repeat(film[..., np.newaxis], 3, axis=-1) for film in films])  # (N, H, W, 3) uint8
    outcomes = {"upright test films": verdicts(stacked)}
    for name, turned in guard.orientation_variants(stacked).items():
        outcomes[f"test films, {name.replace('_', ' ')}"] = verdicts(np.clip(turned, 0, 255).astype(np.uint8))
    for name, changed in unseen_changes(films[:UNSEEN_FILMS]).items():
        outcomes[f"test films, unseen change: {name}"] = verdicts(changed)
    pictures, kinds = ood.non_xray_images(per_kind=per_kind, seed=seed)
    for kind in ood.NON_XRAY_KINDS:
        outcomes[f"not an X-ray: {kind.replace('_', ' ')}"] = verdicts(pictures[kinds == kind])
    return outcomes


LOAD_THREADS, LOAD_SCREENS_PER_THREAD, BROWSER_SESSIONS = 8, 50, 4


def browser_sessions(films: list[tuple[str, bytes]], screener, sessions: int = BROWSER_SESSIONS) -> dict:
    """``sessions`` Chromium sessions upload one film each at the same moment to a real ``streamlit run``.

    Each page must show its own film and the raw probability the same film gets
    screened alone. Needs Debian's chromium and Playwright (``tests/browser.py``).
    """
    import tempfile

    from tests import browser

    reason = browser.unavailable_reason()
    if reason:
        return {"sessions": 0, "skipped": reason}
    chosen = films[:sessions]
    expected = [f"Raw P(pneumonia) {screener.screen_bytes(content, name).probability:.3f}" for name, content in chosen]
    with tempfile.TemporaryDirectory(prefix="cxr-sessions-") as folder:
        paths = []
        for name, content in chosen:
            path = Path(folder) / Path(name).name
            path.write_bytes(content)
            paths.append(path)
        start = time.perf_counter()
        with browser.streamlit_server() as url:
            texts = browser.screen_in_sessions(url, paths)
        elapsed = time.perf_counter() - start
    own = [path.name in text and answer in text and not any(other.name in text for other in paths if other != path)
           for path, text, answer in zip(paths, texts, expected)]
    return {"sessions": len(paths), "screens": len(paths), "mismatches": own.count(False),
            "wall_s_including_server_start": elapsed}


def main(argv: list[str] | None = None) -> int:
    import warnings

    from helpers import data, dicom, fuzz, screening

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=DEFAULT_FUZZ, help="damaged inputs")
    parser.add_argument("--films", type=int, default=None, help="test films as 16-bit copies (default: all)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    arguments = parser.parse_args(argv)

    screener = screening.Screener.load("int8")
    test = data.load_splits()["test"]
    chosen = test.head(arguments.films, seed=arguments.seed) if arguments.films else test
    originals = [bytes(content) for content in chosen.image_bytes]

    from PIL import Image

    sources = [np.asarray(Image.open(io.BytesIO(content)).convert("L")) for content in originals[:20]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on the corrupt files it survives
        report = fuzz.run(screener, fuzz.corpus(sources, arguments.fuzz, arguments.seed))

    same, compared = 0, 0
    for name, content in zip(chosen.paths, originals):
        eight, sixteen = screener.screen_bytes(content, name), screener.screen_bytes(sixteen_bit_png(content), name)
        if eight.accepted and sixteen.accepted:
            compared += 1
            same += eight.model_decision == sixteen.model_decision
    dicom_same, dicom_compared = 0, 0
    for name, content in zip(chosen.paths, originals):
        grey = np.asarray(Image.open(io.BytesIO(content)).convert("L"))
        copies = (dicom.film_bytes(grey, window=(127.5, 256)),  # 8-bit, as the film, with its window
                  dicom.film_bytes(grey.astype(np.uint16) * 16, bits_stored=12),  # 12-bit, no window declared
                  dicom.film_bytes(255 - grey, photometric="MONOCHROME1", window=(127.5, 256)))  # stored inverted
        eight = screener.screen_bytes(content, name)
        for copy in copies:
            result = screener.screen_bytes(copy, name)
            if eight.accepted and result.accepted:
                dicom_compared += 1
                dicom_same += eight.model_decision == result.model_decision
    square = [np.asarray(Image.open(io.BytesIO(content)).convert("L").resize((224, 224), Image.BILINEAR))
              for content in originals]  # (224, 224) uint8 each: the orientation variants need square films
    outcomes = guard_outcomes(screener, square, per_kind=25, seed=arguments.seed)
    films = [(Path(name).name, content) for name, content in zip(chosen.paths, originals)]
    load = concurrency.screen_under_load(screener, films, LOAD_THREADS, LOAD_SCREENS_PER_THREAD, arguments.seed)
    sessions = browser_sessions(films, screener)
    record = {
        "profile": benchmark_profile(shortened=arguments.fuzz < DEFAULT_FUZZ or arguments.films is not None),
        "engine": screener.engine.name, "model_version": screener.engine.version,
        "fuzz": report.to_dict(),
        "bit16_agreement": same / compared if compared else None,
        "bit16_films_compared": compared, "bit16_films": len(originals),
        "bit16_rule": "16-bit films: the 0.5-99.5 percentile range of the film's pixels stretched to 0-255",
        "dicom_agreement": dicom_same / dicom_compared if dicom_compared else None,
        "dicom_copies_compared": dicom_compared,
        "dicom_copies": "per film: 8-bit MONOCHROME2 with its window, 12-bit without a window, MONOCHROME1",
        "guard": outcomes,
        "concurrency": {"threads": load, "browser": sessions},
    }
    path = write_json(record, config.artifacts_dir() / REPORT_FILE_NAME)
    print(json.dumps({key: record["fuzz"][key] for key in ("inputs", "decided", "refused", "unhandled",
                                                             "slowest_s", "slowest_input")}, indent=1))
    print(f"16-bit copies with the 8-bit decision: {record['bit16_agreement']} of {compared} films")
    print(f"DICOM copies with the 8-bit decision: {record['dicom_agreement']} of {dicom_compared}")
    for kind, counts in outcomes.items():
        print(f"{kind}: " + ", ".join(f"{verdict} {count}" for verdict, count in counts.items() if count))
    print(f"under load ({load['threads']} threads, one shared screener): {load['screens']} screens, "
          f"{load['mismatches']} differ from alone, {load['errors']} raised, {load['throughput_per_s']:.0f} per s, "
          f"p95 {load['latency_p95_ms']:.0f} ms; browser sessions: {sessions}")
    print(f"wrote {path}")
    return 1 if report.unhandled or load["mismatches"] or load["errors"] or sessions.get("mismatches") else 0


if __name__ == "__main__":
    sys.exit(main())
