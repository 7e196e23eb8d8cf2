"""``report.html``: one self-contained page per run directory — every plot embedded as a base64 PNG, no external
file, no network, no JavaScript. It is built from what the run directory holds, so any command that adds a result
(``eval``, ``finetune``, ``stream``, ``attack``, ``corrupt``) can rewrite it: a section appears only when its data
exists.

The page, top to bottom: header (run kind, method, data, steps, time, throughput, devices), warnings (the
evaluation's warnings such as the collapse alarm, then every section's, then unreadable result files), the config,
then the registered sections in their ``order``: the core ones defined here — training curves (10), the evaluation
table (SSL encoder vs raw pixels, 20), per-class accuracy and the confusion matrix (30), the embedding plot (40), the
retrieval grid (50) — and the capabilities' — stream (60) and sequence study (70) from
``streams/stream_report.py``, fine-tuning (80) from ``finetune/finetune_report.py``, robustness (90) from
``robustness/robustness_report.py``.

How a capability adds to the page: its report module subclasses :class:`~selfsup.report.sections.Section` (``id``,
``title``, ``order``, ``applies(run)``, ``render(run)``, optionally ``warnings(run)``, ``header(run)`` and the JSON
``files`` it reads), builds it from the helpers of :mod:`selfsup.report.html_parts`, and calls
:func:`~selfsup.report.sections.register_section` when imported. This module imports no capability: the
registration is guaranteed by ``selfsup/api.py`` (imported by ``selfsup/__init__.py``, so by every use of selfsup),
which imports each capability's report module explicitly, one line each."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_write_text
from .figures import subplots
from ..number_format import pct
from .html_parts import escape, figure, figure_png, file_figure, grid, join_parts, section, table
from ..rundir import RunDir, read_metrics
from .results import budget_sentence, results_table, run_warnings
from .sections import HeaderFacts, RunContents, Section, by_rank, register_section, registered_sections

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


def write_html_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) from what the run directory holds; returns its path."""
    run_dir = Path(run_dir)
    out = RunDir(run_dir).report_html
    atomic_write_text(out, render_html_report(run_dir))
    return out


def render_html_report(run_dir: str | Path) -> str:
    """The page's HTML text (see :func:`write_html_report`)."""
    sections = registered_sections()
    run = read_run(Path(run_dir), sections)
    applying = [s for s in sections if s.applies(run)]
    body = [_header(run, applying), _warnings_box(run, applying), _config(run)]
    body += [section(s.title, s.render(run), sid=s.id) for s in applying]
    title = f"selfsup run {run.path.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n" + "\n".join(b for b in body if b)
            + "\n</main>\n</body>\n</html>\n")


# ------------------------------------------------------------------------------------------------- reading the run
def _read_json(run: RunContents, name: str) -> dict | None:
    p = run.path / name
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        run.unreadable.append(f"{name} could not be read ({type(e).__name__}); its section is left out")
        return None
    if not isinstance(data, dict):
        run.unreadable.append(f"{name} does not hold a JSON object; its section is left out")
        return None
    return data


def read_run(path: Path, sections: list[Section]) -> RunContents:
    """What ``path`` holds: the core files, then the JSON files of ``sections`` in page order."""
    run = RunContents(path)
    cfg = path / RunDir.CONFIG
    if cfg.exists():
        run.config_text = cfg.read_text()
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.unreadable.append("config.yaml could not be parsed")
    run.results = _read_json(run, RunDir.EVAL)
    run.train = (run.results or {}).get("train") or _read_json(run, RunDir.TRAIN_SUMMARY)
    try:
        run.metrics = read_metrics(RunDir(path))
    except (OSError, json.JSONDecodeError):
        run.unreadable.append("metrics.jsonl could not be read; no training curves")
    for pattern in (p for s in sections for p in s.files):
        names = [p.name for p in sorted(path.glob(pattern))] if "*" in pattern else [pattern]
        for name in names:
            data = _read_json(run, name)
            if data is not None:
                run.files[name] = data
    return run


# -------------------------------------------------------------------------------------------------------- header
def _header_parts(run: RunContents, applying: list[Section]) -> list[HeaderFacts]:
    return [h for s in by_rank(applying) if (h := s.header(run)) is not None]


