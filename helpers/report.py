"""README figures from the results files: ``python -m helpers.report`` (``make report``).

A block of the README between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` is
rewritten from the artifacts a run wrote, so the figures a reader sees are the ones
measured, not typed. Blocks whose results file is missing are left as they are (and
the command says so). Blocks so far: ``app`` (``app_benchmark.json``,
``tflite/parity.json``, ``reliability.json``).
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


def app_block(benchmark: dict, parity: dict | None = None, reliability: dict | None = None) -> str:
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
         f"{benchmark['ood']['test_films_refused']} test films refused by the OOD check"),
    ]
    if parity and "one_pass" in parity:
        one_pass = parity["one_pass"]
        rows.append((f"heat map vs Keras Grad-CAM, Spearman per film ({one_pass['n_heatmap_images']} test films)",
                     ", ".join(f"{variant} {one_pass[f'heatmap_spearman_{variant}']:.3f}"
                               for variant in ("float32", "float16", "int8"))))
    if reliability:
        fuzz = reliability["fuzz"]
        rows.append((f"damaged inputs (truncated, bit-flipped, lying headers, ...): {fuzz['inputs']:,}",
                     f"{fuzz['decided']:,} decided, {fuzz['refused']:,} refused with a message, "
                     f"{fuzz['unhandled']} unhandled; slowest {fuzz['slowest_s'] * 1e3:.0f} ms"))
        if reliability.get("bit16_agreement") is not None:
            rows.append(("16-bit PNG copies of the test films with the 8-bit decision",
                         f"{reliability['bit16_agreement']:.1%} of {reliability['bit16_films_compared']}"))
    lines = ["| web app (`make benchmark`, `make reliability`) | measured |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in rows]
    flags = ", ".join(cpu.get("cpu_flags") or []) or "no speed-relevant flags found"
    lines.append(f"\nMeasured on {cpu.get('cpu_model') or 'an unnamed CPU'} ({flags}), 2 threads; latency depends "
                 "on the CPU (int8 gains most with AVX-512 VNNI).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    artifacts = config.artifacts_dir(create=False)
    text = README.read_text()
    benchmark_path = artifacts / "app_benchmark.json"
    if not benchmark_path.is_file():
        print(f"left the app block as it is: no {benchmark_path} (run make benchmark)")
        return 0
    parity_path = artifacts / "tflite" / "parity.json"
    reliability_path = artifacts / "reliability.json"
    block = app_block(read_json_object(benchmark_path),
                      read_json_object(parity_path) if parity_path.is_file() else None,
                      read_json_object(reliability_path) if reliability_path.is_file() else None)
    README.write_text(replace_block(text, "app", block))
    print(f"rewrote the app block of {README} from {artifacts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
