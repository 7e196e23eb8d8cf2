"""benchmarks/harness.py: the record (command, commit, host, seeds, dependency hashes), staleness from those hashes,
--merge, --report-only, sections with preserved note blocks; and BENCHMARKS.md: generated from the stored records,
opening with the summary table, no line over 200 characters. No benchmark measures anything here."""
from __future__ import annotations

import importlib.machinery
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent
BENCH_MD = ROOT / "BENCHMARKS.md"


def _fake(tmp_path: Path, calls: list) -> harness.Benchmark:
    """A tiny experiment: one row per --rows, each 'measured' by importing selfsup.errors."""

    def add_arguments(ap):
        ap.add_argument("--rows", default="a,b")

    def run(args, store, results):
        import selfsup.errors  # noqa: F401  (a project module the 'run' uses)

        calls.append(args.rows)
        for r in args.rows.split(","):
            store[r] = {"value": len(r), **harness.stamp(seeds=[0, 1])}
        return store

    def sections(store):
        rows = [[k, v["value"]] for k, v in sorted(store.items())]
        return {"fake": "## Fake table\n\n" + harness.md_table(["row", "value"], rows)}

    def summary(store):
        return [harness.summary_row("fake claim", "1", "2", "0.50×", next(iter(store.values())), "fake")]

    return harness.Benchmark("fake", sections, results=tmp_path / "fake.json", run=run,
                             add_arguments=add_arguments, summary=summary)


def test_a_run_keeps_the_record_and_writes_its_section(tmp_path, monkeypatch):
    calls = []
    bench = _fake(tmp_path, calls)
    md = tmp_path / "B.md"
    monkeypatch.setattr(harness, "load_benchmarks", lambda names=None: [bench])
    harness.main(bench, ["--rows", "a,b", "--markdown", str(md)])
    store = json.loads((tmp_path / "fake.json").read_text())
    rec = store["a"]
    assert rec["command"].startswith("python ") and rec["commit"] and rec["seeds"] == [0, 1]
    assert rec["host"]["cpu"] and isinstance(rec["host"]["isa"], list) and "ISA" in rec["machine"]
    assert "selfsup/errors.py" in rec["dependencies"]  # the project module the run loaded, hashed
    assert rec["dependencies"]["selfsup/errors.py"] == harness.file_hash(ROOT / "selfsup" / "errors.py")
    text = md.read_text()
    assert "<!-- fake -->" in text and "| a | 1 |" in text and "Freshness: 2 of 2 records fresh" in text
    assert text.index("<!-- summary -->") < text.index("<!-- fake -->")  # the summary opens the file
    assert "| fake claim | 1 | 2 | 0.50× |" in text


def test_report_only_rebuilds_from_the_json_and_keeps_note_blocks(tmp_path, monkeypatch):
    calls = []
    bench = _fake(tmp_path, calls)
    md = tmp_path / "B.md"
    monkeypatch.setattr(harness, "load_benchmarks", lambda names=None: [bench])
    harness.main(bench, ["--markdown", str(md)])
    note = "<!-- note 2026-12-07 -->\nWritten by hand: keep me.\n<!-- /note -->"
    md.write_text(md.read_text().replace("<!-- /fake -->", note + "\n<!-- /fake -->"))
    store = json.loads((tmp_path / "fake.json").read_text())
    store["a"]["value"] = 42
    (tmp_path / "fake.json").write_text(json.dumps(store))
    harness.main(bench, ["--report-only", "--markdown", str(md)])
    text = md.read_text()
    assert calls == ["a,b"]  # --report-only measured nothing
    assert "| a | 42 |" in text and note in text


def test_merge_folds_part_files_in(tmp_path, monkeypatch):
    bench = _fake(tmp_path, [])
    md = tmp_path / "B.md"
    monkeypatch.setattr(harness, "load_benchmarks", lambda names=None: [bench])
    part = tmp_path / "part.json"
    harness.main(bench, ["--rows", "c", "--results", str(part), "--markdown", str(md)])
    assert not md.exists()  # a part file leaves BENCHMARKS.md alone
    harness.main(bench, ["--rows", "a", "--markdown", str(md)])
    harness.main(bench, ["--merge", str(part), "--markdown", str(md)])
    assert set(json.loads((tmp_path / "fake.json").read_text())) == {"a", "c"}
    assert "| c | 1 |" in md.read_text()