def _header(run: RunContents, applying: list[Section]) -> str:
    r, tr, cfg = run.results or {}, run.train or {}, run.config
    parts = _header_parts(run, applying)
    method = r.get("method") or (cfg.get("method") or {}).get("name")
    data = r.get("data") or (cfg.get("data") or {}).get("source")
    kinds = [h.kind for h in parts if h.kind]
    facts: list[tuple[str, str]] = [("run kind", kinds[-1] if kinds else "pre-training")]
    trained = [h.trained for h in parts if h.trained]  # the config's SSL method is not what such a run trains
    facts += trained or ([("method", method)] if method else [])
    if data:
        facts.append(("data", data))
    facts += [f for h in parts for f in h.facts]
    if tr:
        facts += [("steps", str(tr.get("steps", "?"))), ("training time", f"{tr.get('train_seconds', 0):.0f} s"),
                  ("img/s", f"{tr.get('images_per_second', 0):.0f}"),
                  ("devices", f"{tr.get('devices', 1)} × {tr.get('device', 'cpu')}"
                              + (f", {tr['threads']} threads" if tr.get("threads") else ""))]
        if tr.get("budget"):
            facts.append(("time budget", budget_sentence(tr["budget"])))
    if r.get("eval_seconds") is not None:
        facts.append(("evaluation time", f"{r['eval_seconds']:.0f} s"))
    facts.append(("report written", time.strftime("%Y-%m-%d %H:%M")))
    cards = "".join(f"<div class=\"fact\"><b>{escape(k)}</b>{escape(v)}</div>" for k, v in facts)
    return (f"<header><h1>selfsup run <code>{escape(run.path.name)}</code></h1>"
            f"<p class=\"sub\">{escape(run.path.resolve())}</p><div class=\"facts\">{cards}</div></header>")


# ------------------------------------------------------------------------------------------------------ warnings
def report_warnings(run_dir: str | Path) -> list[str]:
    """Every warning the report shows at its top, in order (see :func:`write_html_report`)."""
    sections = registered_sections()
    run = read_run(Path(run_dir), sections)
    return _warnings(run, [s for s in sections if s.applies(run)])


def _warnings(run: RunContents, applying: list[Section]) -> list[str]:
    ws = list(run_warnings(run.results)) if run.results else []
    for s in by_rank(applying):
        ws += s.warnings(run)
    return ws + run.unreadable


def _warnings_box(run: RunContents, applying: list[Section]) -> str:
    ws = _warnings(run, applying)
    if not ws:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in ws)
    return (f"<section class=\"warnings\" id=\"warnings\"><h2>⚠ Warnings ({len(ws)})</h2><ul>{items}</ul>"
            f"</section>")


# -------------------------------------------------------------------------------------------------------- config
def _config(run: RunContents) -> str:
    if run.config_text is None:
        return ""
    return section("Configuration", "<details><summary>config.yaml (resolved)</summary>"
                   f"<pre>{escape(run.config_text)}</pre></details>", sid="config")


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
    return figure_png(fig)


def _trains_ssl_method(run: RunContents) -> bool:
    """False for a run that trains something else than the config's SSL method (a section's header says what)."""
    applying = [s for s in registered_sections() if s.applies(run)]
    return not any(h.trained for h in _header_parts(run, applying))


def _training(run: RunContents) -> str:
    figs = []
    if (run.path / RunDir.LOSS_PLOT).is_file():
        figs.append(file_figure(run.path, RunDir.LOSS_PLOT, "training loss"))
    else:
        data = _metric_plot(run.metrics, "loss", "training loss", "training loss")
        figs.append(figure(data, "training loss") if data else "")
    lr = _metric_plot(run.metrics, "lr", "learning rate", "learning rate schedule")
    if lr:
        figs.append(figure(lr, "learning rate"))
    if (run.path / RunDir.KNN_PLOT).is_file():
        figs.append(file_figure(run.path, RunDir.KNN_PLOT, "kNN accuracy on the validation split during training"))
    elif _trains_ssl_method(run):
        data = _metric_plot(run.metrics, "knn_val", "kNN accuracy (validation split)", "kNN monitor")
        figs.append(figure(data, "kNN accuracy on the validation split during training") if data else "")
    return grid(figs)


