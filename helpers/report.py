"""README figures and the model card from the results files: ``python -m helpers.report`` (``make report``).

Every figure the README's generated blocks and ``docs/model_card.md`` show comes from a
file committed under ``results/``, so a test can check, without any artifacts, that what
the README and the card say is what those files say. ``make report`` works in two steps:

1. **Refresh ``results/``** from the artifacts folder. Each source (:data:`SOURCES`)
   records the profile it was made with; only a *full*-profile one is used. A source
   that is there but was made with another profile (a smoke run, a shortened benchmark)
   or that records none stops the command before anything is written, with a message
   naming the file, the blocks it feeds and how to make a full one. A source that is
   not there leaves its ``results/`` file as it is. ``results/reference.json`` (the
   headline figures) is built from ``metrics.json`` and the phone-model, guard and
   new-site sources of the same run; the others are copies of their source (or of the
   fields a block needs).
2. **Render** each block between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``
   (:data:`BLOCK_SOURCES`) and the model card from ``results/`` only. A block whose
   results file is missing is left as it is, and the command says so
   (:func:`missing_sources`).

Each block ends with its targets (:mod:`helpers.targets`): met or missed, with the date
each was set and, if it was restated after a result was known, when and why.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import config, ledger, model_selection, targets
from helpers.jsonio import read_json_object, write_json

README = config.PROJECT_ROOT / "README.md"
RESULTS_DIR = config.PROJECT_ROOT / "results"
REFERENCE = RESULTS_DIR / "reference.json"
MODEL_CARD = config.PROJECT_ROOT / "docs" / "model_card.md"
HEADLINE_METRICS = ("recall", "specificity", "precision", "accuracy", "roc_auc", "pr_auc")
METRIC_NAMES = {"recall": "recall (sensitivity)", "specificity": "specificity", "precision": "precision",
                "accuracy": "accuracy", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}
FULL_PROFILE = "full"
SHORTENED = "shortened"  # a benchmark run on fewer films or runs than its defaults


@dataclass(frozen=True)
class Source:
    """An artifact a README block is rendered from, and its copy ``results/<name>.json``.

    ``keep``: the top-level keys copied into ``results/`` (None: the whole record).
    ``remedy``: how to make a full-profile one.
    """

    name: str
    artifact: str
    remedy: str
    keep: tuple[str, ...] | None = None


METRICS = Source("reference", "metrics.json", "run `make run` (notebook 04 writes it in the full profile)")
SOURCES = {source.name: source for source in (
    Source("parity", "tflite/parity.json", "run `make run` (notebook 06 in the full profile)"),
    Source("tflite_benchmark", "tflite/benchmark.json",
           "run `make run` (notebook 06 runs it), or `make benchmark` with its default runs after a full `make run`"),
    Source("ood", "ood.json", "run `make run` (notebook 07 in the full profile)"),
    Source("new_site", "new_site.json", "run `make run` (notebook 08 in the full profile)",
           keep=("profile", "zero_shot", "label_free", "calibrated", "targets", "label_free_depth_control",
                 "label_free_whole_site")),
    Source("app_benchmark", "app_benchmark.json", "run `make benchmark` (all test films) after a full `make run`"),
    Source("reliability", "reliability.json",
           "run `make reliability` (its default sizes) after a full `make run`"),
    Source("shortcuts", "gradcam.json", "run `make run` (notebook 05 in the full profile)",
           keep=("profile", "shortcuts")),
    Source("archive_benchmark", "archive_benchmark.json",
           "run `make benchmark` (benchmarks/archive_benchmark.py with its default sizes) after a full `make run`"),
)}
# The README's blocks: the results files each is rendered from (the first is required, the others add rows).
BLOCK_SOURCES = {"results": ("reference",), "app": ("app_benchmark", "parity"),
                 "reliability": ("reliability", "ood"), "new_site": ("new_site",), "archive": ("archive_benchmark",),
                 "test_ledger": ("test_ledger",), "model_selection": ("candidates", "shortcuts")}
# What each source feeds, for the refusal message: reference.json gathers the headline figures.
FEEDS = {"reference": ("results", "model card"), "parity": ("results", "app", "model card"),
         "tflite_benchmark": ("results", "model card"), "ood": ("results", "reliability", "model card"),
         "new_site": ("results", "new_site", "model card"), "app_benchmark": ("app", "model card"),
         "reliability": ("reliability", "model card"), "archive_benchmark": ("archive",),
         "shortcuts": ("model_selection",)}


class NotFullProfile(ValueError):
    """Artifacts ``make report`` refuses: made with another profile than ``full``, or recording none."""


def benchmark_profile(shortened: bool, artifacts: Path | None = None) -> str:
    """The profile a benchmark records in its JSON, so ``make report`` can refuse a partial one.

    The profile of the run whose model it measured (``metrics.json``: ``"full"`` or
    ``"smoke"``), ``"shortened"`` when that run was full but the benchmark itself ran
    on fewer films or runs than its defaults, ``"unknown"`` without a ``metrics.json``.
    """
    metrics_path = (artifacts or config.artifacts_dir(create=False)) / "metrics.json"
    profile = read_json_object(metrics_path).get("profile") if metrics_path.is_file() else None
    if profile != FULL_PROFILE:
        return profile or "unknown"
    return SHORTENED if shortened else FULL_PROFILE


def refusal(source: Source, path: Path, record: dict) -> str | None:
    """Why ``record`` (read from ``path``) cannot feed the README, or None when it is full-profile."""
    profile = record.get("profile")
    if profile == FULL_PROFILE:
        return None
    made = f"was made with the profile {profile!r}" if profile else "records no profile"
    return (f"{path} {made}; make report uses only full-profile results (it feeds: "
            f"{', '.join(FEEDS[source.name])}). To make a full one, {source.remedy}; then run `make report` again.")


def read_sources(artifacts: Path) -> dict[str, dict]:
    """{name: record} of every source present in ``artifacts`` (``"reference"``: ``metrics.json``).

    Raises:
        NotFullProfile: listing every source there that is not full-profile (then nothing may be written).
    """
    found, refused = {}, []
    for source in (METRICS, *SOURCES.values()):
        path = artifacts / source.artifact
        if path.is_file():
            record = read_json_object(path)
            reason = refusal(source, path, record)
            if reason:
                refused.append(reason)
            found[source.name] = record
    if refused:
        raise NotFullProfile("make report changed nothing:\n- " + "\n- ".join(refused))
    return found


def results_records(found: dict[str, dict]) -> dict[str, dict]:
    """{name: record to write as ``results/<name>.json``} from full-profile sources (:func:`read_sources`)."""
    records = {name: _kept(SOURCES[name], record) for name, record in found.items() if name in SOURCES}
    if "reference" in found:
        records["reference"] = reference_results(found["reference"], found)
    return records


def _kept(source: Source, record: dict) -> dict:
    return dict(record) if source.keep is None else {key: record[key] for key in source.keep if key in record}


def load_results(directory: Path | None = None) -> dict[str, dict]:
    """{name: record} of every results file in ``directory`` (default ``results/``)."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    names = ("reference", *SOURCES, "candidates")  # candidates.json: written by helpers.candidates
    loaded = {name: read_json_object(directory / f"{name}.json") for name in names
              if (directory / f"{name}.json").is_file()}
    if (directory / ledger.LEDGER.name).is_file():  # a CSV, appended by the runs themselves
        loaded["test_ledger"] = {"rows": ledger.read_ledger(directory / ledger.LEDGER.name)}
    return loaded


