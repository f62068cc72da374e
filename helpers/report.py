"""README figures and the model card from the results files: ``python -m helpers.report`` (``make report``).

Headline figures go through a committed **reference results file**,
``results/reference.json``: ``make report`` refreshes it from the artifacts of a
*full* run (a smoke run never overwrites it), then renders the README's ``results``
block and ``docs/model_card.md`` from it, so a test can check, without any
artifacts, that what the README and the card say is what the file says.

A block of the README between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` is
rewritten from the artifacts a run wrote, so the figures a reader sees are the ones
measured, not typed. Blocks whose results file is missing are left as they are (and
the command says so). Blocks so far: ``new_site`` (``new_site.json``), ``app``
(``app_benchmark.json``, ``tflite/parity.json``) and ``reliability`` (``reliability.json``,
``ood.json``).
"""

from __future__ import annotations

import re
import sys

from helpers import config
from helpers.jsonio import read_json_object, write_json

README = config.PROJECT_ROOT / "README.md"
REFERENCE = config.PROJECT_ROOT / "results" / "reference.json"
MODEL_CARD = config.PROJECT_ROOT / "docs" / "model_card.md"
HEADLINE_METRICS = ("recall", "specificity", "precision", "accuracy", "roc_auc", "pr_auc")
METRIC_NAMES = {"recall": "recall (sensitivity)", "specificity": "specificity", "precision": "precision",
                "accuracy": "accuracy", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``content``."""
    pattern = re.compile(rf"(<!-- begin:{re.escape(name)} -->\n).*?(<!-- end:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"No '<!-- begin:{name} -->' ... '<!-- end:{name} -->' block in the README.")
    return pattern.sub(lambda match: match.group(1) + content.rstrip("\n") + "\n" + match.group(2), text, count=1)


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def app_block(benchmark: dict, parity: dict | None = None) -> str:
    """The web app's measured figures as a Markdown table (from the JSON records)."""
    decisions = benchmark["decisions"]
    stages = ", ".join(f"{stage} {_ms(value)}" for stage, value in benchmark["stages_p50_ms"].items())
    cpu = benchmark.get("machine", {}).get("cpu", {}) or {}
    rows = [
        ("end to end per film, int8 one pass (decode → model → OOD → decision → heat map → overlay PNG), "
         f"{benchmark['films']} test films",
         f"median {_ms(benchmark['p50_ms'])}, p95 {_ms(benchmark['p95_ms'])} ({stages})"),
        (f"explorer's Keras + Grad-CAM path, same films ({benchmark['keras_films']})",
         f"median {_ms(benchmark['keras_p50_ms'])}: the app is {benchmark['speedup_vs_keras']:.1f}x faster"),
        ("cold start (import to first verdict) / peak memory after 20 films",
         f"{benchmark['cold_start_s']:.1f} s / {benchmark['rss_mb']:.0f} MB; TensorFlow imported: "
         f"{'yes' if benchmark['imported_tensorflow'] else 'no'}"),
        ("decisions at the threshold vs notebook 04's Keras decisions",
         f"{decisions['flips_vs_keras_notebook_04']} of {decisions['films_decided']} differ "
         f"(float32 one pass: {decisions.get('float32_one_pass_flips_vs_keras', '?')}; notebook 06's int8 "
         f"parity: {decisions['int8_disagreements_in_parity_json']:.0f}); "
         f"{benchmark['ood']['test_films_refused']} test films refused by the guard"
         + (f", {benchmark['ood']['test_films_referred_unlike_population']} referred as unlike the population"
            if "test_films_referred_unlike_population" in benchmark["ood"] else "")),
    ]
    if parity and "one_pass" in parity:
        one_pass = parity["one_pass"]
        rows.append((f"heat map vs Keras Grad-CAM, Spearman per film ({one_pass['n_heatmap_images']} test films)",
                     ", ".join(f"{variant} {one_pass[f'heatmap_spearman_{variant}']:.3f}"
                               for variant in ("float32", "float16", "int8"))))
    lines = ["| web app (`make benchmark`) | measured |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in rows]
    flags = ", ".join(cpu.get("cpu_flags") or []) or "no speed-relevant flags found"
    lines.append(f"\nMeasured on {cpu.get('cpu_model') or 'an unnamed CPU'} ({flags}), 2 threads; latency depends "
                 "on the CPU (int8 gains most with AVX-512 VNNI).")
    return "\n".join(lines)


VERDICT_WORDS = {"chest_xray": "decided", "not_xray": "not an X-ray", "wrong_way_round": "wrong way round",
                 "unlike_population": "unlike the population (refer)"}


def reliability_block(reliability: dict, ood_report: dict | None = None) -> str:
    """``make reliability`` (and notebook 07's ``ood.json``) as Markdown tables: what each kind of input gets."""
    fuzz = reliability["fuzz"]
    lines = ["| damaged input (`make reliability`) | tried | decided | refused with a message | unhandled |",
             "|---|---|---|---|---|"]
    for kind, counts in fuzz["by_kind"].items():
        tried = counts["decided"] + counts["refused"] + counts["unhandled"]
        lines.append(f"| {kind.replace('_', ' ')} | {tried:,} | {counts['decided']:,} | {counts['refused']:,} | "
                     f"{counts['unhandled']} |")
    lines.append(f"| **all** | **{fuzz['inputs']:,}** | {fuzz['decided']:,} | {fuzz['refused']:,} | "
                 f"**{fuzz['unhandled']}** |")
    lines.append(f"\nSlowest input {fuzz['slowest_s'] * 1e3:.0f} ms ({fuzz['slowest_input']}). "
                 + (f"16-bit PNG copies of the test films get the 8-bit decision for "
                    f"{reliability['bit16_agreement']:.1%} of {reliability['bit16_films_compared']}; "
                    if reliability.get("bit16_agreement") is not None else "")
                 + (f"DICOM copies (8-bit windowed, 12-bit, MONOCHROME1) for {reliability['dicom_agreement']:.1%} "
                    f"of {reliability['dicom_copies_compared']}." if reliability.get("dicom_agreement") is not None
                    else ""))
    outcomes = reliability.get("guard")
    if outcomes:
        kinds = list(VERDICT_WORDS)
        lines += ["", "| through the app (int8 phone model) | " + " | ".join(VERDICT_WORDS[k] for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        lines += [f"| {name} | " + " | ".join(str(counts.get(kind, 0)) for kind in kinds) + " |"
                  for name, counts in outcomes.items()]
    if ood_report and "orientation" in ood_report:
        orientation = ood_report["orientation"]
        lines.append(f"\nOrientation gate on the Keras features of the {orientation['n_test']} test films (notebook 07, "
                     f"`ood.json`): inverted {orientation['inverted_detected']:.1%}, upside down "
                     f"{orientation['upside_down_detected']:.1%}, rotated {orientation['rotated_detected']:.1%} "
                     f"detected; upright films flagged {orientation['upright_false_alarm']:.2%}. Test X-rays refused "
                     f"{ood_report['false_rejection_rate_test']:.2%}, referred as unlike the population "
                     f"{ood_report.get('unlike_population_rate_test', 0):.2%}; generated non-X-rays refused "
                     f"{ood_report['rejection_rate_non_xray']:.0%}.")
    return "\n".join(lines)


def _summary(entry: dict) -> str:
    accuracy = entry["accuracy"]
    return (f"{accuracy['mean']:.3f} ({accuracy['p05']:.3f}-{accuracy['p95']:.3f}) | {entry['recall']['mean']:.3f} | "
            f"{entry['specificity']['mean']:.3f} | {entry['ece']['mean']:.3f} | {entry['coverage']['mean']:.2f}")


def new_site_block(report: dict) -> str:
    """Notebook 08's site A results (``new_site.json``) as a Markdown table, with the targets."""
    control = report.get("label_free_depth_control") or {}
    depth = control.get("chosen")
    depth_text = "all" if depth is None else str(depth)
    lines = ["| site A, rest of the films | accuracy (5th-95th pct) | recall | specificity | ECE | decided |",
             "|---|---|---|---|---|---|",
             f"| zero-shot (validation operating point) | {_summary(report['zero_shot'])} |",
             f"| label-free: first {depth_text} BatchNorm layers adapted, no labels | {_summary(report['label_free'])} |"]
    lines += [f"| calibrated, k = {k} per class | {_summary(entry)} |" for k, entry in report["calibrated"].items()]
    targets = report.get("targets") or {}
    if targets:
        lines.append("")
        lines.append("- Targets of the new-site issue: " + "; ".join(
            f"{name} {'met' if met else '**missed**'}" for name, met in targets.items()) + ".")
    whole = report.get("label_free_whole_site") or {}
    simulated = [(name.rsplit(",", 1)[0], values) for name, values in whole.items()
                 if name.endswith(", label-free") and not name.startswith("site A")]
    for name, values in simulated:
        zero_shot = whole.get(f"{name}, zero-shot")
        if zero_shot:
            lines.append(f"- Label-free on the simulated {name} site (whole site): accuracy {zero_shot['accuracy']:.3f} → "
                         f"{values['accuracy']:.3f}, specificity {zero_shot['specificity']:.3f} → "
                         f"{values['specificity']:.3f}, recall {zero_shot['recall']:.3f} → {values['recall']:.3f}.")
    if control:
        shifts = ", ".join(f"{name} layers {shift:+.2f}" for name, shift in control["shifts"].items())
        lines.append(f"- Depth control ({control['size']} training films adapted to {control['size']} others; "
                     f"mean logit change, tolerance {control['tolerance']}): {shifts}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# The reference results file, the README's results block and the model card
# --------------------------------------------------------------------------- #
def reference_results(artifacts) -> dict:
    """The headline figures of the run in ``artifacts`` (needs ``metrics.json``; the rest is optional)."""
    metrics = read_json_object(artifacts / "metrics.json")
    record = {
        "profile": metrics.get("profile"),
        "n_images": metrics["n_images"],
        "threshold": metrics["threshold"], "threshold_rule": metrics.get("threshold_rule"),
        "bootstrap": metrics.get("bootstrap"),
        "test": {name: metrics["test"][name] for name in HEADLINE_METRICS},
        "validation": {name: metrics["validation"][name] for name in HEADLINE_METRICS},
        "calibration": {"ece_before": metrics["ece_before"], "ece_after": metrics["ece_after"],
                        "temperature": metrics["temperature"]},
        "band": {key: metrics["band"][key] for key in ("coverage", "accuracy_outside", "recall_outside",
                                                      "validation_coverage")} if metrics.get("band") else None,
        "dataset_shift_auc": metrics.get("dataset_shift_auc"),
    }
    parity_path = artifacts / "tflite" / "parity.json"
    if parity_path.is_file():
        int8 = read_json_object(parity_path)["variants"]["int8"]
        record["int8"] = {key: int8[key] for key in ("size_mb", "agreement", "disagreements", "accuracy_delta_points")}
    ood_path = artifacts / "ood.json"
    if ood_path.is_file():
        guard_report = read_json_object(ood_path)
        record["guard"] = {key: guard_report.get(key) for key in (
            "false_rejection_rate_test", "unlike_population_rate_test", "rejection_rate_non_xray")}
        if "orientation" in guard_report:
            record["guard"].update({key: guard_report["orientation"][key] for key in (
                "inverted_detected", "upside_down_detected", "rotated_detected", "upright_false_alarm")})
    site_path = artifacts / "new_site.json"
    if site_path.is_file():
        site = read_json_object(site_path)
        record["new_site"] = {"zero_shot_accuracy": site["zero_shot"]["accuracy"]["mean"],
                              "calibrated_accuracy": {k: entry["accuracy"]["mean"] for k, entry in site["calibrated"].items()}}
    return record


def _with_interval(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _metric_rows(reference: dict) -> list[str]:
    """One Markdown row per headline metric: name, test and validation value with its interval."""
    return [f"| {METRIC_NAMES[name]} | {_with_interval(reference['test'][name])} | "
            f"{_with_interval(reference['validation'][name])} |" for name in HEADLINE_METRICS]


def results_block(reference: dict) -> str:
    """The README's headline table: test and validation metrics with 95% intervals, from ``reference.json``."""
    bootstrap = reference.get("bootstrap") or {}
    lines = [f"| metric (threshold {reference['threshold']:.3f}, chosen on validation) | "
             f"test ({reference['n_images']['test']} images) | validation ({reference['n_images']['validation']} images) |",
             "|---|---|---|"]
    lines += _metric_rows(reference)
    calibration = reference["calibration"]
    lines.append("")
    lines.append(f"95% intervals: {bootstrap.get('unit', 'patient')}-level bootstrap, "
                 f"{bootstrap.get('n_resamples', '?'):,} resamples. Test ECE {calibration['ece_before']:.3f} "
                 f"(after temperature scaling, T = {calibration['temperature']:.2f}: {calibration['ece_after']:.3f}).")
    if reference.get("band"):
        band = reference["band"]
        lines.append(f"With the referral band the model decides {band['coverage']:.0%} of the test films "
                     f"({band['validation_coverage']:.0%} on validation) at accuracy {band['accuracy_outside']:.3f}.")
    shift = reference.get("dataset_shift_auc") or {}
    if shift:
        lines.append(f"Two-sample AUC (notebook 04; 0.5 = indistinguishable): training vs test NORMAL films "
                     f"{shift['train_vs_test_NORMAL']:.2f}, training vs validation NORMAL films "
                     f"{shift['train_vs_validation_NORMAL']:.2f}.")
    if reference.get("int8"):
        int8 = reference["int8"]
        lines.append(f"The int8 phone model ({int8['size_mb']:.1f} MB) agrees with Keras on {int8['agreement']:.1%} "
                     f"of the test films ({int8['disagreements']:.0f} differ; accuracy {int8['accuracy_delta_points']:+.2f} "
                     "points).")
    return "\n".join(lines)


def model_card(reference: dict) -> str:
    """A model card (after Mitchell et al. 2019) from ``reference.json``."""
    shift = reference.get("dataset_shift_auc") or {}
    guard_figures = reference.get("guard") or {}
    site = reference.get("new_site") or {}
    lines = [
        "# Model card: MobileNetV2 pneumonia classifier (paediatric chest X-rays)",
        "",
        "Generated by `make report` from `results/reference.json` (the last full run); do not edit by hand.",
        "",
        "## Model details",
        "",
        "MobileNetV2 pre-trained on ImageNet, fine-tuned in two phases (head, then the top blocks) with class "
        "weights and acquisition-style augmentation (notebooks 02-03). Input: one frontal chest X-ray, 224x224 RGB, "
        "raw 0-255. Output: P(PNEUMONIA). Shipped as TensorFlow Lite (float32, float16, dynamic range, int8; "
        "notebook 06) with the operating point in its metadata.",
        "",
        "## Intended use",
        "",
        "Teaching: how such a model is built, evaluated and deployed. **Not a medical device**: never use it to "
        "diagnose or treat anyone; a radiologist reads every film. Out of scope: adults, lateral views, other "
        "body parts, other diseases.",
        "",
        "## Data",
        "",
        "Kermany et al., Cell 2018 (ChestXRay2017, CC BY 4.0): children aged one to five from one hospital in "
        f"Guangzhou. Train split carved by patient into train and validation ({reference['n_images']['validation']} "
        f"validation films); the official test split ({reference['n_images']['test']} films) is used only to report.",
        "",
        "## Metrics",
        "",
        f"Decision threshold {reference['threshold']:.3f}, chosen on validation ({reference.get('threshold_rule') or 'see metrics.json'}).",
        "",
        "| metric | test [95% CI] | validation [95% CI] |",
        "|---|---|---|",
    ]
    lines += _metric_rows(reference)
    calibration = reference["calibration"]
    lines += ["", "## Calibration", "",
              f"Expected calibration error on test {calibration['ece_before']:.3f}; temperature scaling fitted on "
              f"validation (T = {calibration['temperature']:.2f}) gives {calibration['ece_after']:.3f}: the miscalibration "
              "on test comes from the population shift below, which a temperature cannot fix.", "",
              "## Population shift and subgroups", ""]
    if shift:
        lines.append(f"A two-sample test on ImageNet features (notebook 04; 0.5 = indistinguishable) tells training "
                     f"NORMAL films from test NORMAL films with AUC {shift.get('train_vs_test_NORMAL', float('nan')):.2f} "
                     f"(train vs validation {shift.get('train_vs_validation_NORMAL', float('nan')):.2f}); for PNEUMONIA "
                     f"{shift.get('train_vs_test_PNEUMONIA', float('nan')):.2f}. The test normals are another population: "
                     "validation specificity does not carry over.")
    if site:
        lines.append("")
        calibrated = ", ".join(f"k = {k}: {value:.3f}" for k, value in site["calibrated_accuracy"].items())
        lines.append(f"At a new site (notebook 08, the test set as site A, cross-fitted protocol): zero-shot accuracy "
                     f"{site['zero_shot_accuracy']:.3f}; after a site calibration on k labelled films per class "
                     f"{calibrated}.")
    if guard_figures:
        lines += ["", "## Input checks", "",
                  f"The guard refuses {guard_figures['rejection_rate_non_xray']:.0%} of generated non-X-rays and "
                  f"{guard_figures['false_rejection_rate_test']:.1%} of test X-rays, and refers "
                  f"{guard_figures.get('unlike_population_rate_test') or 0:.1%} of test X-rays as unlike the training "
                  "population."
                  + (f" Films the wrong way round are detected: inverted {guard_figures['inverted_detected']:.1%}, upside "
                     f"down {guard_figures['upside_down_detected']:.1%}, rotated {guard_figures['rotated_detected']:.1%} "
                     f"(upright films flagged {guard_figures['upright_false_alarm']:.1%})."
                     if "inverted_detected" in guard_figures else "")]
    lines += ["", "## Limitations", "",
              "- One hospital, children only: expect lower specificity and worse calibration elsewhere; measure with a "
              "shift report and calibrate on local films (notebook 08) before any use.",
              "- Grad-CAM maps are coarse (7x7) and explain the score, not the disease.",
              "- A mirrored film, a lateral view or another body part may pass the guard.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    artifacts = config.artifacts_dir(create=False)
    text = README.read_text()
    metrics_path = artifacts / "metrics.json"
    if metrics_path.is_file() and read_json_object(metrics_path).get("profile") == "full":
        write_json(reference_results(artifacts), REFERENCE)
        print(f"refreshed {REFERENCE} from {artifacts}")
    else:
        print(f"kept {REFERENCE}: no full-profile {metrics_path}")
    reference = read_json_object(REFERENCE)
    text = replace_block(text, "results", results_block(reference))
    MODEL_CARD.parent.mkdir(parents=True, exist_ok=True)
    MODEL_CARD.write_text(model_card(reference))
    print(f"rewrote the results block and {MODEL_CARD} from {REFERENCE}")
    site_path = artifacts / "new_site.json"
    if site_path.is_file():
        text = replace_block(text, "new_site", new_site_block(read_json_object(site_path)))
        print(f"rewrote the new_site block from {site_path}")
    else:
        print(f"left the new_site block as it is: no {site_path} (run notebook 08)")
    benchmark_path = artifacts / "app_benchmark.json"
    if benchmark_path.is_file():
        parity_path = artifacts / "tflite" / "parity.json"
        text = replace_block(text, "app", app_block(
            read_json_object(benchmark_path), read_json_object(parity_path) if parity_path.is_file() else None))
        print(f"rewrote the app block from {benchmark_path}")
    else:
        print(f"left the app block as it is: no {benchmark_path} (run make benchmark)")
    reliability_path = artifacts / "reliability.json"
    if reliability_path.is_file():
        ood_path = artifacts / "ood.json"
        text = replace_block(text, "reliability", reliability_block(
            read_json_object(reliability_path), read_json_object(ood_path) if ood_path.is_file() else None))
        print(f"rewrote the reliability block from {reliability_path}")
    else:
        print(f"left the reliability block as it is: no {reliability_path} (run make reliability)")
    README.write_text(text)
    if artifacts.is_dir():  # everything in one page beside the results files
        blocks = re.findall(r"<!-- begin:(\w+) -->\n(.*?)<!-- end:\1 -->", text, re.S)
        page = model_card(reference) + "".join(f"\n## {name}\n\n{content}" for name, content in blocks)
        (artifacts / "report.md").write_text(page)
        print(f"wrote {artifacts / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
