"""report.html: one self-contained page per run — the numbers are eval.json's, warnings come first, sections appear
only with their data, nothing is loaded from outside the file, and a real browser (headless Chromium) decodes every
image without a console message. Also the retrieval grid's neighbour search and borders."""
import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from selfsup.cli import app
from selfsup.report.figures import subplots
from selfsup.report.html import render_html_report, write_html_report
from selfsup.report.results import EvaluatedTestSet
from selfsup.report.sections import Section, register_section, registered_sections, unregister_section
from selfsup.report.retrieval import DIFFERENT, SAME, nearest_neighbours, pick_queries, plot_retrieval

from .helpers import tiny_cfg

CLASSES = ["cat", "dog", "owl"]
PER_CLASS = [0.9, 0.55, 0.725]
CONFUSION = [[18, 1, 1], [6, 11, 3], [0, 11, 29]]
WARNING = "COLLAPSE ALARM (complete): the features barely vary"


# ------------------------------------------------------------------------------------------------ a hand-made run
class _Tables(HTMLParser):
    """Every <table>'s rows as lists of cell texts, keyed by the table's class attribute."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    p = _Tables()
    p.feed(page)
    return p.tables


def _png(path: Path, w: float = 3, h: float = 2) -> bytes:
    fig, ax = subplots(figsize=(w, h))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path, dpi=50)
    return path.read_bytes()


def _results(labelled: bool = True) -> dict:
    r = {"run": "x", "method": "simclr", "data": "npz", "rankme": 12.5, "collapse_std": 0.01,
         "collapse_std_healthy": 0.125, "alignment": 0.3, "uniformity": -1.2, "eval_seconds": 4.0,
         "collapse": {"n": 60, "dim": 8, "var_ratio": 2e-5, "effective_rank": 1.1, "verdict": "complete",
                      "collapsed": True, "message": "the features barely vary"},
         "warnings": [WARNING],
         "train": {"steps": 40, "train_seconds": 12.0, "images_per_second": 321.0, "devices": 2, "device": "cpu",
                   "threads": 1}}
    if labelled:
        r["classes"] = CLASSES
        r["ssl"] = {"knn_k": 5, "knn_test": 0.61234, "linear_test": 0.73456, "linear_l2": 0.001,
                    "per_class": PER_CLASS, "confusion": CONFUSION}
        r["raw_pixels"] = {"knn_test": 0.5, "linear_test": 0.52111, "per_class": [0.5, 0.25, None]}
    return r


@pytest.fixture()
def run_dir(tmp_path):
    d = tmp_path / "handmade"
    d.mkdir()
    (d / "config.yaml").write_text("name: handmade\nmethod: {name: simclr}\ndata: {source: npz}\n")
    (d / "eval.json").write_text(json.dumps(_results()))
    rows = [{"step": s, "epoch": s / 10, "loss": 5 - s / 10, "lr": 0.1 / s} for s in range(1, 11)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows + [{"step": 10, "knn_val": 0.4}]) + "\n")
    for name in ("loss.png", "knn.png", "embedding.png", "retrieval.png"):
        _png(d / name)
    (d / "robustness_linear.json").write_text(json.dumps({"n": 30, "clean": 0.8, "classifier": "linear", "eps": {
        "0.1": {"pgd": {"accuracy": 0.4}, "autoattack": {"accuracy": 0.36667, "library_warnings": [
            "gradient masking suspected: the loss did not rise"]}, "worst_case": {"accuracy": 0.3}}}}))
    fog = {str(s): 0.1 * s for s in range(1, 6)}
    (d / "corruptions_knn.json").write_text(json.dumps({"n": 30, "clean": 0.8, "mean_corruption_accuracy": 0.6,
                                                        "corruptions": {"fog": fog}}))
    return d


# --------------------------------------------------------------------------------------------------- content
def test_evaluation_table_shows_eval_json_numbers(run_dir):
    t = tables(render_html_report(run_dir))["results"]
    rows = {r[0]: r[1:] for r in t[1:]}
    assert rows["kNN (test)"] == ["61.23 %", "50.00 %"]
    assert rows["linear probe (test)"] == ["73.46 %", "52.11 %"]
    assert rows["RankMe"] == ["12.5", "–"]
    assert rows["collapse alarm (centred spread / eff. rank)"][0].startswith("COLLAPSED (complete)")


def test_per_class_and_confusion_tables_from_eval_json(run_dir):
    t = tables(render_html_report(run_dir))
    assert [r[:2] + r[3:] for r in t["per-class"][1:]] == [["cat", "90.0 %", "50.0 %"], ["dog", "55.0 %", "25.0 %"],
                                                           ["owl", "72.5 %", "–"]]  # SSL, raw pixels
    conf = t["confusion"]
    assert conf[0][1:] == CLASSES  # predicted classes across, true classes down
    assert [r[0] for r in conf[1:]] == CLASSES
    assert [[int(c) for c in r[1:]] for r in conf[1:]] == CONFUSION


def test_warnings_come_first_with_every_source(run_dir):
    (run_dir / "manifest.json").write_text(json.dumps({"chunks": [], "rejected": {
        "day3.npz": {"signature": "s", "reason": "day3.npz: no images"}}}))
    page = render_html_report(run_dir)
    top = page.index('id="warnings"')
    assert top < page.index("<h2>Configuration") < page.index("<h2>Evaluation")
    box = page[top: page.index("</section>", top)]
    assert WARNING in box
    assert "robustness (linear classifier, eps 0.1, autoattack): gradient masking suspected" in box
    assert "stream chunk day3.npz rejected (not trained): day3.npz: no images" in box
    (run_dir / "eval.json").write_text(json.dumps({**_results(), "warnings": [], "collapse": {"verdict": "ok"}}))
    (run_dir / "robustness_linear.json").unlink()
    (run_dir / "manifest.json").unlink()
    assert 'id="warnings"' not in render_html_report(run_dir)  # nothing to warn about: no box


def test_unlabelled_run_renders_the_sections_it_has(run_dir):
    (run_dir / "eval.json").write_text(json.dumps(_results(labelled=False)))
    for name in ("robustness_linear.json", "corruptions_knn.json", "embedding.png", "knn.png"):
        (run_dir / name).unlink()
    page = render_html_report(run_dir)
    heads = re.findall(r"<h2>([^<]+)</h2>", page)
    assert heads == ["⚠ Warnings (1)", "Configuration", "Training curves", "Evaluation",
                     "Retrieval: nearest test neighbours"]
    rows = {r[0]: r[1:] for r in tables(page)["results"][1:]}
    assert "kNN (test)" not in rows and rows["RankMe"] == ["12.5", "–"]


def test_self_contained_every_image_is_an_embedded_png(run_dir):
    page = render_html_report(run_dir)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<script|<link|@import|url\(|https?://", page)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    for png in embedded:  # complete PNGs (a browser shows a truncated one half-drawn, without an error)
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG"
            im.load()
    for name in ("loss.png", "knn.png", "embedding.png", "retrieval.png"):  # the run's own files, byte for byte
        assert (run_dir / name).read_bytes() in embedded
    assert len(srcs) == 5  # + the learning-rate curve drawn from metrics.jsonl


def test_robustness_finetune_and_stream_sections(run_dir):
    (run_dir / "finetune.json").write_text(json.dumps({
        "loss": "sat", "noise": "symmetric", "noise_rate": 0.4, "actual_label_error": 0.36, "test_acc_last": 0.8125,
        "selective": {"softmax_response": {"aurc": 0.0123, "table": [
            {"target_coverage": 1.0, "test_coverage": 1.0, "selective_risk": 0.2},
            {"target_coverage": 0.9, "test_coverage": 0.905, "selective_risk": 0.15}]}}}))
    (run_dir / "manifest.json").write_text(json.dumps({
        "init_eval": {"linear": 0.2, "knn": 0.25},
        "chunks": [{"name": "a.npz", "images": 64, "steps": 3, "train_seconds": 1.5, "retained_bytes": 2e6,
                    "eval": {"linear": 0.5, "knn": 0.45}}], "rejected": {}}))
    (run_dir / "stream.json").write_text(json.dumps({"summary": {"chunks": 1, "steps": 3, "train_seconds": 1.5,
                                                                 "linear_metrics": {"average_accuracy": 0.6,
                                                                                    "forgetting": 0.125}}}))
    t = tables(render_html_report(run_dir))
    rob = t["robustness robustness-linear"]
    assert rob[0] == ["L∞ eps", "pgd", "autoattack", "worst_case"]
    assert rob[1] == ["0.1", "40.00 %", "36.67 % ⚠", "30.00 %"]
    assert t["corruptions corruptions-knn"][1] == ["fog", "10.0 %", "20.0 %", "30.0 %", "40.0 %", "50.0 %", "30.0 %"]
    assert dict(map(tuple, t["finetune"][1:]))["test accuracy, last epoch"] == "81.25 %"
    assert t["selective"][2] == ["90 %", "90.5 %", "15.00 %"] and t["selective"][3][-1] == "12.30"
    assert t["chunks"][1][-3:] == ["20.00 %", "25.00 %", ""] and t["chunks"][2][1:] == [
        "a.npz", "64", "3", "1.5", "50.00 %", "45.00 %", "2.00"]
    assert t["forgetting"][1] == ["linear", "60.00", "12.50", "–", "–"]


# ------------------------------------------------------------------------------------------ registered sections
class _DummySection(Section):
    """A capability's section as a capability writes one: its own file, body, warning and header fact."""
    id, title, order, files = "dummy", "Dummy capability", 55, ("dummy.json",)

    def applies(self, run):
        return run.data("dummy.json") is not None

    def render(self, run):
        return f"<p>dummy value {run.data('dummy.json')['value']}</p>"

    def warnings(self, run):
        return ["the dummy capability warns"]


