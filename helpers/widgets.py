"""The explorer's ipywidgets layer: widgets wired to :mod:`helpers.explorer`.

No decision logic lives here: every callback calls a pure function (select cases,
metrics at a threshold, explain an image) and writes the result into widgets whose
values tests can read (``HTML.value``, ``Image.value``, ``Label.value``). Tests drive
the callbacks by setting widget values, exactly as a browser would:

>>> app = ExplorerApp(explainer, predictions, examples)
>>> app.outcome.value = "FN"          # filter
>>> app.threshold.value = 0.3         # slider
>>> app.upload.value = (upload_entry("xray.png", data),)   # FileUpload, ipywidgets 8 format
>>> app.upload_html.value             # what the reader sees
"""

from __future__ import annotations

import datetime
import html
import mimetypes

import ipywidgets as widgets
import numpy as np

from helpers import explorer, imaging
from helpers.data import CLASS_NAMES, load_image

IMAGE_WIDTH = "224px"
UPLOAD_ACCEPT = ".jpg,.jpeg,.png,.dcm,.bmp,.gif,.webp,image/*,application/dicom"  # the web app's types


# --------------------------------------------------------------------------- #
# HTML snippets (pure; what the HTML widgets show)
# --------------------------------------------------------------------------- #
def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def metrics_html(metrics: dict, threshold: float, chosen_threshold: float, point_warning: str = "") -> str:
    """Confusion matrix and precision / recall / specificity at ``threshold`` as an HTML table."""
    moved = abs(threshold - chosen_threshold) > 1e-9
    marker = (f"current threshold <b>{threshold:.3f}</b> (validation-chosen: {chosen_threshold:.3f})"
              if moved else f"threshold <b>{threshold:.3f}</b> = the validation-chosen threshold")
    cell = "style='padding:2px 8px;border:1px solid #ccc;text-align:right'"
    rows = (
        f"<tr><th></th><th {cell}>predicted NORMAL</th><th {cell}>predicted PNEUMONIA</th></tr>"
        f"<tr><th {cell}>true NORMAL</th><td {cell}>TN {metrics['tn']}</td><td {cell}>FP {metrics['fp']}</td></tr>"
        f"<tr><th {cell}>true PNEUMONIA</th><td {cell}>FN {metrics['fn']}</td><td {cell}>TP {metrics['tp']}</td></tr>"
    )
    scores = ", ".join(f"{name} <b>{_number(metrics[name])}</b>"
                       for name in ("precision", "recall", "specificity", "accuracy"))
    warning = f"<p style='color:#a60'>{html.escape(point_warning)}</p>" if point_warning else ""
    return (f"<div><p>Whole test set at {marker}</p><table style='border-collapse:collapse'>{rows}</table>"
            f"<p>{scores}</p>{warning}</div>")


def explanation_html(explanation: explorer.Explanation) -> str:
    """The pipeline's verdict on one image (the web app's words), with the truth for a test case."""
    result = explanation.result
    name = html.escape(result.name)
    if not result.accepted:
        return (f"<div><p><b>{name}</b></p><p style='color:#b00'><b>Not analysed.</b> "
                f"{html.escape(result.message)}</p></div>")
    header = f"<p><b>{name}</b> &middot; engine: {html.escape(result.engine)}</p>"
    if result.outside_population:  # an X-ray unlike the validated population: the referral is the answer
        return ("<div>" + header + "<p style='font-size:1.2em;color:#a60'><b>REFER to a radiologist</b></p>"
                f"<p style='color:#a60'>{html.escape(result.message)}</p>"
                f"<p style='color:#555'>For reference only: the model leans {result.model_decision} "
                f"(calibrated P(pneumonia) {result.calibrated_probability:.3f}), outside the population "
                "its numbers were measured on.</p></div>")
    colour = "#b00" if result.model_decision == CLASS_NAMES[1] else "#070"
    lines = [
        header,
        f"<p style='font-size:1.2em;color:{colour}'><b>{result.model_decision}</b></p>",
        f"<p>calibrated P(pneumonia) <b>{result.calibrated_probability:.3f}</b> "
        f"(raw model output {result.probability:.3f}; decision threshold {result.threshold:.3f} "
        f"on the raw output)</p>",
    ]
    if result.referred:
        lines.append("<p style='color:#a60'><b>Inside the referral band: refer to a radiologist.</b></p>")
    if explanation.label is not None:
        lines.append(f"<p>truth: {CLASS_NAMES[explanation.label]} &middot; outcome <b>{explanation.outcome}</b></p>")
    lines.append(f"<p style='color:#555'>Guard: {html.escape(result.message)}</p>")
    for note in result.notes:
        lines.append(f"<p style='color:#555'>{html.escape(note)}</p>")
    lines.append("<p style='color:#555'>Right: the heat map, the regions that raised the score of "
                 f"{result.model_decision}.</p>")
    return "<div>" + "".join(lines) + "</div>"


