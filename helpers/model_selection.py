"""The README's model-selection block: the candidate recipes (``helpers.candidates``,
``results/candidates.json``), the choice and its zero-shot targets, and the shortcut checks
(notebook 05, ``results/shortcuts.json``). Rendered by ``make report`` (:mod:`helpers.report`)."""

from __future__ import annotations

from helpers import targets

ZERO_SHOT_TARGETS = ("zero_shot_accuracy", "zero_shot_recall", "zero_shot_roc_auc", "zero_shot_ece")


def _value(entry: dict) -> str:
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}-{entry['ci_high']:.3f})"


def block(candidates: dict, shortcuts: dict | None = None) -> str:
    """The candidate table (validation, acquisition shifts, test where a finalist was scored), the
    choice and its zero-shot targets; then the shortcut checks of the project's model (notebook 05)."""
    lines = [f"Rule, fixed before training: {candidates['rule'].rstrip('.')}. Chosen: **{candidates['chosen']}**.", "",
             "| candidate | validation ROC-AUC (95% CI) | validation specificity | shifts: mean / worst specificity "
             "| shifts: mean / worst recall | test accuracy / recall / specificity / ROC-AUC / ECE |",
             "|---|---|---|---|---|---|"]
    for name, record in candidates["candidates"].items():
        shifted = record["shift_summary"]
        test = record.get("test")
        scored = ("not scored" if not test else " / ".join(
            f"{test['metrics'][key]['value']:.3f}" for key in ("accuracy", "recall", "specificity", "roc_auc"))
            + f" / {test['ece']:.3f}")
        lines.append(f"| {name}: {record['what']} | {_value(record['validation']['roc_auc'])} "
                     f"| {_value(record['validation']['specificity'])} "
                     f"| {shifted['mean_specificity']:.3f} / {shifted['worst_specificity']:.3f} "
                     f"| {shifted['mean_recall']:.3f} / {shifted['worst_recall']:.3f} | {scored} |")
    lines.append("")
    lines.append("Specificity and recall are read at each candidate's own validation threshold (the highest keeping "
                 "validation recall >= 0.98); test figures are zero-shot, each candidate "
                 "scored once, after the choice, and logged in "
                 "the ledger.")
    lines += targets.section(targets.markdown_lines(ZERO_SHOT_TARGETS, {"candidates": candidates}))
    checked = {name: record["shortcuts"] for name, record in candidates["candidates"].items() if "shortcuts" in record}
    if checked:
        lines += ["", "Shortcut checks of the candidates on the validation films, at each one's threshold:", ""]
        lines += [f"- {name}: {_shortcut_sentence(record)}" for name, record in checked.items()]
    checks = (shortcuts or {}).get("shortcuts")
    if checks:
        border_only = checks["border_only_classifier"]
        changed = checks["decisions_changed"]
        heat = checks["thorax_heat"]
        lines += ["", "Shortcut checks of the project's model on the validation films (notebook 05):", "",
                  f"- a linear classifier that sees only the outer {checks['border']:.0%} band of each film reaches "
                  f"ROC-AUC {border_only['auc']:.3f} ({border_only['ci_low']:.3f}-{border_only['ci_high']:.3f});",
                  f"- {_shortcut_sentence({'decisions_changed': changed, 'thorax_heat': heat})}"][
                      : None if candidates["chosen"] not in checked else -1]  # already listed above
    return "\n".join(lines)


def _shortcut_sentence(checks: dict) -> str:
    """Decisions changed by each blanking, and the Grad-CAM heat inside the thorax box per outcome."""
    heat = checks["thorax_heat"]
    changed = "; ".join(f"{name}: {entry['changed']} of {entry['films']} decisions change "
                        f"({entry['normal_to_pneumonia']} to PNEUMONIA, {entry['pneumonia_to_normal']} to NORMAL)"
                        for name, entry in checks["decisions_changed"].items())
    inside = ", ".join(f"{outcome} {heat[outcome]['heat_inside']:.0%} ({heat[outcome]['films']} "
                       f"film{'' if heat[outcome]['films'] == 1 else 's'})"
                       for outcome in ("TP", "FP", "FN", "TN") if heat[outcome]["films"])
    return f"{changed}; Grad-CAM heat inside the thorax box ({heat['box_area']:.0%} of the image): {inside}."