@pytest.fixture()
def dummy_section():
    register_section(_DummySection())
    yield
    unregister_section("dummy")


def test_a_registered_section_appears_on_the_pages_it_applies_to_only(run_dir, dummy_section):
    page = render_html_report(run_dir)  # no dummy.json: neither the section nor its warning
    assert 'id="dummy"' not in page and "Dummy capability" not in page and "dummy capability warns" not in page
    (run_dir / "dummy.json").write_text(json.dumps({"value": 42}))
    page = render_html_report(run_dir)
    assert '<section id="dummy"><h2>Dummy capability</h2>\n<p>dummy value 42</p>\n</section>' in page
    heads = re.findall(r"<h2>([^<]+)</h2>", page)  # in its order: after the retrieval grid, before robustness
    assert heads.index("Retrieval: nearest test neighbours") + 1 == heads.index("Dummy capability")
    assert heads.index("Dummy capability") + 1 == heads.index("Robustness")
    box = page[page.index('id="warnings"'): page.index("</section>", page.index('id="warnings"'))]
    assert "the dummy capability warns" in box


def test_every_capability_registers_its_sections_with_any_use_of_selfsup():
    # importing anything of selfsup runs selfsup/api.py, which imports each capability's report module
    ids = [s.id for s in registered_sections()]
    assert ids == ["training", "evaluation", "per-class", "embedding", "retrieval", "stream", "sequence", "finetune",
                   "robustness"]