def upload_entry(name: str, content: bytes, mime_type: str | None = None) -> dict:
    """One file in the ipywidgets 8 ``FileUpload.value`` format (for tests and demos)."""
    return {
        "name": name,
        "type": mime_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
        "size": len(content),
        "content": memoryview(bytes(content)),
        "last_modified": datetime.datetime.now(datetime.timezone.utc),
    }


# --------------------------------------------------------------------------- #
# The app
# --------------------------------------------------------------------------- #
class ExplorerApp:
    """Threshold panel, test-set case browser, engine choice and upload, in one widget.

    Args:
        explainer: :class:`helpers.explorer.Explainer` (operating point, guard, engines, one pipeline each).
        predictions: DataFrame (``path``, ``label``, ``probability``, ``logit``) of the test
            images, row i for ``examples`` image i (from :func:`explorer.load_test_predictions`).
        examples: the test :class:`helpers.data.Examples` (images decoded on demand).
        notes: lines shown at the top (missing artifacts, where the data came from).
    """

    def __init__(self, explainer: explorer.Explainer, predictions, examples, notes=()):
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} images; "
                             "pass the predictions of these examples, in their order.")
        self.explainer = explainer
        self.point = explainer.point
        self.predictions = predictions.reset_index(drop=True)
        self.examples = examples
        self.curves = explorer.threshold_curves(self.predictions["label"], self.predictions["probability"])
        self.table = explorer.outcome_table(self.predictions, self.point)
        self.selection = explorer.select_cases(self.table)
        self.position = 0
        self.last_upload: tuple[str, bytes] | None = None
        self.last_case: explorer.Explanation | None = None
        self.last_upload_explanation: explorer.Explanation | None = None
        self._muted = False

        header = [f"Operating point: {self.point.describe()}."] + list(notes)
        if self.point.warning:
            header.insert(0, self.point.warning)
        self.header = widgets.HTML("<br>".join(html.escape(line) for line in header))
        self.engine = widgets.Dropdown(options=list(explainer.engines), description="Engine")
        self.threshold = widgets.FloatSlider(
            value=self.point.threshold, min=0.0, max=1.0, step=0.005, readout_format=".3f",
            continuous_update=False, description="Threshold",
            layout=widgets.Layout(width="420px"))
        self.reset = widgets.Button(description="validation threshold",
                                    tooltip="Back to the threshold chosen on validation")
        self.metrics_html = widgets.HTML()
        self.curve_image = widgets.Image(format="png", layout=widgets.Layout(width="420px"))
        self.outcome = widgets.Dropdown(options=self._outcome_options(), value="all", description="Show")
        self.order = widgets.ToggleButtons(options=list(explorer.SORT_ORDERS))
        self.previous = widgets.Button(description="previous", icon="arrow-left")
        self.next = widgets.Button(description="next", icon="arrow-right")
        self.position_label = widgets.Label()
        self.case_image = widgets.Image(format="png", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.case_overlay = widgets.Image(format="png", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.case_html = widgets.HTML(layout=widgets.Layout(width="420px"))
        self.upload = widgets.FileUpload(accept=UPLOAD_ACCEPT, multiple=False,
                                         description="Upload X-ray")
        self.upload_image = widgets.Image(format="png", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.upload_overlay = widgets.Image(format="png", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.upload_html = widgets.HTML("Upload a frontal chest X-ray (JPEG, PNG or DICOM, any size).")

        self.threshold.observe(self._on_threshold, names="value")
        self.reset.on_click(lambda _: setattr(self.threshold, "value", self.point.threshold))
        self.outcome.observe(self._on_selection, names="value")
        self.order.observe(self._on_selection, names="value")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        self.engine.observe(self._on_engine, names="value")
        self.upload.observe(self._on_upload, names="value")

        self.widget = widgets.VBox([
            self.header,
            widgets.HTML("<h3>Threshold and engine</h3>"),
            widgets.HBox([self.engine, self.threshold, self.reset]),
            widgets.HBox([self.metrics_html, self.curve_image]),
            widgets.HTML("<h3>Browse the test set</h3>"),
            widgets.HBox([self.outcome, self.previous, self.next, self.position_label]),
            self.order,
            widgets.HBox([self.case_image, self.case_overlay, self.case_html]),
            widgets.HTML("<h3>Upload your own X-ray</h3>"),
            self.upload,
            widgets.HBox([self.upload_image, self.upload_overlay, self.upload_html]),
        ])
        self._update_metrics()
        self.show_case()

    # ------------------------------------------------------------ callbacks
    def _outcome_options(self) -> list[tuple[str, str]]:
        counts = explorer.outcome_counts(self.table)
        return [(f"{name} ({counts[name]})", name) for name in explorer.OUTCOMES]

    def _on_threshold(self, change) -> None:
        self.table = explorer.outcome_table(self.predictions, self.point, change["new"])
        self._update_metrics()
        current = self.outcome.value
        self._muted = True  # new counts in the labels; keep the chosen outcome
        self.outcome.options = self._outcome_options()
        self.outcome.value = current
        self._muted = False
        self._reselect(keep_case=True)
        self._rerun_upload()

    def _on_selection(self, change) -> None:
        if not self._muted:
            self._reselect(keep_case=False)

    def _on_engine(self, change) -> None:
        self.show_case()
        self._rerun_upload()

    def _on_upload(self, change) -> None:
        files = explorer.read_upload(change["new"])
        if not files:
            return
        self.last_upload = files[0]
        self._rerun_upload()

    # ------------------------------------------------------------ actions
    def _update_metrics(self) -> None:
        threshold = float(self.threshold.value)
        metrics = explorer.metrics_at_threshold(self.predictions["label"], self.predictions["probability"], threshold)
        self.metrics_html.value = metrics_html(metrics, threshold, self.point.threshold, self.point.warning)
        figure = explorer.plot_threshold_curves(
            self.curves, threshold, self.point.threshold,
            chosen_label="default (no metrics.json)" if self.point.warning else "validation-chosen")
        self.curve_image.value = explorer.figure_png(figure)

    def _reselect(self, keep_case: bool) -> None:
        shown = self.selection.index[self.position] if keep_case and len(self.selection) else None
        self.selection = explorer.select_cases(self.table, self.outcome.value, self.order.value)
        positions = np.flatnonzero(self.selection.index == shown) if shown is not None else []
        self.position = int(positions[0]) if len(positions) else 0
        self.show_case()

    def step(self, delta: int) -> None:
        """Move ``delta`` cases through the current selection (stops at the ends)."""
        if len(self.selection):
            self.position = int(np.clip(self.position + delta, 0, len(self.selection) - 1))
        self.show_case()

    def show_case(self) -> None:
        """Explain the current case of the selection into the case widgets."""
        count = len(self.selection)
        self.previous.disabled = self.position <= 0
        self.next.disabled = self.position >= count - 1
        if count == 0:
            self.position_label.value = "no case"
            self.last_case = None
            self._render(None, self.case_image, self.case_overlay, self.case_html,
                         f"No test image is {explorer.OUTCOME_DESCRIPTIONS[self.outcome.value]} "
                         f"at threshold {self.threshold.value:.3f}.")
            return
        index = int(self.selection.index[self.position])
        self.position_label.value = f"case {self.position + 1} of {count}"
        image = load_image(bytes(self.examples.image_bytes[index]))  # (224, 224, 3) float32
        self.last_case = self.explainer.explain_image(
            image, name=str(self.examples.paths[index]).rsplit("/", 1)[-1], engine=self.engine.value,
            threshold=float(self.threshold.value), label=int(self.examples.labels[index]),
            known_film=True)  # a test image is a known X-ray: show the prediction, note the guard's verdict
        self._render(self.last_case, self.case_image, self.case_overlay, self.case_html)

    def _rerun_upload(self) -> None:
        if self.last_upload is None:
            return
        name, content = self.last_upload
        self.last_upload_explanation = self.explainer.explain_bytes(
            content, name, engine=self.engine.value, threshold=float(self.threshold.value))
        self._render(self.last_upload_explanation, self.upload_image, self.upload_overlay, self.upload_html)

    @staticmethod
    def _render(explanation, image_widget, overlay_widget, html_widget, empty_message: str = "") -> None:
        if explanation is None:
            image_widget.value, overlay_widget.value = b"", b""
            html_widget.value = f"<p>{html.escape(empty_message)}</p>"
            return
        image_widget.value = imaging.png_bytes(explanation.image) if explanation.image is not None else b""
        overlay = explorer.overlay_image(explanation)
        overlay_widget.value = imaging.png_bytes(overlay, scale=1.0) if overlay is not None else b""  # [0, 1]
        html_widget.value = explanation_html(explanation)
