"""``report.html``: one self-contained page per run directory — every plot embedded as a base64 PNG, no external
file, no network, no JavaScript. It is built from what the run directory holds, so any command that adds a result
(``eval``, ``finetune``, ``stream``, ``attack``, ``corrupt``) can rewrite it: a section appears only when its data
exists.

Sections, top to bottom: header (method, data, steps, time, throughput, devices), warnings (collapse alarm, the
evaluation's warnings, attack libraries' gradient-masking warnings, rejected stream chunks, unreadable result
files), the config, training curves, the evaluation table (SSL encoder vs raw pixels), per-class accuracy and the
confusion matrix, the embedding plot, the retrieval grid, stream, sequence study, fine-tuning, robustness."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_write_text
from ..errors import TrainingError
from ..rundir import (RunDir, read_eval, read_finetune_record, read_manifest, read_metrics, read_report_record,
                      read_stream_record, read_study_record, read_train_summary)
from .figures import subplots
from .results import results_table, run_warnings
from ..streams.stream_report import seeds_table, sequence_table

MAX_TABLE_CLASSES = 30  # a larger confusion matrix is drawn as a heat map instead of a table

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       background: #f6f8fa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; min-height: 100vh;
       box-shadow: 0 0 12px rgba(0, 0, 0, .06); }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 20px 0 8px; }
.sub { color: #57606a; margin: 0 0 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 8px; margin: 12px 0; }
.fact { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 10px; }
.fact b { display: block; font-size: 12px; color: #57606a; font-weight: 600; text-transform: uppercase;
          letter-spacing: .03em; }
.warnings { background: #fff1f0; border: 1px solid #ff8182; border-left: 6px solid #cf222e; border-radius: 6px;
            padding: 8px 16px; margin: 16px 0; }
.warnings h2 { border: 0; margin: 4px 0; color: #cf222e; font-size: 18px; }
.warnings li { margin: 4px 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child, td.text { text-align: left; }
tr.bad td { color: #cf222e; font-weight: 600; }
table.confusion td, table.confusion th { padding: 2px 6px; font-size: 13px; text-align: center; }
.bar { display: inline-block; height: 10px; background: #2f81f7; border-radius: 2px; vertical-align: middle; }
figure { margin: 12px 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 4px 16px; }
.figs figure { margin: 6px 0; }
.figs figure img { width: 100%; }
figcaption { color: #57606a; font-size: 13px; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; overflow-x: auto;
      font-size: 13px; }
.note { color: #57606a; font-size: 13px; }
"""


@dataclass
class _Run:
    """What a run directory holds, read once."""
    path: Path
    config_text: str | None = None
    config: dict = field(default_factory=dict)
    results: dict | None = None
    train: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    finetune: dict | None = None
    manifest: dict | None = None
    stream: dict | None = None
    sequence: dict | None = None
    robustness: dict[str, dict] = field(default_factory=dict)
    corruptions: dict[str, dict] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def write_html_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) from what the run directory holds; returns its path."""
    run_dir = Path(run_dir)
    out = RunDir(run_dir).report_html
    atomic_write_text(out, render_html_report(run_dir))
    return out


def render_html_report(run_dir: str | Path) -> str:
    """The page's HTML text (see :func:`write_html_report`)."""
    run = _read_run(Path(run_dir))
    body = [_header(run), _warnings_box(run), _config(run), _training(run), _evaluation(run), _per_class(run),
            _section("Embedding of the test features",
                     _file_figure(run, RunDir.EMBEDDING_PLOT, "2-D projection of the test features, coloured by class"),
                     sid="embedding"),
            _section("Retrieval: nearest test neighbours",
                     _file_figure(run, RunDir.RETRIEVAL_PLOT, "seeded test queries (left) and their nearest test "
                                  "neighbours by cosine similarity of the features"), sid="retrieval"),
            _stream(run), _sequence(run), _finetune(run), _robustness(run)]
    title = f"selfsup run {run.path.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_e(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n" + "\n".join(b for b in body if b)
            + "\n</main>\n</body>\n</html>\n")


# ------------------------------------------------------------------------------------------------- reading the run
def _read_json(run: _Run, p: Path, read: Callable[[], dict]) -> dict | None:
    name = p.name
    if not p.exists():
        return None
    try:
        data = read()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TrainingError) as e:  # TrainingError: a corrupt manifest
        run.unreadable.append(f"{name} could not be read ({type(e).__name__}); its section is left out")
        return None
    if not isinstance(data, dict):
        run.unreadable.append(f"{name} does not hold a JSON object; its section is left out")
        return None
    return data