# ---------------------------------------------------------------------------------------------------- evaluation
def _evaluation(run: RunContents) -> str:
    r = run.results
    if not r:
        return ""
    try:
        rows = results_table(r)
    except (KeyError, TypeError, ValueError):
        return "<p class=\"note\">eval.json lacks the suite's diagnostics (re-run <code>selfsup eval</code>).</p>"
    rows = [list(row) for row in rows if not (row[1] == "–" and row[2] == "–")]
    bad = ["bad" if row[1].startswith("COLLAPSED") else "" for row in rows]
    parts = [table(["metric", "SSL encoder", "raw pixels"], rows, cls="results", row_classes=bad)]
    s = r.get("ssl")
    if s:
        parts.append(f"<p class=\"note\">kNN: cosine on l2-normalised features, votes weighted exp(s/T), "
                     f"k={escape(s.get('knn_k'))} chosen on the validation split; linear probe: standardised "
                     f"features, L-BFGS logistic regression, L2={escape(s.get('linear_l2'))} chosen on the validation "
                     f"split, refit on all of train; the test set is used once.</p>")
    else:
        parts.append("<p class=\"note\">No labels: kNN and linear probe are not computed.</p>")
    if r.get("note"):
        parts.append(f"<p class=\"note\">{escape(r['note'])}</p>")
    return join_parts(*parts)


def _class_name(classes: list[str], i: int) -> str:
    return classes[i] if i < len(classes) else str(i)


def _classes(run: RunContents) -> list[str]:
    r = run.results or {}
    return list(r.get("classes") or (r.get("ssl") or {}).get("classes") or [])


def _bar(a) -> str:
    width = 0 if a is None else 200 * max(0.0, min(1.0, a))
    return f"<td class=\"text\"><span class=\"bar\" style=\"width:{width:.0f}px\"></span></td>"


def _per_class(run: RunContents) -> str:
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
        rows = "".join(f"<tr><td>{escape(_class_name(classes, i))}</td><td>{pct(a, 1)}</td>{_bar(a)}"
                       + (f"<td>{pct(raw[i], 1)}</td>" if raw else "") + "</tr>" for i, a in enumerate(per))
        parts.append("<h3>Per-class accuracy (linear probe, test)</h3><table class=\"per-class\"><thead><tr>"
                     "<th>class</th><th>SSL encoder</th><th></th>" + ("<th>raw pixels</th>" if raw else "")
                     + f"</tr></thead><tbody>{rows}</tbody></table>"
                     + "<p class=\"note\">–: the class does not occur in the test set.</p>" * (None in per))
    if conf is not None:
        parts.append("<h3>Confusion matrix of the linear probe (rows: true class, columns: predicted; shade: share "
                     "of the row)</h3>")
        parts.append(_confusion(np.asarray(conf, dtype=float), classes))
    return join_parts(*parts)


def _confusion(m: np.ndarray, classes: list[str]) -> str:
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        return "<p class=\"note\">confusion matrix in eval.json is not square; not shown.</p>"
    share = m / np.maximum(m.sum(1, keepdims=True), 1e-12)
    n = m.shape[0]
    if n > MAX_TABLE_CLASSES:
        fig, ax = subplots(figsize=(7, 6))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(im, ax=ax, label="share of the true class")
        return figure(figure_png(fig), f"confusion matrix ({n} classes)")
    names = [_class_name(classes, i) for i in range(n)]
    head = "<th>true \\ predicted</th>" + "".join(f"<th title=\"{escape(c)}\">{escape(c[:10])}</th>" for c in names)
    body = []
    for i in range(n):
        cells = []
        for j in range(n):
            a = share[i, j]
            color = "#1f2328" if a < 0.55 else "#fff"
            hue = "47,129,247" if i == j else "207,34,46"
            cells.append(f"<td style=\"background:rgba({hue},{a:.2f});color:{color}\">{_count(m[i, j])}</td>")
        body.append(f"<tr><th>{escape(names[i])}</th>{''.join(cells)}</tr>")
    return f"<table class=\"confusion\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _count(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


# ------------------------------------------------------------------------------------------------- core sections
class _CoreSection(Section):
    """A core section: its body from one function of the run."""

    def __init__(self, sid: str, title: str, order: int, body):
        self.id, self.title, self.order, self._body = sid, title, order, body

    def render(self, run: RunContents) -> str:
        return self._body(run)


def _embedding(run: RunContents) -> str:
    return file_figure(run.path, RunDir.EMBEDDING_PLOT, "2-D projection of the test features, coloured by class")


def _retrieval(run: RunContents) -> str:
    return file_figure(run.path, RunDir.RETRIEVAL_PLOT, "seeded test queries (left) and their nearest test "
                       "neighbours by cosine similarity of the features")


register_section(_CoreSection("training", "Training curves", 10, _training))
register_section(_CoreSection("evaluation", "Evaluation", 20, _evaluation))
register_section(_CoreSection("per-class", "Per-class results", 30, _per_class))
register_section(_CoreSection("embedding", "Embedding of the test features", 40, _embedding))
register_section(_CoreSection("retrieval", "Retrieval: nearest test neighbours", 50, _retrieval))