def missing_sources(readme_text: str, results: dict[str, dict]) -> list[str]:
    """``results/<name>.json`` files a block of ``readme_text`` is rendered from that ``results`` lacks.

    Empty when every block's figures can be checked against ``results/``.
    """
    blocks = re.findall(r"<!-- begin:(\w+) -->", readme_text)
    return [f"results/{name}.json (the {block} block)" for block in blocks
            for name in BLOCK_SOURCES.get(block, ()) if name not in results]


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``content``."""
    pattern = re.compile(rf"(<!-- begin:{re.escape(name)} -->\n).*?(<!-- end:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"No '<!-- begin:{name} -->' ... '<!-- end:{name} -->' block in the README.")
    return pattern.sub(lambda match: match.group(1) + content.rstrip("\n") + "\n" + match.group(2), text, count=1)


def readme_block(text: str, name: str) -> str:
    """The lines between the ``name`` markers of ``text`` (without the last newline)."""
    pattern = re.compile(rf"<!-- begin:{re.escape(name)} -->\n(.*?)<!-- end:{re.escape(name)} -->", re.S)
    found = pattern.search(text)
    if not found:
        raise ValueError(f"No '<!-- begin:{name} -->' ... '<!-- end:{name} -->' block in the README.")
    return found.group(1).rstrip("\n")


APP_TARGETS = ("app_p95_ms", "app_speedup_vs_keras", "app_cold_start_s", "app_rss_mb", "heatmap_float32",
               "heatmap_int8")
RELIABILITY_TARGETS = ("fuzz_unhandled", "bit16_agreement", "dicom_agreement", "load_mismatches",
                       "session_mismatches", "guard_test_refused", "orientation_inverted", "orientation_upside_down",
                       "orientation_rotated", "orientation_upright_flagged")
RESULTS_TARGETS = ("test_roc_auc", "test_recall", "test_accuracy", "test_ece_after_scaling", "band_coverage",
                   "band_accuracy", "int8_size_mb", "int8_agreement", "int8_accuracy_delta", "float16_agreement")


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
    lines += targets.section(targets.markdown_lines(APP_TARGETS, {"app_benchmark": benchmark, "parity": parity or {}}))
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
        lines.append(f"\nOrientation gate on the Keras features of the {orientation['n_test']} test films "
                     f"(notebook 07, `ood.json`): inverted {orientation['inverted_detected']:.1%}, upside down "
                     f"{orientation['upside_down_detected']:.1%}, rotated {orientation['rotated_detected']:.1%} "
                     f"detected; upright films flagged {orientation['upright_false_alarm']:.2%}. Test X-rays refused "
                     f"{ood_report['false_rejection_rate_test']:.2%}, referred as unlike the population "
                     f"{ood_report.get('unlike_population_rate_test', 0):.2%}; generated non-X-rays refused "
                     f"{ood_report['rejection_rate_non_xray']:.0%}.")
    lines += _load_lines(reliability.get("concurrency"))
    lines += targets.section(targets.markdown_lines(RELIABILITY_TARGETS,
                                                    {"reliability": reliability, "ood": ood_report or {}}))
    return "\n".join(lines)


def _load_lines(concurrency: dict | None) -> list[str]:
    """The load test of ``make reliability``: many users at once on one shared screener."""
    if not concurrency:
        return []
    threads = concurrency["threads"]
    lines = [f"\nUnder load (one shared int8 screener, as the app's sessions share it): {threads['threads']} threads "
             f"x {threads['screens'] // threads['threads']} screens of test films, **{threads['mismatches']} of "
             f"{threads['screens']:,} answers differ** from the same film screened alone, {threads['errors']} "
             f"raised; {threads['throughput_per_s']:.0f} films/s, p95 latency {threads['latency_p95_ms']:.0f} ms "
             f"under load ({threads['alone_p95_ms']:.0f} ms alone) with {threads['interpreters']} interpreter(s)."]
    browser = concurrency.get("browser") or {}
    if browser.get("sessions"):
        lines.append(f"{browser['sessions']} Chromium sessions uploading at the same moment to `streamlit run`: "
                     f"{browser['mismatches']} saw another session's answer.")
    return lines


ARCHIVE_TARGETS = ("archive_scaling", "archive_over_loop", "archive_manifest_client_mb")
ARCHIVE_RUNS = (("folder", "dask_1", "Dask, 1 worker, folder"), ("folder", "dask_2", "Dask, 2 workers, folder"),
                ("dicomweb", "dask_1", "Dask, 1 worker, Orthanc over DICOMweb"),
                ("dicomweb", "dask_2", "Dask, 2 workers, Orthanc over DICOMweb"))
PIPELINE_STAGES = {"decode": "decoding", "model": "the model", "ood": "the OOD check", "heatmap": "the heat map"}


def _cores(run: dict) -> str:
    return f"{run['cores_used']:.2f}" if run.get("cores_used") is not None else "-"


def archive_block(benchmark: dict) -> str:
    """``benchmarks/archive_benchmark.py`` as a Markdown table and the scaling note, all from the record."""
    loop = benchmark["folder"]["loop"]
    lines = [f"| {benchmark['films']:,} films (`make benchmark`) | films/s | CPU cores used | cluster start / "
             "first result | peak memory per worker |", "|---|---|---|---|---|",
             f"| plain loop (`helpers.screen`, {loop['threads']} LiteRT threads) | {loop['films_per_s']:.1f} | "
             f"{_cores(loop)} | - | - |"]
    for source, run, label in ARCHIVE_RUNS:
        measured = benchmark.get(source, {}).get(run)
        if measured:
            memory = ", ".join(f"{value:.0f}" for value in measured["worker_peak_rss_mb"])
            lines.append(f"| {label} | {measured['films_per_s']:.1f} | {_cores(measured)} | "
                         f"{measured['cluster_start_s']:.1f} s / {measured['first_result_s']:.1f} s | {memory} MB |")
    stages = benchmark["stages_ms"]
    pipeline = {stage: stages[stage] for stage in PIPELINE_STAGES if stages.get(stage) is not None}
    slowest = max(pipeline, key=pipeline.get)
    limit = (f"reading the films limits throughput (storage), more than {PIPELINE_STAGES[slowest]}"
             if stages["read"] > pipeline[slowest] else
             f"{PIPELINE_STAGES[slowest]} limits throughput ({pipeline[slowest] / sum(pipeline.values()):.0%} of the "
             "pipeline), storage does not")
    scaling = benchmark["scaling"]
    one_worker = benchmark["folder"]["dask_1"]
    per_core = one_worker.get("films_per_cpu_second") or one_worker["films_per_s"]
    lines.append(
        f"\n**Scaling.** 2 workers screen {scaling['folder_2_over_1_worker']:.2f}x the films/s of 1 worker "
        f"(efficiency {scaling['folder_2_over_1_worker'] / 2:.0%}) and {scaling['folder_2_workers_over_loop']:.2f}x "
        f"the plain loop; the 2-worker rows {'equal' if benchmark['rows_equal_loop'] else '**differ from**'} the "
        f"loop's. Per film (the loop's medians): reading the file {_ms(stages['read'])}, "
        + ", ".join(f"{PIPELINE_STAGES[stage]} {_ms(value)}" for stage, value in pipeline.items())
        + f": {limit}. Expect about {per_core:.0f} films/s per core (films per CPU-second of one single-thread "
        "worker), times the cores of the cluster, until the storage or the PACS cannot serve the films that fast.")
    two_workers = benchmark["folder"]["dask_2"]
    if one_worker.get("films_per_cpu_second") and two_workers.get("films_per_cpu_second"):
        lines.append(f"Per CPU-second, 2 workers screen {two_workers['films_per_cpu_second'] / per_core:.0%} of the "
                     f"films 1 worker does; the wall-clock ratio follows the CPU time each run got "
                     f"({one_worker['cores_used']:.2f} and {two_workers['cores_used']:.2f} cores on average).")
    bare = benchmark.get("without_dask")
    if bare:
        cores = (f" ({bare['processes_1_cores_used']:.2f} and {bare['processes_2_cores_used']:.2f} cores of CPU time)"
                 if "processes_2_cores_used" in bare else "")
        lines.append(f"Two plain processes without Dask, one single-thread screener each, screen "
                     f"{bare['2_over_1']:.2f}x the films/s of one on the same films{cores}.")
        allocator = bare.get("dask_allocator_default")
        if allocator:
            lines.append(f"Started with Dask's default `{allocator['variable']}` (which the local cluster leaves out), "
                         f"one such process screens {allocator['films_per_s']:.1f} films/s instead of "
                         f"{bare['processes_1']:.1f} ({allocator['films_per_s'] / bare['processes_1'] - 1:+.0%}).")
    manifest = benchmark.get("manifest")
    if manifest:
        lines.append(f"A manifest of {manifest['rows']:,} files that do not exist: {manifest['result_rows']:,} rows, "
                     f"{'each a refusal' if manifest['all_refused'] else '**not all refusals**'}; the client's peak "
                     f"memory {manifest['client_peak_rss_mb']:.0f} MB.")
    start, end = benchmark["load_average_start"], benchmark["load_average_end"]
    lines.append(f"Measured on {benchmark['cores']} cores shared with other work (load average {start[0]:.1f} at the "
                 f"start, {end[0]:.1f} at the end): the ratios move with that load"
                 + ("; the kernel's autogroup scheduling was on, which gives all the processes of one session (the "
                    "benchmark and its workers) one share of the CPU beside each other session's."
                    if benchmark.get("sched_autogroup") else "."))
    lines += targets.section(targets.markdown_lines(ARCHIVE_TARGETS, {"archive_benchmark": benchmark}))
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
             f"| label-free: first {depth_text} BatchNorm layers adapted, no labels "
             f"| {_summary(report['label_free'])} |"]
    lines += [f"| calibrated, k = {k} per class | {_summary(entry)} |" for k, entry in report["calibrated"].items()]
    if report.get("targets"):
        lines += ["", "- " + targets.SITE_CALIBRATION.line(report["targets"])]
    whole = report.get("label_free_whole_site") or {}
    simulated = [(name.rsplit(",", 1)[0], values) for name, values in whole.items()
                 if name.endswith(", label-free") and not name.startswith("site A")]
    for name, values in simulated:
        zero_shot = whole.get(f"{name}, zero-shot")
        if zero_shot:
            lines.append(f"- Label-free on the simulated {name} site (whole site): "
                         f"accuracy {zero_shot['accuracy']:.3f} → "
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
def reference_results(metrics: dict, found: dict[str, dict] | None = None) -> dict:
    """The headline figures of one run: ``metrics.json`` and, when given, the run's other sources.

    ``found``: {source name: record} of the same run (``parity``, ``tflite_benchmark``,
    ``ood``, ``new_site``; each optional), as :func:`read_sources` returns them.
    """
    found = found or {}
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
    if "parity" in found:
        variants = found["parity"]["variants"]
        record["int8"] = {key: variants["int8"][key] for key in ("size_mb", "agreement", "disagreements",
                                                                 "accuracy_delta_points")}
        if "float16" in variants:
            record["float16"] = {key: variants["float16"][key] for key in ("agreement", "disagreements")}
    if "tflite_benchmark" in found:
        benchmark = found["tflite_benchmark"]
        machine = benchmark.get("machine", {})
        record["speed"] = {
            "int8_speedup_vs_float32_1thread": benchmark["variants"]["int8"]["speedup_vs_float32_1thread"],
            "cpu_model": machine.get("cpu_model"), "cpu_flags": machine.get("cpu_flags")}
    if "ood" in found:
        guard_report = found["ood"]
        record["guard"] = {key: guard_report.get(key) for key in (
            "false_rejection_rate_test", "unlike_population_rate_test", "rejection_rate_non_xray")}
        if "orientation" in guard_report:
            record["guard"].update({key: guard_report["orientation"][key] for key in (
                "inverted_detected", "upside_down_detected", "rotated_detected", "upright_false_alarm")})
    if "new_site" in found:
        site = found["new_site"]
        record["new_site"] = {"zero_shot_accuracy": site["zero_shot"]["accuracy"]["mean"],
                              "calibrated_accuracy": {k: entry["accuracy"]["mean"]
                                                      for k, entry in site["calibrated"].items()}}
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
             f"test ({reference['n_images']['test']} images) | "
             f"validation ({reference['n_images']['validation']} images) |",
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
                     f"of the test films ({int8['disagreements']:.0f} differ; "
                     f"accuracy {int8['accuracy_delta_points']:+.2f} points).")
    lines += targets.section(results_target_lines(reference))
    return "\n".join(lines)


def test_ledger_block(rows: list[dict]) -> str:
    """How often the official test set has been scored, from the ledger's rows, with the reasons."""
    if not rows:
        return "The official test set has not been scored by a full run since the ledger began."
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row["why"]] = reasons.get(row["why"], 0) + 1
    first, last = rows[0]["date_utc"][:10], rows[-1]["date_utc"][:10]
    times = "once" if len(rows) == 1 else f"{len(rows)} times"
    return (f"The official test set has been scored **{times}** by full runs from {first} to {last} "
            f"(`results/test_ledger.csv`: date, commit, what, why; earlier scorings are described in "
            f"`docs/design_decisions.md`): " + "; ".join(f"{why} {count}" for why, count in reasons.items()) + ".")