# ---------------------------------------------------------------------------------------------------- retrieval
def test_nearest_neighbours_by_cosine_never_the_query_itself():
    f = torch.tensor([[1.0, 0.0], [10.0, -0.1], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.1]])
    got = nearest_neighbours(f, torch.tensor([0, 3]), 3).tolist()
    # cosines to row 0: 0.99995, 0.707, 0, -0.995 (scale ignored); to row 3: 0, -0.00995, 0.707, 0.0995
    assert got == [[1, 2, 3], [2, 4, 0]]
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # an exact duplicate is found, the query is not
    assert nearest_neighbours(twins, torch.tensor([0, 1]), 1).tolist() == [[1], [0]]


def test_queries_are_seeded_distinct_and_in_range():
    a, b = pick_queries(50, 8, seed=3), pick_queries(50, 8, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 8 and 0 <= int(a.min()) and int(a.max()) < 50
    assert not torch.equal(a, pick_queries(50, 8, seed=4))
    assert len(pick_queries(5, 8, seed=0)) == 5


def _count_color(path: Path, hex_color: str) -> int:
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(img - rgb).sum(-1) < 30).sum())


def test_retrieval_grid_borders_show_whether_neighbours_share_the_class(tmp_path):
    n = 40
    images = torch.full((n, 1, 8, 8), 128, dtype=torch.uint8)
    feats = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    same = torch.zeros(n, dtype=torch.long)
    one_class = EvaluatedTestSet(feats, same, ["one"])
    assert plot_retrieval(tmp_path, one_class, images, seed=0, name="same.png") == "same.png"
    diff = torch.arange(n)  # every image its own class
    plot_retrieval(tmp_path, EvaluatedTestSet(feats, diff, []), images, seed=0, name="diff.png")
    assert _count_color(tmp_path / "same.png", SAME) > 500 and _count_color(tmp_path / "same.png", DIFFERENT) == 0
    assert _count_color(tmp_path / "diff.png", DIFFERENT) > 500 and _count_color(tmp_path / "diff.png", SAME) == 0
    w, h = Image.open(tmp_path / "same.png").size
    assert h > w  # 8 query rows, 1 + 6 columns
    nothing = EvaluatedTestSet(feats[:1], None, [])
    assert plot_retrieval(tmp_path, nothing, images[:1], seed=0) is None  # nothing to retrieve


