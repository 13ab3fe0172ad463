"""`report.json` and `report.md` of an evaluation, written atomically.

The JSON holds everything needed to judge and reproduce the numbers: what was evaluated (model and its checksum,
or folders), on what (data, split, N, durations), how (generation settings and seed, embedders with weights,
checksums and labels, protocol versions), against what (real or reconstructed reference audio, or statistics),
every value with its confidence interval, and the warnings. What differs between two runs of the same evaluation
(wall time, how many clips came from the cache) is kept apart under ``run``, so reports of a fresh and a resumed
run compare equal without it. The Markdown is the same for people, with ``random-weights`` shown first when any
model's weights are random (numbers from them mean nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgen.atomic import write_text_atomic
from mgen.metrics.embedders.base import OWN_MODEL, RANDOM_WEIGHTS

REPORT_FORMAT = "mgen-evaluation"
REPORT_VERSION = 1
JSON_NAME, MARKDOWN_NAME = "report.json", "report.md"


def random_weight_models(models: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, info in models.items() if info.get("label") == RANDOM_WEIGHTS]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _interval(record: dict[str, Any]) -> str:
    ci = record.get("ci")
    if not ci:
        return ""
    return f"[{_number(ci['low'])}, {_number(ci['high'])}] ({round(100 * ci['confidence'])} %, {ci['unit']})"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# mgen evaluation", ""]
    random_models = report.get("random_weights") or []
    if random_models:
        lines += [f"> **random-weights**: {', '.join(random_models)} ran with random weights (tests/CI): these numbers "
                  "mean nothing and are not comparable to published ones.", ""]
    own = [name for name, info in report["models"].items() if info.get("label") == OWN_MODEL]
    if own:
        lines += [f"> **mgen-codec**: {', '.join(own)} embeds with mgen's own codec encoder: comparable between "
                  "mgen runs on the same codec only, never to published FADs.", ""]
    subject = report["subject"]
    reference = report["reference"]
    source = f" ({reference['source']} audio)" if reference.get("source") else ""
    lines += [f"- evaluated: {subject['description']}", f"- reference: {reference['description']}{source}"]
    if "generation" in report:
        g = report["generation"]
        lines.append(f"- generation: top-k {g['top_k']}, top-p {g['top_p']}, temperature {g['temperature']}, "
                     f"CFG {g['cfg_coef']}, seed {g['seed']}, each clip as long as its reference (at most "
                     f"{g['max_duration']} s)")
    gen = report["generated"]
    lines += [f"- generated clips: {gen['clips']} ({gen['seconds']:.1f} s in all; {gen['min_seconds']:.2f}–"
              f"{gen['max_seconds']:.2f} s each)" + (f"; {gen['silent']} silent" if gen.get("silent") else ""), "",
              "| metric | value | 95 % interval | notes |", "|---|---|---|---|"]
    for key, record in report["metrics"].items():
        notes = []
        if isinstance(record.get("frames"), dict):
            notes.append(f"frames {record['frames']['generated']} gen / {record['frames']['reference']} ref")
        if "fad_inf" in record:
            notes.append(f"FAD∞ {_number(record['fad_inf']['score'])}")
        if key == "kld":
            notes.append(f"KL(gen‖ref) {_number(record['kld_qp'])}, sum {_number(record['kld_both'])}")
        if key == "clap_score":
            notes.append(record["name"])
        lines.append(f"| {key} | {_number(record['value'])} | {_interval(record)} | {'; '.join(notes)} |")
    lines += ["", "| model | id | label | sha256 | weights |", "|---|---|---|---|---|"]
    for name, info in report["models"].items():
        lines.append(f"| {name} | {info['id']} | {info['label']} | {(info.get('sha256') or '-')[:16]} | "
                     f"{info.get('weights') or '-'} |")
    if report.get("warnings"):
        lines += ["", "Warnings:", *[f"- {w}" for w in report["warnings"]]]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.md into `out_dir`, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"format": REPORT_FORMAT, "version": REPORT_VERSION, **report}
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    json_path, md_path = out / JSON_NAME, out / MARKDOWN_NAME
    md = markdown(report)
    write_text_atomic(json_path, text)
    write_text_atomic(md_path, md)
    return json_path, md_path