def results_target_lines(reference: dict) -> list[str]:
    """The headline targets (quality, calibration, band, phone models) as Markdown list lines."""
    lines = targets.markdown_lines(RESULTS_TARGETS, {"reference": reference})
    speed = reference.get("speed")
    if speed:
        target = targets.speedup_target(speed.get("cpu_flags"))
        lines.append(f"- {target.line(speed['int8_speedup_vs_float32_1thread'])}, measured on "
                     f"{speed.get('cpu_model') or 'an unnamed CPU'}.")
    return lines


def model_card(results: dict[str, dict]) -> str:
    """A model card (after Mitchell et al. 2019) from the results files ({name: record}; ``reference`` required)."""
    reference = results["reference"]
    shift = reference.get("dataset_shift_auc") or {}
    guard_figures = reference.get("guard") or {}
    site = reference.get("new_site") or {}
    lines = [
        "# Model card: MobileNetV2 pneumonia classifier (paediatric chest X-rays)",
        "",
        "Generated by `make report` from the files in `results/` (the last full run); do not edit by hand.",
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
        f"Decision threshold {reference['threshold']:.3f}, chosen on validation "
        f"({reference.get('threshold_rule') or 'see metrics.json'}).",
        "",
        "| metric | test [95% CI] | validation [95% CI] |",
        "|---|---|---|",
    ]
    lines += _metric_rows(reference)
    calibration = reference["calibration"]
    lines += ["", "## Calibration", "",
              f"Expected calibration error on test {calibration['ece_before']:.3f}; temperature scaling fitted on "
              f"validation (T = {calibration['temperature']:.2f}) gives {calibration['ece_after']:.3f}: "
              "the miscalibration on test comes from the population shift below, which a temperature cannot fix.", "",
              "## Population shift and subgroups", ""]
    if shift:
        lines.append(f"A two-sample test on ImageNet features (notebook 04; 0.5 = indistinguishable) tells training "
                     f"NORMAL films from test NORMAL films with AUC "
                     f"{shift.get('train_vs_test_NORMAL', float('nan')):.2f} "
                     f"(train vs validation {shift.get('train_vs_validation_NORMAL', float('nan')):.2f}); "
                     f"for PNEUMONIA {shift.get('train_vs_test_PNEUMONIA', float('nan')):.2f}. "
                     "The test normals are another population: validation specificity does not carry over.")
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
                  + (f" Films the wrong way round are detected: "
                     f"inverted {guard_figures['inverted_detected']:.1%}, "
                     f"upside down {guard_figures['upside_down_detected']:.1%}, "
                     f"rotated {guard_figures['rotated_detected']:.1%} "
                     f"(upright films flagged {guard_figures['upright_false_alarm']:.1%})."
                     if "inverted_detected" in guard_figures else "")]
    lines += ["", "## Targets", "",
              "Each target with what was measured, whether it is met, when it was set and, if it was restated "
              "after a result was known, when and why.", ""]
    lines += card_target_lines(results)
    lines += ["", "## Limitations", "",
              "- One hospital, children only: expect lower specificity and worse calibration elsewhere; measure with a "
              "shift report and calibrate on local films (notebook 08) before any use.",
              "- Grad-CAM maps are coarse (7x7) and explain the score, not the disease.",
              "- A mirrored film, a lateral view or another body part may pass the guard.",
              ""]
    return "\n".join(lines)


