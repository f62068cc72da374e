"""README figures from the results files: ``python -m helpers.report`` (``make report``).

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
from helpers.jsonio import read_json_object

README = config.PROJECT_ROOT / "README.md"


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


def main(argv: list[str] | None = None) -> int:
    artifacts = config.artifacts_dir(create=False)
    text = README.read_text()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