def _read_run(path: Path) -> _Run:
    run, rd = _Run(path), RunDir(path)
    cfg = rd.config
    if cfg.exists():
        run.config_text = cfg.read_text()
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.unreadable.append(f"{RunDir.CONFIG} could not be parsed")
    run.results = _read_json(run, rd.eval, lambda: read_eval(rd))
    run.train = (run.results or {}).get("train") or _read_json(run, rd.train_summary, lambda: read_train_summary(rd))
    try:
        run.metrics = read_metrics(rd)
    except (OSError, json.JSONDecodeError):
        run.unreadable.append(f"{RunDir.METRICS} could not be read; no training curves")
    run.finetune = _read_json(run, rd.finetune, lambda: read_finetune_record(rd))
    run.manifest = _read_json(run, rd.manifest, lambda: read_manifest(rd))
    run.stream = _read_json(run, rd.stream_record, lambda: read_stream_record(rd))
    run.sequence = _read_json(run, rd.study_record, lambda: read_study_record(rd))
    for kind, store in ((RunDir.ROBUSTNESS, run.robustness), (RunDir.CORRUPTIONS, run.corruptions)):
        for p in sorted(path.glob(f"{kind}_*.json")):
            data = _read_json(run, p, lambda: read_report_record(p))
            if data is not None:
                store[p.stem[len(kind) + 1:]] = data
    return run


# ------------------------------------------------------------------------------------------------------- helpers
def _e(x) -> str:
    return html.escape(str(x))