def card_target_lines(results: dict[str, dict]) -> list[str]:
    """Every target whose measured value ``results`` holds, as Markdown list lines."""
    lines = results_target_lines(results["reference"])
    lines += targets.markdown_lines(APP_TARGETS, results)
    lines += targets.markdown_lines(RELIABILITY_TARGETS,
                                    {"ood": _guard_figures_as_ood(results["reference"]), **results})
    site_verdicts = (results.get("new_site") or {}).get("targets")
    if site_verdicts:
        lines.append(f"- {targets.SITE_CALIBRATION.line(site_verdicts)}")
    return lines


def _guard_figures_as_ood(reference: dict) -> dict:
    """``reference.json``'s guard figures laid out as in ``ood.json`` (where the guard targets read them)."""
    guard = reference.get("guard") or {}
    orientation = {key: guard[key] for key in ("inverted_detected", "upside_down_detected", "rotated_detected",
                                               "upright_false_alarm") if key in guard}
    return {"false_rejection_rate_test": guard.get("false_rejection_rate_test"), "orientation": orientation}


def render_blocks(results: dict[str, dict]) -> dict[str, str]:
    """{block name: Markdown} for every README block whose required results file ``results`` holds."""
    renderers = {
        "results": lambda: results_block(results["reference"]),
        "app": lambda: app_block(results["app_benchmark"], results.get("parity")),
        "reliability": lambda: reliability_block(results["reliability"], results.get("ood")),
        "new_site": lambda: new_site_block(results["new_site"]),
        "archive": lambda: archive_block(results["archive_benchmark"]),
        "test_ledger": lambda: test_ledger_block(results["test_ledger"]["rows"]),
        "model_selection": lambda: model_selection.block(results["candidates"], results.get("shortcuts")),
    }
    return {block: render() for block, render in renderers.items() if BLOCK_SOURCES[block][0] in results}