def test_a_changed_dependency_marks_its_rows_stale_and_old_records_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "ROOT", tmp_path)
    (tmp_path / "selfsup").mkdir()
    dep = tmp_path / "selfsup" / "loop.py"
    dep.write_text("x = 1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: 1\n")
    rec = {"command": "python -m benchmarks.x", "commit": "abc",
           "dependencies": harness.dependencies([cfg], ["selfsup/loop.py"])}
    assert set(rec["dependencies"]) == {"selfsup/loop.py", "c.yaml"}
    assert harness.freshness(rec) == ("fresh", []) and not harness.needs_run(rec)
    dep.write_text("x = 2\n")
    assert harness.freshness(rec) == ("stale", ["selfsup/loop.py"]) and harness.needs_run(rec)
    old = {"command": "python benchmarks/x.py", "commit": "abc", "machine": "AMD EPYC (ISA avx2 fma), 2 cores"}
    assert harness.freshness(old)[0] == "unknown" and harness.needs_run(old) and harness.needs_run(None)
    lines = harness.provenance({"rows": {"r1": rec, "r2": old}}, "x.json")
    assert "**stale**: rows.r1 (changed since: selfsup/loop.py)" in lines[-1]
    assert "**dependencies unknown** (recorded before dependency hashes): rows.r2" in lines[-1]


def test_a_child_process_reports_the_project_modules_it_loaded(tmp_path):
    out = tmp_path / "deps.json"
    cmd = harness.traced([sys.executable, "-m", "selfsup.cli", "methods"], out)
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    loaded = json.loads(out.read_text())
    assert "selfsup/method_catalogue.py" in loaded and "selfsup/cli/training_commands.py" in loaded
    assert "selfsup/methods/simclr.py" not in loaded  # selfsup methods reads the catalogue, not the method classes


def test_long_tables_split_and_prose_wraps():
    wide = harness.md_table(["sequence", "strategy"] + [f"column {i}" for i in range(30)],
                            [["domain", s] + [f"{i}.00 ± 0.{i:02d}" for i in range(30)] for s in ("joint", "replay")])
    out = harness.wrap("word " * 100 + "\n\n" + wide)
    assert max(len(ln) for ln in out.split("\n")) <= harness.MAX_LINE
    assert out.count("| sequence | strategy |") >= 2  # the key columns repeat in every part


def test_benchmarks_have_no_sys_path_edits_and_run_as_modules():
    for p in (ROOT / "benchmarks").rglob("*.py"):
        if any(part.startswith(".venv") for part in p.relative_to(ROOT).parts):
            continue  # the peer's own environment (benchmarks/peers/.venv-lightly), not the project's code
        assert "sys.path" not in p.read_text(), p
    for name in harness.BENCHMARKS:
        assert (ROOT / "benchmarks" / f"{name}.py").exists() or (ROOT / "benchmarks" / name / "__main__.py").exists()


NOT_YET_MEASURED: set[str] = set()  # written, first full run to come


@pytest.mark.parametrize("bench", harness.load_benchmarks(), ids=lambda b: b.name)
def test_every_stored_results_file_still_renders(bench):
    """The committed results JSON (records of every age) stay readable by today's sections and summary; a benchmark
    not measured yet (NOT_YET_MEASURED, no results file) writes no section and no summary row rather than failing."""
    store = harness.load(bench.results)
    if not store and bench.name in NOT_YET_MEASURED:
        assert not any(bench.sections(store).values())
        assert not (bench.summary and bench.summary(store))
        return
    assert store, f"{bench.results} is missing"
    assert any(body for body in bench.sections(store).values())
    if bench.summary:
        bench.summary(store)


def test_benchmarks_md_is_what_the_records_give(tmp_path):
    """BENCHMARKS.md is regenerated from benchmarks/results/*.json (python -m benchmarks.report) without change:
    a number edited by hand outside a note block, or a record changed without regenerating, fails here."""
    copy = tmp_path / "B.md"
    copy.write_text(BENCH_MD.read_text())
    harness.report(path=copy)
    assert copy.read_text() == BENCH_MD.read_text()


def test_benchmarks_md_is_readable():
    text = BENCH_MD.read_text()
    long = [(i + 1, len(ln)) for i, ln in enumerate(text.split("\n")) if len(ln) > harness.MAX_LINE]
    assert long == []
    first = re.search(r"<!-- ([\w.-]+) -->", text).group(1)
    assert first == "summary"
    summary = text[text.index("<!-- summary -->"):text.index("<!-- /summary -->")]
    assert summary.count("\n| ") >= 10 and summary.count("\n") < 45  # one screen
    # hand-written text only in dated note blocks: every section is a generated one or a note
    keys = set(re.findall(r"^<!-- ([\w.-]+) -->$", text, flags=re.M))
    generated = {"summary"} | {k for b in harness.load_benchmarks() for k in b.sections(harness.load(b.results))}
    assert keys <= generated
    outside = re.sub(r"<!-- ([\w.-]+) -->.*?<!-- /\1 -->", "", text, flags=re.S)
    assert outside.strip() == harness.HEADER.strip()


def test_the_command_of_a_package_run_with_dash_m_names_the_package(monkeypatch):
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("benchmarks.peers.__main__", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/x/benchmarks/peers/__main__.py", "--seeds", "3"])
    assert harness.command() == "python -m benchmarks.peers --seeds 3"
    main.__spec__ = importlib.machinery.ModuleSpec("benchmarks.methods", None)
    assert harness.command() == "python -m benchmarks.methods --seeds 3"