def _pct(v, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(data: bytes, caption: str) -> str:
    return (f"<figure><img src=\"{_png_data_uri(data)}\" alt=\"{_e(caption)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _file_figure(run: _Run, name: str, caption: str | None = None) -> str:
    p = run.path / name
    return _figure(p.read_bytes(), caption or name) if p.is_file() else ""


def _grid(figures: list[str]) -> str:
    """Small figures side by side (as many per row as fit)."""
    figures = [f for f in figures if f]
    return f"<div class=\"figs\">{''.join(figures)}</div>" if figures else ""


def _fig_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _attr(name: str, value: str) -> str:
    return f' {name}="{_e(value)}"' if value else ""


def _numeric(cell: str) -> bool:
    """Numbers (and the "–" of a missing one) are right-aligned, words left-aligned."""
    return bool(re.match(r"^[-+−–]?\d|^[–—]?$", cell.strip()))


def _table(header: list[str], rows: list[list[str]], cls: str = "", row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f"<tr{_attr('class', row_classes[i] if row_classes else '')}>"
                   + "".join(f"<td{_attr('class', '' if _numeric(c) else 'text')}>{_e(c)}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table{_attr('class', cls)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *parts: str, sid: str = "") -> str:
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return f"<section{_attr('id', sid)}><h2>{_e(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def _class_name(classes: list[str], i: int) -> str:
    return classes[i] if i < len(classes) else str(i)


# -------------------------------------------------------------------------------------------------------- header
def _kind(run: _Run) -> str:
    if run.sequence is not None:
        return "sequence study"
    if run.manifest is not None:
        return "stream"
    if run.finetune is not None:
        return "fine-tuning"
    return "pre-training"


def _header(run: _Run) -> str:
    r, tr, cfg = run.results or {}, run.train or {}, run.config
    method = r.get("method") or (cfg.get("method") or {}).get("name")
    data = r.get("data") or (cfg.get("data") or {}).get("source")
    facts: list[tuple[str, str]] = [("run kind", _kind(run))]
    if run.finetune is not None:  # the config's SSL method is not what a fine-tuning run trains
        method = None
        facts.append(("encoder", "from " + Path(run.finetune["init"]).name if run.finetune.get("init")
                      else "random init"))
    if method:
        facts.append(("method", method))
    if data:
        facts.append(("data", data))
    if run.finetune is not None:
        f = run.finetune
        facts.append(("loss", f.get("loss", "?")))
        if f.get("noise") not in (None, "none"):
            facts.append(("label noise", f"{f['noise']} {_pct(f.get('noise_rate'), 0)}"))
        if f.get("train_seconds") is not None:
            facts.append(("training time", f"{f['train_seconds']:.0f} s"))
        if f.get("images_per_second"):
            facts.append(("img/s", f"{f['images_per_second']:.0f}"))
    summary = (run.stream or {}).get("summary")
    if summary:
        facts += [("chunks", str(summary.get("chunks", 0))), ("steps", str(summary.get("steps", 0))),
                  ("training time", f"{summary.get('train_seconds', 0):.0f} s")]
    if tr:
        facts += [("steps", str(tr.get("steps", "?"))), ("training time", f"{tr.get('train_seconds', 0):.0f} s"),
                  ("img/s", f"{tr.get('images_per_second', 0):.0f}"),
                  ("devices", f"{tr.get('devices', 1)} × {tr.get('device', 'cpu')}"
                              + (f", {tr['threads']} threads" if tr.get("threads") else ""))]
    if r.get("eval_seconds") is not None:
        facts.append(("evaluation time", f"{r['eval_seconds']:.0f} s"))
    facts.append(("report written", time.strftime("%Y-%m-%d %H:%M")))
    cards = "".join(f"<div class=\"fact\"><b>{_e(k)}</b>{_e(v)}</div>" for k, v in facts)
    return (f"<header><h1>selfsup run <code>{_e(run.path.name)}</code></h1>"
            f"<p class=\"sub\">{_e(run.path.resolve())}</p><div class=\"facts\">{cards}</div></header>")


# ------------------------------------------------------------------------------------------------------ warnings
def report_warnings(run_dir: str | Path) -> list[str]:
    """Every warning the report shows at its top, in order (see :func:`write_html_report`)."""
    return _warnings(_read_run(Path(run_dir)))


def _warnings(run: _Run) -> list[str]:
    ws = list(run_warnings(run.results)) if run.results else []
    for clf, rep in run.robustness.items():
        for eps, per in (rep.get("eps") or {}).items():
            for attack, v in per.items():
                for w in v.get("library_warnings") or []:
                    ws.append(f"robustness ({clf} classifier, eps {eps}, {attack}): {w}")
    for name, why in ((run.manifest or {}).get("rejected") or {}).items():
        ws.append(f"stream chunk {name} rejected (not trained): {why.get('reason', '?')}")
    for c in (run.manifest or {}).get("chunks", []):
        if c.get("skipped"):
            ws.append(f"stream chunk {c.get('name')}: skipped {c['skipped']}")
    return ws + run.unreadable


def _warnings_box(run: _Run) -> str:
    ws = _warnings(run)
    if not ws:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in ws)
    return (f"<section class=\"warnings\" id=\"warnings\"><h2>⚠ Warnings ({len(ws)})</h2><ul>{items}</ul>"
            f"</section>")


# -------------------------------------------------------------------------------------------------------- config
def _config(run: _Run) -> str:
    if run.config_text is None:
        return ""
    return _section("Configuration", f"<details><summary>{RunDir.CONFIG} (resolved)</summary>"
                    f"<pre>{_e(run.config_text)}</pre></details>", sid="config")


# ----------------------------------------------------------------------------------------------- training curves
def _x_axis(rows: list[dict]) -> tuple[list[float], str]:
    """Epoch for a single training run; a running step across chunks for a stream's rows (tagged ``chunk``)."""
    if any("chunk" in r for r in rows):
        offsets, last = {}, {}
        for r in rows:
            last[r.get("chunk", 0)] = max(last.get(r.get("chunk", 0), 0), r.get("step", 0))
        total = 0
        for c in sorted(last):
            offsets[c] = total
            total += last[c]
        return [offsets[r.get("chunk", 0)] + r.get("step", 0) for r in rows], "step (all chunks)"
    if all("epoch" in r for r in rows):
        return [r["epoch"] for r in rows], "epoch"
    return [r.get("step", i) for i, r in enumerate(rows)], "step"


def _metric_plot(rows: list[dict], key: str, ylabel: str, title: str, log: bool = False) -> bytes | None:
    rows = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not rows:
        return None
    x, xlabel = _x_axis(rows)
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(x, [r[key] for r in rows], marker="o" if len(rows) < 30 else None)
    if log and all(r[key] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _fig_bytes(fig)


def _training(run: _Run) -> str:
    figs = []
    if RunDir(run.path).plot(RunDir.LOSS_PLOT).is_file():
        figs.append(_file_figure(run, RunDir.LOSS_PLOT, "training loss"))
    else:
        data = _metric_plot(run.metrics, "loss", "training loss", "training loss")
        figs.append(_figure(data, "training loss") if data else "")
    lr = _metric_plot(run.metrics, "lr", "learning rate", "learning rate schedule")
    if lr:
        figs.append(_figure(lr, "learning rate"))
    if RunDir(run.path).plot(RunDir.KNN_PLOT).is_file():
        figs.append(_file_figure(run, RunDir.KNN_PLOT, "kNN accuracy on the validation split during training"))
    elif run.finetune is None:
        data = _metric_plot(run.metrics, "knn_val", "kNN accuracy (validation split)", "kNN monitor")
        figs.append(_figure(data, "kNN accuracy on the validation split during training") if data else "")
    return _section("Training curves", _grid(figs), sid="training")


# ---------------------------------------------------------------------------------------------------- evaluation
def _evaluation(run: _Run) -> str:
    r = run.results
    if not r:
        return ""
    try:
        rows = results_table(r)
    except (KeyError, TypeError, ValueError):
        return _section("Evaluation", f"<p class=\"note\">{RunDir.EVAL} lacks the suite's diagnostics (re-run "
                        "<code>selfsup eval</code>).</p>", sid="evaluation")
    rows = [list(row) for row in rows if not (row[1] == "–" and row[2] == "–")]
    bad = ["bad" if row[1].startswith("COLLAPSED") else "" for row in rows]
    parts = [_table(["metric", "SSL encoder", "raw pixels"], rows, cls="results", row_classes=bad)]
    s = r.get("ssl")
    if s:
        parts.append(f"<p class=\"note\">kNN: cosine on l2-normalised features, votes weighted exp(s/T), "
                     f"k={_e(s.get('knn_k'))} chosen on the validation split; linear probe: standardised features, "
                     f"L-BFGS logistic regression, L2={_e(s.get('linear_l2'))} chosen on the validation split, refit "
                     f"on all of train; the test set is used once.</p>")
    else:
        parts.append("<p class=\"note\">No labels: kNN and linear probe are not computed.</p>")
    if r.get("note"):
        parts.append(f"<p class=\"note\">{_e(r['note'])}</p>")
    return _section("Evaluation", *parts, sid="evaluation")


def _classes(run: _Run) -> list[str]:
    r = run.results or {}
    return list(r.get("classes") or (r.get("ssl") or {}).get("classes") or [])


def _bar(a) -> str:
    width = 0 if a is None else 200 * max(0.0, min(1.0, a))
    return f"<td class=\"text\"><span class=\"bar\" style=\"width:{width:.0f}px\"></span></td>"


def _per_class(run: _Run) -> str:
    r = run.results or {}
    s = r.get("ssl") or {}
    per, conf = s.get("per_class"), s.get("confusion")
    if per is None and conf is None:
        return ""
    classes = _classes(run)
    parts = []
    if per is not None:
        raw = (r.get("raw_pixels") or {}).get("per_class")
        raw = raw if raw is not None and len(raw) == len(per) else None
        rows = "".join(f"<tr><td>{_e(_class_name(classes, i))}</td><td>{_pct(a, 1)}</td>{_bar(a)}"
                       + (f"<td>{_pct(raw[i], 1)}</td>" if raw else "") + "</tr>" for i, a in enumerate(per))
        parts.append("<h3>Per-class accuracy (linear probe, test)</h3><table class=\"per-class\"><thead><tr>"
                     "<th>class</th><th>SSL encoder</th><th></th>" + ("<th>raw pixels</th>" if raw else "")
                     + f"</tr></thead><tbody>{rows}</tbody></table>"
                     + "<p class=\"note\">–: the class does not occur in the test set.</p>" * (None in per))
    if conf is not None:
        parts.append("<h3>Confusion matrix of the linear probe (rows: true class, columns: predicted; shade: share "
                     "of the row)</h3>")
        parts.append(_confusion(np.asarray(conf, dtype=float), classes))
    return _section("Per-class results", *parts, sid="per-class")


def _confusion(m: np.ndarray, classes: list[str]) -> str:
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        return f"<p class=\"note\">confusion matrix in {RunDir.EVAL} is not square; not shown.</p>"
    share = m / np.maximum(m.sum(1, keepdims=True), 1e-12)
    n = m.shape[0]
    if n > MAX_TABLE_CLASSES:
        fig, ax = subplots(figsize=(7, 6))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(im, ax=ax, label="share of the true class")
        return _figure(_fig_bytes(fig), f"confusion matrix ({n} classes)")
    names = [_class_name(classes, i) for i in range(n)]
    head = "<th>true \\ predicted</th>" + "".join(f"<th title=\"{_e(c)}\">{_e(c[:10])}</th>" for c in names)
    body = []
    for i in range(n):
        cells = []
        for j in range(n):
            a = share[i, j]
            color = "#1f2328" if a < 0.55 else "#fff"
            hue = "47,129,247" if i == j else "207,34,46"
            cells.append(f"<td style=\"background:rgba({hue},{a:.2f});color:{color}\">{_count(m[i, j])}</td>")
        body.append(f"<tr><th>{_e(names[i])}</th>{''.join(cells)}</tr>")
    return f"<table class=\"confusion\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _count(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


# -------------------------------------------------------------------------------------------------------- stream
def _metrics_table(summary: dict) -> str:
    rows = []
    for probe in ("linear", "knn"):
        m = summary.get(f"{probe}_metrics")
        if m:
            rows.append([probe, *[("–" if m.get(k) is None else f"{100 * m[k]:.2f}")
                                  for k in ("average_accuracy", "forgetting", "bwt", "fwt")]])
    if not rows:
        return ""
    return ("<h3>Continual-learning metrics (points)</h3>"
            + _table(["probe", "average task accuracy", "forgetting", "BWT", "FWT"], rows, cls="forgetting"))


def _stream(run: _Run) -> str:
    man = run.manifest
    if man is None:
        return ""
    parts = []
    chunks = man.get("chunks", [])
    if chunks:
        init = man.get("init_eval") or {}
        rows = []
        if init:
            rows.append(["0 (random init)", "", "", "", "", _pct(init.get("linear")), _pct(init.get("knn")), ""])
        for i, c in enumerate(chunks):
            ev = c.get("eval") or {}
            rows.append([str(i + 1), str(c.get("name", "")), str(c.get("images", "")), str(c.get("steps", "")),
                         f"{c.get('train_seconds', 0):.1f}", _pct(ev.get("linear")), _pct(ev.get("knn")),
                         f"{c.get('retained_bytes', 0) / 1e6:.2f}"])
        parts.append("<h3>Chunks (accuracy on the full test set after each)</h3>" + _table(
            ["chunk", "name", "images", "steps", "train s", "linear probe", "kNN", "retained MB"], rows,
            cls="chunks"))
    rejected = man.get("rejected") or {}
    if rejected:
        parts.append("<h3>Rejected chunks</h3>" + _table(
            ["chunk", "reason"], [[n, str(v.get("reason", ""))] for n, v in rejected.items()], cls="rejected"))
    parts.append(_metrics_table((run.stream or {}).get("summary") or {}))
    parts.append(_file_figure(run, RunDir.CHUNK_ACCURACY_PLOT, "accuracy after each chunk"))
    parts.append(_grid([_file_figure(run, p.name, f"per-task accuracy matrix, {p.stem[2:]}")
                        for p in sorted(run.path.glob(RunDir.strategy_matrix_plot_name("*")))]))
    return _section("Stream", *parts, sid="stream")


def _markdown_table(md: str) -> str:
    """A markdown pipe table (and the lines after it) as HTML."""
    lines = md.splitlines()
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= {"-", ":"} for c in r)]
    rest = [ln for ln in lines if ln.strip() and not ln.startswith("|")]
    out = _table(rows[0], rows[1:], cls="sequence") if rows else ""
    return out + "".join(f"<p class=\"note\">{_e(ln)}</p>" for ln in rest)


def _sequence(run: _Run) -> str:
    if run.sequence is None:
        return ""
    if "aggregate" in run.sequence:  # selfsup sequence --seeds N: the aggregate over the seeds
        parts = [_markdown_table(seeds_table(run.sequence))]
        parts += [_file_figure(run, p.name, f"{p.stem[8:]}: linear probe on the tasks seen so far and CKA to the "
                               f"previous chunk's encoder, mean ± std over the seeds")
                  for p in sorted(run.path.glob(RunDir.seed_summary_plot_name("*")))]
        parts.append(f"<p class=\"note\">Each seed's own study: <code>seed&lt;S&gt;/{RunDir.REPORT_HTML}</code>.</p>")
        return _section("Sequence study", *parts, sid="sequence")
    parts = [_markdown_table(sequence_table(run.sequence))]
    for kind in run.sequence:
        figs = [_file_figure(run, f"{kind}/{RunDir.CHUNK_ACCURACY_PLOT}", f"{kind}: accuracy after each chunk"),
                _grid([_file_figure(run, f"{kind}/{p.name}", f"{kind}: per-task accuracy matrix, {p.stem[2:]}")
                       for p in sorted((run.path / kind).glob(RunDir.strategy_matrix_plot_name("*")))])]
        if any(figs):
            parts.append(f"<h3>{_e(kind)} incremental</h3>" + "".join(figs))
    parts.append("<p class=\"note\">Each strategy's own report: <code>&lt;sequence&gt;/&lt;strategy&gt;/"
                 f"{RunDir.REPORT_HTML}</code>.</p>")
    return _section("Sequence study", *parts, sid="sequence")


# ------------------------------------------------------------------------------------------------------ finetune
def _finetune(run: _Run) -> str:
    f = run.finetune
    if f is None:
        return ""
    labels = (("actual_label_error", "actual label error (training labels)"), ("test_acc_last", "test accuracy, last epoch"),
              ("test_acc_at_best_val", "test accuracy at the best validation epoch"),
              ("test_acc_max", "best test accuracy over epochs (optimistic)"))
    rows = [[name, _pct(f[k])] for k, name in labels if f.get(k) is not None]
    if f.get("best_val_epoch") is not None:
        rows.append(["best validation epoch", f"{f['best_val_epoch']:g}"])
    if f.get("init"):
        rows.append(["encoder initialised from", str(f["init"])])
    parts = [_table(["metric", "value"], rows, cls="finetune") if rows else "",
             _grid([_file_figure(run, RunDir.CURVES_PLOT, "accuracy per epoch"),
                    _file_figure(run, RunDir.RISK_COVERAGE_PLOT, "risk-coverage (selective classification)")])]
    sel = f.get("selective") or {}
    scorers = [s for s in ("abstain", "softmax_response") if s in sel]
    if scorers:
        table_rows = [[f"{100 * cells[0]['target_coverage']:.0f} %",
                       *[v for c in cells for v in (_pct(c["test_coverage"], 1), _pct(c["selective_risk"]))]]
                      for cells in zip(*[sel[s]["table"] for s in scorers])]
        table_rows.append(["AURC (×10⁻³)", *[v for s in scorers for v in ("", f"{1000 * sel[s]['aurc']:.2f}")]])
        header = ["target coverage"] + [f"{s}: {h}" for s in scorers for h in ("test coverage", "selective risk")]
        parts.append("<h3>Selective classification (thresholds chosen on the validation split)</h3>"
                     + _table(header, table_rows, cls="selective"))
    return _section("Fine-tuning", *parts, sid="finetune")


# ---------------------------------------------------------------------------------------------------- robustness
def _robustness(run: _Run) -> str:
    parts = []
    for clf, rep in run.robustness.items():
        eps = rep.get("eps") or {}
        if not eps:
            continue
        cols = list(next(iter(eps.values())).keys())
        rows = [[e, *[_pct(per.get(c, {}).get("accuracy")) + (" ⚠" if per.get(c, {}).get("library_warnings") else "")
                      for c in cols]] for e, per in eps.items()]
        parts.append(f"<h3>Adversarial attacks: {_e(clf)} classifier, {_e(rep.get('n', '?'))} test images, clean "
                     f"accuracy {_pct(rep.get('clean'))}</h3>"
                     + _table(["L∞ eps", *cols], rows, cls=f"robustness robustness-{clf}")
                     + ("<p class=\"note\">⚠: the attack library warned (see the warnings at the top).</p>"
                        if any("⚠" in c for r in rows for c in r) else ""))
    for clf, rep in run.corruptions.items():
        per = rep.get("corruptions") or {}
        if not per:
            continue
        sev = sorted({s for v in per.values() for s in v}, key=lambda s: int(s) if s.isdigit() else s)
        rows = [[name, *[_pct(v.get(s), 1) for s in sev], _pct(sum(v.values()) / len(v), 1) if v else "–"]
                for name, v in per.items()]
        parts.append(f"<h3>Common corruptions: {_e(clf)} classifier, {_e(rep.get('n', '?'))} test images, clean "
                     f"{_pct(rep.get('clean'))}, mean over corruptions and severities "
                     f"{_pct(rep.get('mean_corruption_accuracy'))}</h3>"
                     + _table(["corruption", *[f"severity {s}" for s in sev], "mean"], rows,
                              cls=f"corruptions corruptions-{clf}"))
    return _section("Robustness", *parts, sid="robustness")
