"""Pneumonia screening web app: upload chest X-rays, get the phone model's decision and heat map.

Start it with ``make app`` or ``streamlit run app/streamlit_app.py [-- --model PATH]``.
A thin layer over :mod:`helpers.serving.pipeline` (the decision rule, the upload checks
and the heat map live there, tested without a browser; the notebook explorer and the
CLI screen through the same pipeline). Runs on LiteRT alone: no
TensorFlow is imported. Uploads stay in memory and are never written to disk.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # `streamlit run app/streamlit_app.py` without installing helpers
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st

from helpers import imaging, uploads
from helpers.errors import UnusableInput
from helpers.escaping import markdown_literal as literal
from helpers.serving import pipeline

UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "bmp", "gif", "webp"]
IMAGE_WIDTH = 320  # pixels on the page for the film and its heat map
MAX_FILES_PER_BATCH = 20  # files screened per page; a folder goes through python -m helpers.screen
DECISION_STYLE = {  # decision -> (Streamlit message box, words)
    "PNEUMONIA": (st.error, "PNEUMONIA: signs of pneumonia"),
    "NORMAL": (st.success, "NORMAL: no sign of pneumonia"),
    "REFER": (st.warning, "Refer to a radiologist: the model is unsure"),
}


def command_line_model() -> str | None:
    """``--model PATH`` after ``streamlit run app/streamlit_app.py --``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.model


@st.cache_resource(show_spinner="Loading the model ...")
def load_screener(variant: str, model: str, site: str) -> pipeline.Screener:
    """The engine, OOD detector and (optional) site calibration, loaded once for every session."""
    return pipeline.Screener.load(variant, model, site=site or None)


def sidebar() -> tuple[pipeline.Screener | None, float]:
    st.sidebar.header("Model")
    variant = st.sidebar.selectbox("Engine", pipeline.ONE_PASS_VARIANTS, index=0,
                                   help="int8 is the phone model; float16 and float32 are larger and slower.")
    alpha = st.sidebar.slider("Heat-map opacity", 0.0, 1.0, 0.4, 0.05)
    try:
        model = pipeline.find_model(variant, command_line_model())
        site = pipeline.find_site_calibration(model)
        use_site = site is not None and st.sidebar.radio(
            "Operating point", ["validation (in the model)", "site calibration"],
            index=1 if os.environ.get(pipeline.SITE_ENVIRONMENT_VARIABLE) else 0,
            help=f"The site calibration is {site} (notebook 08).") == "site calibration"
        screener = load_screener(variant, str(model), str(site) if use_site else "")
    except UnusableInput as error:  # any unusable model, metadata, detector or site file: one message
        st.sidebar.error("No model loaded.")
        st.error(literal(error))
        return None, alpha
    point = screener.point
    st.sidebar.markdown(f"**{screener.engine.name}**  \n{literal(screener.engine.path.name)}  \n"
                        f"version {literal(screener.engine.version)}")
    band = (f"; refer band {point.band_low:.3f}-{point.band_high:.3f}" if point.has_band else "")
    created = screener.engine.metadata.get("created_utc", "unknown date")
    active = "site calibration" if screener.site is not None else "validation operating point"
    st.sidebar.markdown(f"**Active: {active}**  \n"
                        f"**Threshold** {point.threshold:.3f}{band}  \n"
                        f"chosen on: {literal(point.chosen_on or 'unknown')}  \n"
                        f"rule: {literal(point.rule or 'unknown')}  \nmodel converted {literal(created)}")
    if screener.engine.provenance_note:
        st.sidebar.warning(literal(screener.engine.provenance_note))
    if screener.detector is None:
        st.sidebar.warning("No out-of-distribution detector found: only the colour check runs.")
    st.sidebar.info(pipeline.NOT_A_MEDICAL_DEVICE)
    return screener, alpha


