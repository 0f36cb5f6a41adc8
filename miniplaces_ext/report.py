"""One self-contained HTML page about an evaluation run (`evaluate --report report.html`).

Headline top-1/top-5 (and torch's convs' when --compare-native ran), per-class accuracy
sorted, the confusion matrix as a picture, the 20 most confused class pairs with example
thumbnails, a reliability (calibration) diagram with its expected calibration error, and
the run's settings. Pictures are embedded as data: URIs: the file opens anywhere, offline.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from miniplaces_ext import cli, indoor_outdoor

BINS = 10
PAIRS = 20
THUMBS = 4

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#f4f6fa;border-radius:8px;padding:.8em 1.2em}
.card b{display:block;font-size:1.8em}.muted{color:#777;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
.bar{background:#4a7bd0;height:10px;display:inline-block}.cols{columns:2;column-gap:2em}
img.thumb{width:64px;height:64px;margin-right:3px;border-radius:3px} img.fig{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(path: Path) -> str:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((64, 64))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=80)
    except OSError:
        return ""
    return f'<img class="thumb" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict:
    """Per confidence bin [i/bins, (i+1)/bins): count, mean confidence, accuracy; and the expected
    calibration error, sum over bins of count/N * |accuracy - mean confidence|."""
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        conf = float(confidence[mask].mean()) if n else None
        acc = float(correct[mask].mean()) if n else None
        if n:
            ece += n / len(confidence) * abs(acc - conf)
        rows.append({"count": n, "confidence": conf, "accuracy": acc})
    return {"bins": rows, "ece": ece}


def _reliability_figure(stats: dict):
    fig = cli.new_figure(figsize=(5, 4.2))
    ax = fig.subplots()
    edges = np.linspace(0, 1, BINS + 1)
    acc = [b["accuracy"] or 0 for b in stats["bins"]]
    ax.bar(edges[:-1], acc, width=1 / BINS, align="edge", edgecolor="#234", color="#4a7bd0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="#c33", label="perfect calibration")
    ax.set_xlabel("confidence (top-1 softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE {stats['ece']:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def confused_pairs(confusion: torch.Tensor, count: int = PAIRS) -> list[tuple[int, int, int]]:
    """(true, predicted, images) of the `count` largest off-diagonal entries, largest first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(count, off.numel()))
    n = confusion.shape[1]
    return [(int(f) // n, int(f) % n, int(v)) for v, f in zip(values.tolist(), flat.tolist()) if v > 0]


def write_report(path: str | Path, *, title: str, result: dict, confusion: torch.Tensor, confusion_fig,
                 classes: list[str], labels: dict[int, int], image_paths: dict[int, Path],
                 top5_ids: dict[int, list[int]], confidence: dict[int, float], settings: dict) -> None:
    """Writes the page. `labels`, `image_paths`, `top5_ids` and `confidence` are keyed by split index."""
    environments = indoor_outdoor.environment_labels(classes) or [""] * len(classes)
    indices = sorted(i for i in top5_ids if labels.get(i, -1) >= 0)
    conf = np.array([confidence[i] for i in indices])
    correct = np.array([top5_ids[i][0] == labels[i] for i in indices], dtype=float)
    calib = reliability(conf, correct)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='muted'>{result['images']} images, {result['images_per_second']:.1f} images/s, "
             f"{result['seconds']:.0f} s</p><div class='cards'>"]
    cards = [("top-1", f"{result['top1']:.2%}"), ("top-5", f"{result['top5']:.2%}"),
             ("calibration error (ECE)", f"{calib['ece']:.3f}")]
    if result.get("native_top1") is not None:
        cards += [("torch convs top-1 / top-5", f"{result['native_top1']:.2%} / {result['native_top5']:.2%}"),
                  ("top-1 agreement with torch convs", f"{result['agreement_with_native']:.2%}")]
    parts += [f"<div class='card'>{html.escape(k)}<b>{v}</b></div>" for k, v in cards]
    parts.append("</div>")

    per_class = sorted(((name, acc, environments[i], int(confusion[i].sum()))
                        for i, (name, acc) in enumerate(result["per_class_top1"].items())),
                       key=lambda row: -(row[1] if row[1] is not None else -1))
    parts.append("<h2>Per-class top-1 accuracy</h2><div class='cols'><table>"
                 "<tr><th>class</th><th></th><th>top-1</th><th>images</th></tr>")
    for name, acc, env, n in per_class:
        width = 0 if acc is None else round(acc * 120)
        shown = "–" if acc is None else f"{acc:.0%}"
        parts.append(f"<tr><td>{html.escape(name)} <span class='muted'>{env}</span></td>"
                     f"<td><span class='bar' style='width:{width}px'></span></td><td>{shown}</td><td>{n}</td></tr>")
    parts.append("</table></div>")

    parts.append(f"<h2>Confusion matrix</h2><img class='fig' src='{_png(confusion_fig)}' alt='confusion matrix'>")

    parts.append(f"<h2>The {PAIRS} most confused pairs</h2><table>"
                 "<tr><th>true class</th><th>predicted as</th><th>images</th><th>share of the class</th>"
                 "<th>examples</th></tr>")
    for true, pred, n in confused_pairs(confusion):
        examples = [i for i in indices if labels[i] == true and top5_ids[i][0] == pred][:THUMBS]
        thumbs = "".join(_thumb(image_paths[i]) for i in examples)
        share = n / max(int(confusion[true].sum()), 1)
        parts.append(f"<tr><td>{html.escape(classes[true])}</td><td>{html.escape(classes[pred])}</td>"
                     f"<td>{n}</td><td>{share:.0%}</td><td>{thumbs}</td></tr>")
    parts.append("</table>")

    parts.append(f"<h2>Calibration</h2><img class='fig' src='{_png(_reliability_figure(calib))}' "
                 f"alt='reliability diagram'><table><tr><th>confidence</th><th>images</th><th>mean confidence</th>"
                 f"<th>accuracy</th></tr>")
    for b, row in enumerate(calib["bins"]):
        if row["count"]:
            parts.append(f"<tr><td>{b / BINS:.1f}–{(b + 1) / BINS:.1f}</td><td>{row['count']}</td>"
                         f"<td>{row['confidence']:.3f}</td><td>{row['accuracy']:.3f}</td></tr>")
    parts.append("</table><h2>Settings</h2><table>")
    parts += [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items()]
    parts.append("</table></body></html>\n")
    text = "".join(parts)
    cli.atomic_write(path, lambda tmp: Path(tmp).write_text(text), suffix=".html")