def main(argv: list[str] | None = None) -> int:
    artifacts = config.artifacts_dir(create=False)
    try:
        found = read_sources(artifacts) if artifacts.is_dir() else {}
    except NotFullProfile as refused:
        print(refused, file=sys.stderr)
        return 1
    if "reference" not in found and not (RESULTS_DIR / "reference.json").is_file():
        print(f"No {RESULTS_DIR / 'reference.json'} and no {artifacts / METRICS.artifact}: {METRICS.remedy}, "
              "then run `make report` again.", file=sys.stderr)
        return 1
    for name, record in results_records(found).items():
        path = write_json(record, RESULTS_DIR / f"{name}.json")
        print(f"refreshed {path} from {artifacts}")
    results = load_results()
    text = README.read_text()
    for block, content in render_blocks(results).items():
        text = replace_block(text, block, content)
        print(f"rewrote the {block} block from results/")
    for missing in missing_sources(text, results):
        print(f"left as it is, not checkable: no {missing}")
    README.write_text(text)
    card = model_card(results)
    MODEL_CARD.parent.mkdir(parents=True, exist_ok=True)
    MODEL_CARD.write_text(card)
    print(f"rewrote {MODEL_CARD} from results/")
    if artifacts.is_dir():  # everything in one page beside the results files
        blocks = re.findall(r"<!-- begin:(\w+) -->\n(.*?)<!-- end:\1 -->", text, re.S)
        (artifacts / "report.md").write_text(card + "".join(f"\n## {name}\n\n{content}" for name, content in blocks))
        print(f"wrote {artifacts / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