def chosen_files() -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploads, then of the picked sample films, at most :data:`MAX_FILES_PER_BATCH`."""
    files = st.file_uploader("Chest X-ray(s): JPEG, PNG or DICOM, frontal view", type=UPLOAD_TYPES,
                             accept_multiple_files=True,
                             max_upload_size=uploads.MAX_UPLOAD_BYTES // 2**20)
    chosen = [(file.name, file.getvalue()) for file in files or []]
    samples = pipeline.sample_films()
    if samples:
        picked = st.multiselect("Or try official test films (no upload)", [path.name for path in samples])
        chosen += [(path.name, path.read_bytes()) for path in samples if path.name in picked]
    if len(chosen) > MAX_FILES_PER_BATCH:
        left_out = ", ".join(name for name, _ in chosen[MAX_FILES_PER_BATCH:])
        st.warning(literal(
            f"{len(chosen)} files chosen; the app screens at most {MAX_FILES_PER_BATCH} at a time, so these "
            f"{len(chosen) - MAX_FILES_PER_BATCH} were not screened: {left_out}. Remove some files, or screen "
            "a whole folder with: python -m helpers.screen FOLDER --out results.csv"))
    return chosen[:MAX_FILES_PER_BATCH]


def session_cache() -> pipeline.ResultCache:
    """This browser session's results by file content: moving a slider does not screen again."""
    if "results" not in st.session_state:
        st.session_state["results"] = pipeline.ResultCache(capacity=4 * MAX_FILES_PER_BATCH)
    return st.session_state["results"]


def where_on_the_scale(result: pipeline.ScreeningResult) -> str:
    """Where the raw probability sits against the threshold and the refer band, in words."""
    text = f"Raw P(pneumonia) {result.probability:.3f} vs threshold {result.threshold:.3f}"
    if result.band:
        low, high = result.band
        place = "inside" if result.inside_band else ("below" if result.model_decision == "NORMAL" else "above")
        text += f"; {place} the refer band {low:.3f}-{high:.3f}"
    return text


def show_result(result: pipeline.ScreeningResult, alpha: float) -> None:
    st.subheader(literal(result.name))
    if not result.accepted:
        st.error(literal(result.message))
        return
    if result.outside_population:  # an X-ray unlike the validated population: the referral is the answer
        st.warning("**Refer to a radiologist: outside the population this model was validated on.** "
                   + literal(result.message))
        st.caption(f"For reference only, not a decision: the model leans {result.model_decision} "
                   f"(calibrated P(pneumonia) = {result.calibrated_probability:.2f}). "
                   f"{result.total_ms:.0f} ms on {result.engine}.")
    else:
        box, words = DECISION_STYLE[result.decision]
        box(f"**{words}** (calibrated P(pneumonia) = {result.calibrated_probability:.2f})")
        st.caption(f"{where_on_the_scale(result)}. {result.total_ms:.0f} ms on {result.engine}.")
    left, right = st.columns(2)
    left.image(result.image.astype("uint8"), caption="film as the model sees it (224x224)", width=IMAGE_WIDTH)
    right.image(imaging.overlay_png(result.image, result.heatmap, alpha),
                caption=f"where the model looked (heat map of {result.model_decision})", width=IMAGE_WIDTH)
    for note in result.notes:
        st.info(literal(note))


def main() -> None:
    st.set_page_config(page_title="Pneumonia screening (teaching)", page_icon=":lungs:", layout="wide")
    st.title("Pneumonia screening on chest X-rays")
    st.caption("MobileNetV2 phone model (TensorFlow Lite), decision rule chosen on validation, heat map "
               "from the same pass. " + pipeline.NOT_A_MEDICAL_DEVICE)
    phone_url = os.environ.get("CXR_PHONE_URL", "http://127.0.0.1:8765/")  # where `make phone` serves it
    st.caption(f"On a phone, offline, with the camera: [the phone web app]({phone_url}) (`make phone`).")
    screener, alpha = sidebar()
    if screener is None:
        return
    files = chosen_files()
    if not files:
        st.info("Upload one or several chest X-rays to screen them.")
        return
    cache = session_cache()
    results = [cache.screen(screener, content, name) for name, content in files]
    if len(results) > 1:
        st.subheader(f"{len(results)} files")
        st.dataframe([result.row() for result in results], hide_index=True)
        st.download_button("Download results (CSV)", pipeline.results_csv(results),
                           file_name="screening_results.csv", mime="text/csv")
    for result in results:
        show_result(result, alpha)


main()