# ------------------------------------------------------------------------------------------- real runs, a browser
def test_pretrain_then_corrupt_write_the_report(npz_data, tmp_path):  # noqa: F811
    from selfsup.workflows import pretrain

    torch.set_num_threads(1)
    r = pretrain(tiny_cfg(npz_data, tmp_path, "real", max_steps=4), progress=False)
    page = (r.run_dir / "report.html").read_text()
    ev = json.loads((r.run_dir / "eval.json").read_text())
    rows = {row[0]: row[1:] for row in tables(page)["results"][1:]}
    assert rows["kNN (test)"] == [f"{100 * ev['ssl']['knn_test']:.2f} %", f"{100 * ev['raw_pixels']['knn_test']:.2f} %"]
    assert (r.run_dir / "retrieval.png").exists()
    assert base64.b64encode((r.run_dir / "retrieval.png").read_bytes()).decode() in page
    assert "Robustness" not in page
    out = CliRunner().invoke(app, ["corrupt", str(r.run_dir), "--classifier", "knn", "--n", "16",
                                   "--corruptions", "fog"])  # in-process: no second torch import
    assert out.exit_code == 0, out.output
    rep = json.loads((r.run_dir / "corruptions_knn.json").read_text())
    row = tables((r.run_dir / "report.html").read_text())["corruptions corruptions-knn"][1]
    assert row[:2] == ["fog", f"{100 * rep['corruptions']['fog']['1']:.1f} %"]


CHECK = """<script>
window.__problems = [];
window.addEventListener("error", e => window.__problems.push("error: " + (e.message || (e.target && e.target.src
  ? "could not load " + e.target.src.slice(0, 60) : "resource"))), true);
window.addEventListener("load", () => {
  const widths = [], painted = [];
  for (const img of document.images) {  // drawing forces a full decode; a blank result means it failed
    widths.push(img.naturalWidth);
    const c = document.createElement("canvas");
    c.width = Math.max(1, img.naturalWidth);
    c.height = Math.max(1, img.naturalHeight);
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let opaque = 0;
    for (let i = 3; i < px.length; i += 4) opaque += px[i] > 0;
    painted.push(opaque / (c.width * c.height));
  }
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify({widths: widths, painted: painted, problems: window.__problems});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_opens_in_headless_chromium(run_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs it: apt-get install chromium)")
        pytest.skip("chromium not installed")
    page = write_html_report(run_dir).read_text()
    assert "<script" not in page  # the check below is the test's own, in a copy
    copy = tmp_path / "check.html"
    copy.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    r = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                        "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<pre id="img-check">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stdout[-2000:]
    check = json.loads(m.group(1).replace("&quot;", '"'))
    n_img = page.count("<img ")
    assert n_img == 5 and len(check["widths"]) == n_img
    assert all(w > 0 for w in check["widths"]), check  # every embedded PNG decoded ...
    assert all(p > 0.99 for p in check["painted"]), check  # ... completely (a truncated one is drawn in part)
    assert check["problems"] == []
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console


def test_sequence_study_root_shows_the_summary_table(tmp_path):
    per = {"sequential": {"linear": 0.5, "knn": 0.4, "steps": 9, "train_seconds": 3.0, "retained_bytes": 0},
           "joint": {"linear": 0.7, "knn": 0.6, "steps": 18, "train_seconds": 6.0, "retained_bytes": 0},
           "replay": {"linear": 0.65, "knn": 0.45, "steps": 9, "train_seconds": 3.5, "retained_bytes": 1e6}}
    (tmp_path / "sequence.json").write_text(json.dumps({"instance": per}))
    (tmp_path / "instance").mkdir()
    _png(tmp_path / "instance" / "accuracy_vs_chunk.png")
    page = render_html_report(tmp_path)
    table = tables(page)["sequence"]
    assert len(table) == 4 and table[0][:2] == ["sequence", "strategy"]  # header + one row per strategy
    rows = {r[1]: r for r in table[1:]}
    assert rows["replay"][2:4] == ["65.00", "45.00"] and rows["replay"][-2:] == ["75 %", "25 %"]  # gap closed
    assert base64.b64encode((tmp_path / "instance" / "accuracy_vs_chunk.png").read_bytes()).decode() in page
    assert "Joint − sequential (points): instance: linear +20.00, kNN +20.00." in page
