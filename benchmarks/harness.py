"""The benchmark harness: the record a measurement keeps, its dependencies and their staleness, merging part files,
``--report-only`` and writing BENCHMARKS.md (its summary table and one section per table).

A benchmark is a module ``benchmarks/<name>.py`` run as ``python -m benchmarks.<name>``: its experiment (``run``)
and its table spec (``sections``: the markdown of each section from the stored results; ``summary``: its rows of
the summary table), declared as a :class:`Benchmark` and handed to :func:`main`.

The record (:func:`stamp`) of a measurement holds the command, the commit, the host (CPU model and ISA flags), the
seeds, and the sha256 of every project file the run used: the ``selfsup.*`` modules loaded after the run and the
configs it read. A row is *stale* when one of those files differs from the current tree, *unknown* when its record
predates dependency hashes; the generator says which, and ``--missing-only`` re-runs both kinds.

Hand-written notes inside a section live in dated blocks, ``<!-- note 2026-12-07 -->`` … ``<!-- /note -->``; the
generator keeps them when it rewrites the section.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCH_MD = ROOT / "BENCHMARKS.md"
MAX_LINE = 200
"""No line of BENCHMARKS.md is longer (tests/test_benchmarks_harness.py)."""
WRAP = 118
"""Prose lines of a generated section are wrapped to this width."""

BENCHMARKS = ["throughput", "demo", "eval_speed", "time_budget", "gpu", "peers", "methods", "streaming", "robustness",
              "noisy_labels", "knn_surrogate", "label_first", "semi_supervised", "memory", "folder_decoding",
              "hidden_colour", "million_vectors"]
"""Every benchmark, in the order of the summary table."""
MODULES = {"peers": "peers.run"}
"""A benchmark whose module is not ``benchmarks.<name>``."""

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide which CPU kernels torch can use (fp32 GEMM width, bf16/int8 paths)."""

HEADER = ("# Benchmarks\n\nEvery number outside the dated note blocks comes from a record in "
          "`benchmarks/results/*.json` (its full\ncommand, commit, host and dependency hashes) and is rewritten from "
          "it by `python -m benchmarks.report`.\nThe note blocks (`<!-- note DATE -->`) are written by hand and kept "
          "as they are.\n")

# ---------------------------------------------------------------------------------------------------------------------
# the record


def cpu() -> tuple[str, list[str]]:
    """The CPU model name (from /proc/cpuinfo) and which of ISA_FLAGS it has."""
    name, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name is None:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name or platform.processor() or "cpu", [f for f in ISA_FLAGS if f in (flags or ())]


def host() -> dict:
    """The machine a measurement ran on, as fields."""
    import torch

    name, flags = cpu()
    return {"cpu": name, "isa": flags, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine(h: dict | None = None) -> str:
    """The host as one phrase (the form older records keep in their "machine" field)."""
    h = h or host()
    missing = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f not in h["isa"]]
    isa = "ISA " + (" ".join(h["isa"]) or "none of " + "/".join(ISA_FLAGS))
    isa += "; no " + "/".join(missing) if missing else ""
    threads = f"{h['threads']} thread" + ("" if h["threads"] == 1 else "s")
    gpu = f"GPU {h['gpu']}" if h.get("gpu") else "no GPU"
    return f"{h['cpu']} ({isa}), {h['cores']} cores, torch {h['torch']} ({threads}), {gpu}, Python {h['python']}"


def isa_level(flags: list[str]) -> str:
    """The widest CPU kernel family the flags allow torch to use, in a word."""
    for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 bf16"), ("avx512f", "AVX-512"),
                       ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "no AVX2"


def short_host(rec: dict) -> str:
    """CPU model and ISA level of a record (new records: ``host``; older ones: parsed from ``machine``)."""
    h = rec.get("host")
    if isinstance(h, dict):
        return f"{h['cpu']}, {isa_level(h['isa'])}" + (f", {h['gpu']}" if h.get("gpu") else "")
    m = rec.get("machine") or ""
    hit = re.match(r"(.*?) \(ISA ([^;)]*)", m)
    if hit:
        return f"{hit.group(1)}, {isa_level(hit.group(2).split())}"
    if rec.get("gpu"):
        return f"{rec.get('host_cpu', '?')}, {str(rec['gpu']).split(',')[0]}"
    return m.split(",")[0] or "not recorded"


def command() -> str:
    """This process's command line, in its ``python -m benchmarks.<name>`` form."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec and spec.name and spec.name.removesuffix(".__main__")  # `-m pkg` runs pkg.__main__
    prog = f"-m {name}" if name else os.path.relpath(sys.argv[0], ROOT)
    return " ".join(["python", prog, *sys.argv[1:]])


def _head() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_STARTED_AT = _head()  # the commit when this benchmark process started, i.e. the code it imported


def git_rev() -> str:
    """The commit a benchmark's numbers come from: HEAD when the process started (a record written at the end of a
    long run must not name a commit made while it ran)."""
    return _STARTED_AT


@contextlib.contextmanager
def old_tree(ref: str, where: Path):
    """The code at ``ref`` in a temporary detached git worktree at ``where`` (removed afterwards): the "before" side
    of a benchmark that compares two trees in one invocation."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rel(path: Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None


def loaded_modules(package: str = "selfsup") -> list[Path]:
    """The files of the ``package.*`` modules this process has imported, inside this tree."""
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if (name == package or name.startswith(package + ".")) and f and _rel(Path(f)):
            out.append(Path(f))
    return out


def dependencies(configs=(), modules: list[str] | dict | None = None) -> dict[str, str]:
    """``{path relative to the repository: sha256}`` of what a run used: the ``selfsup.*`` modules loaded in this
    process (or ``modules``: files a child process loaded, see :func:`traced`) and the configs it read."""
    files = loaded_modules() if modules is None else [ROOT / m for m in modules]
    files += [Path(c) if Path(c).is_absolute() else ROOT / c for c in configs]
    deps = {}
    for f in files:
        rel = _rel(f)
        if rel and f.is_file():
            deps[rel] = file_hash(f)
    return dict(sorted(deps.items()))


def stamp(configs=(), seeds=None, modules=None, **timings) -> dict:
    """The record of one measurement: command, commit, host (fields and phrase), seeds, timings, dependencies.
    Call it after the run, so the modules it loaded are in ``sys.modules``."""
    h = host()
    rec = {"command": command(), "commit": git_rev(), "machine": machine(h), "host": h,
           "dependencies": dependencies(configs, modules)}
    if seeds is not None:
        rec["seeds"] = list(seeds)
    if timings:
        rec["timings"] = timings
    return rec


def traced(argv: list[str], out: Path) -> list[str]:
    """A child command (``[python, "-m", module, args...]``) rewritten to write, as it exits, the project files it
    loaded to ``out`` (a JSON list), for :func:`dependencies`."""
    assert argv[1] == "-m", argv
    return [argv[0], "-m", "benchmarks.harness", "--trace-into", str(out), "-m", *argv[2:]]


def _trace_child(argv: list[str]) -> None:
    out, module, rest = Path(argv[2]), argv[4], argv[5:]  # harness.py --trace-into OUT -m MODULE ARGS...

    def dump():
        out.write_text(json.dumps([_rel(Path(p)) for p in loaded_modules()]))

    atexit.register(dump)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def freshness(rec: dict) -> tuple[str, list[str]]:
    """("fresh" | "stale" | "unknown", the changed files) of one record against the current tree."""
    deps = rec.get("dependencies")
    if not deps:
        return "unknown", []
    changed = [p for p, h in deps.items() if not (ROOT / p).is_file() or file_hash(ROOT / p) != h]
    return ("stale" if changed else "fresh"), changed


def needs_run(rec: dict | None) -> bool:
    """``--missing-only``: run a row that is missing, stale, or whose dependencies are unknown."""
    return rec is None or freshness(rec)[0] != "fresh"


def records(store, path: str = "") -> list[tuple[str, dict]]:
    """Every record in a results store, with its path of keys: a dict with a "commit" and a "command" (or, in older
    files, a "machine"), the outermost one where records nest."""
    if isinstance(store, list):
        return [x for i, v in enumerate(store) for x in records(v, f"{path}[{i}]")]
    if not isinstance(store, dict):
        return []
    if isinstance(store.get("commit"), str) and ("command" in store or "machine" in store):
        return [(path or "(the file)", store)]
    out = []
    for k, v in store.items():
        out += records(v, f"{path}.{k}" if path else str(k))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# writing BENCHMARKS.md


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def short_command(cmd: str, limit: int = 80) -> str:
    """A command cut to ``limit`` characters (the full one stays in the results JSON)."""
    return cmd if len(cmd) <= limit else cmd[:limit - 2].rstrip() + " …"


def command_line(recs: list[dict], results: str) -> str:
    """The one short line a section gives its commands: the first, shortened, and where the full ones are."""
    cmds = list(dict.fromkeys(r["command"] for r in recs if r.get("command")))
    if not cmds:
        return f"Commands: see `{results}`."
    more = f" and {len(cmds) - 1} more" if len(cmds) > 1 else ""
    return f"Command: `{short_command(cmds[0])}`{more} (full commands in `{results}`)."


def provenance(store: dict, results: str) -> list[str]:
    """The lines that close a section: its commands, commits, hosts, and the freshness of its rows."""
    recs = records(store)
    if not recs:
        return []
    commits = sorted({str(r.get("commit")) for _, r in recs})
    hosts = sorted({short_host(r) for _, r in recs})
    status: dict[str, list[str]] = {"fresh": [], "stale": [], "unknown": []}
    changed: set[str] = set()
    for path, r in recs:
        s, files = freshness(r)
        status[s].append(path)
        changed.update(files)
    commands = [r for _, r in recs] + [{"command": c} for c in store.get("commands", [])]
    lines = [command_line(commands, results),
             f"Commit{'s' if len(commits) > 1 else ''}: {', '.join(commits)}. "
             f"Host{'s' if len(hosts) > 1 else ''}: {'; '.join(hosts)}."]
    lines.append(freshness_sentence(status, sorted(changed)))
    return lines


def freshness_sentence(status: dict[str, list[str]], changed: list[str]) -> str:
    """The sentence saying which records still describe today's code."""
    n = sum(len(v) for v in status.values())
    parts = []
    if status["fresh"]:
        parts.append(f"{len(status['fresh'])} of {n} records fresh (every file they used unchanged)")
    if status["stale"]:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        parts.append(f"**stale**: {', '.join(status['stale'])} (changed since: {shown})")
    if status["unknown"]:
        parts.append(f"**dependencies unknown** (recorded before dependency hashes): {', '.join(status['unknown'])}")
    return "Freshness: " + "; ".join(parts) + "."


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def split_table(lines: list[str], limit: int = MAX_LINE) -> list[str]:
    """A markdown table too wide for ``limit`` as several tables, each repeating the key columns (the first, and the
    second too when the first repeats its values, e.g. sequence | strategy)."""
    if all(len(ln) <= limit for ln in lines) or len(lines) < 3:
        return lines
    rows = [_cells(ln) for ln in lines[:1] + lines[2:]]
    first = [r[0] for r in rows[1:]]
    key = 2 if len(set(first)) < len(first) and len(rows[0]) > 3 else 1
    groups, cur = [], []
    for j in range(key, len(rows[0])):
        trial = cur + [j]
        width = max(len(md_table([], [[r[i] for i in range(key)] + [r[i] for i in trial]]).split("\n")[-1])
                    for r in rows)
        if cur and width > limit:
            groups.append(cur)
            trial = [j]
        cur = trial
    groups.append(cur)
    out = []
    for g in groups:
        cols = list(range(key)) + g
        out += ([""] if out else []) + md_table([rows[0][i] for i in cols],
                                                [[r[i] for i in cols] for r in rows[1:]]).split("\n")
    return out


NOTE = re.compile(r"<!-- note \d{4}-\d{2}-\d{2} -->.*?<!-- /note -->", re.S)


def wrap(body: str, width: int = WRAP) -> str:
    """Prose lines wrapped to ``width``; tables split where wider than MAX_LINE; headings, code fences, note blocks
    and HTML comments left alone."""
    out, fence, in_note, table = [], False, False, []
    for line in body.split("\n") + [""]:
        s = line.lstrip()
        if s.startswith("|") and not fence and not in_note:
            table.append(line)
            continue
        if table:
            out += split_table(table)
            table = []
        if s.startswith("```"):
            fence = not fence
        if s.startswith("<!-- note "):
            in_note = True
        if (fence or in_note or len(line) <= width or s.startswith(("|", "#", "<!--"))):
            out.append(line)
        else:
            indent = line[:len(line) - len(s)]
            sub = indent + ("  " if s.startswith(("- ", "* ")) else "")
            out += textwrap.wrap(s, width=width, initial_indent=indent, subsequent_indent=sub,
                                 break_long_words=False, break_on_hyphens=False)
        if s.startswith("<!-- /note -->"):
            in_note = False
    return "\n".join(out[:-1])


def update_section(key: str, body: str, path: Path | None = None, after: str | None = None) -> None:
    """Replace the section between ``<!-- key -->`` markers, keeping its dated note blocks; a new section goes after
    section ``after`` (when there is one) or at the end."""
    path = path or BENCH_MD
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    text = path.read_text() if path.exists() else HEADER
    old = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    notes = NOTE.findall(old.group(1)) if old else []
    block = f"{start}\n{wrap(body.rstrip())}\n" + "".join(f"\n{n}\n" for n in notes) + end
    prev = after and text.find(f"<!-- /{after} -->")
    if old:
        text = text[:old.start()] + block + text[old.end():]
    elif prev is not None and prev >= 0:
        cut = prev + len(f"<!-- /{after} -->")
        text = text[:cut] + "\n\n" + block + text[cut:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks and their command line


@dataclasses.dataclass
class Benchmark:
    """One benchmark: where its records live, how its sections are written, and (optionally) how it measures.

    ``sections(store)`` returns ``{section key: body}`` or ``{key: (body, the part of the store it shows)}``;
    ``summary(store)`` rows of the summary table (see :func:`summary_row`); ``run(args, store)`` measures, updates
    and returns the store; ``merge(store, parts)`` folds part files in (default: :func:`merge_parts`)."""
    name: str
    sections: Callable[[dict], dict]
    results: Path | None = None
    run: Callable | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    summary: Callable[[dict], list[dict]] | None = None
    merge: Callable[[dict, list[dict]], dict] | None = None
    doc: str = ""

    def __post_init__(self):
        self.results = self.results or RESULTS_DIR / f"{self.name}.json"


def summary_row(claim: str, selfsup: str, other: str, margin: str, rec: dict, section: str) -> dict:
    return {"claim": claim, "selfsup": selfsup, "other": other, "margin": margin, "host": short_host(rec),
            "commit": str(rec.get("commit", "?")), "section": section}


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def save(path: Path, store: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    tmp.replace(path)


def merge_parts(store: dict, parts: list[dict]) -> dict:
    """The default merge: a part's top-level entries are added, replacing entries of the same key."""
    for p in parts:
        store.update(p)
    return store


def _results_name(path: Path) -> str:
    return _rel(path) or str(path)


def write(bench: Benchmark, store: dict, path: Path | None = None) -> list[str]:
    """Rewrite ``bench``'s sections of BENCHMARKS.md from ``store``; returns the section keys written."""
    written = []
    for key, part in bench.sections(store).items():
        body, scope = part if isinstance(part, tuple) else (part, store)
        if body is None:
            continue
        update_section(key, body.rstrip() + "\n\n" + "\n".join(provenance(scope, _results_name(bench.results))),
                       path, after=written[-1] if written else None)
        written.append(key)
    return written


def report(names: list[str] | None = None, path: Path | None = None) -> None:
    """Rewrite every benchmark's sections that has a results file, then the summary (``python -m
    benchmarks.report``)."""
    benches = load_benchmarks(names)
    for b in benches:
        if b.results.exists():
            print(f"{b.name}: {', '.join(write(b, load(b.results), path)) or 'no section'}")
        else:
            print(f"{b.name}: no results file ({_results_name(b.results)}); its sections are left as they are")
    write_summary(path, benches)


SUMMARY_HEADER = ["claim", "selfsup", "peer / baseline", "ratio or margin", "host (CPU, ISA)", "commit", "section"]


def anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def summary_section(benches: list[Benchmark], md: str) -> str:
    """The summary table: every benchmark's headline rows, linked to their sections."""
    heads = {}
    for key, body in re.findall(r"<!-- ([\w.-]+) -->\n(.*?)<!-- /\1 -->", md, flags=re.S):
        h = re.search(r"^## (.+)$", body, flags=re.M)
        if h:
            heads[key] = h.group(1)
    rows, links = [], {}
    for b in benches:
        if b.summary is None or not b.results.exists():
            continue
        for r in b.summary(load(b.results)):
            title = heads.get(r["section"])
            if title:  # reference-style links keep the rows short
                links[r["section"]] = f"[{r['section']}]: #{anchor(title)}"
            link = f"[{r['section']}]" if title else r["section"]
            rows.append([r["claim"], r["selfsup"], r["other"], r["margin"], r["host"], r["commit"], link])
    return "\n".join(["## Summary", "",
                      "Figures from each section's record; ± is the std over seeds (a row without it: one run).",
                      "", md_table(SUMMARY_HEADER, rows), "",
                      *links.values()])


def load_benchmarks(names=None) -> list[Benchmark]:
    return [importlib.import_module(f"benchmarks.{MODULES.get(n, n)}").BENCH for n in (names or BENCHMARKS)]


def write_summary(path: Path | None = None, benches: list[Benchmark] | None = None) -> None:
    path = path or BENCH_MD
    text = path.read_text() if path.exists() else HEADER
    if "<!-- summary -->" not in text:  # the summary opens the file, under its title and first paragraph
        head, sep, rest = text.partition("\n<!-- ")
        path.write_text(head.rstrip() + "\n\n<!-- summary -->\n<!-- /summary -->\n" + (sep + rest if sep else ""))
    update_section("summary", summary_section(benches if benches is not None else load_benchmarks(),
                                              path.read_text()), path)


def parser(bench: Benchmark) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.{bench.name}", description=bench.doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if bench.add_arguments:
        bench.add_arguments(ap)
    known = {a for act in ap._actions for a in act.option_strings}
    if "--report-only" not in known:
        ap.add_argument("--report-only", action="store_true",
                        help=f"rewrite the sections from {_results_name(bench.results)} without measuring")
    if "--merge" not in known:
        ap.add_argument("--merge", nargs="+", metavar="PART.json", default=None,
                        help="fold these results files (parts run apart, each with --results PART.json) into the "
                        "results file and rewrite the sections; measures nothing")
    if "--results" not in known:
        ap.add_argument("--results", type=Path, default=bench.results,
                        help="results file (default: %(default)s); another path keeps BENCHMARKS.md untouched")
    if "--markdown" not in known:
        ap.add_argument("--markdown", type=Path, default=BENCH_MD, help="the file whose sections are rewritten")
    return ap


def main(bench: Benchmark, argv: list[str] | None = None) -> None:
    """The command line every benchmark shares: measure (``run``), ``--report-only``, ``--merge PART.json ...``."""
    global BENCH_MD
    args = parser(bench).parse_args(argv)
    BENCH_MD = Path(args.markdown)
    results = Path(args.results)
    is_main = results.resolve() == Path(bench.results).resolve()
    store = load(results)
    if args.merge:
        missing = [p for p in args.merge if not Path(p).is_file()]
        if missing:
            raise SystemExit(f"--merge: no such file: {', '.join(missing)}")
        store = (bench.merge or merge_parts)(store, [load(Path(p)) for p in args.merge])
        save(results, store)
        print(f"merged {len(args.merge)} part(s) into {results}")
    elif not args.report_only:
        if bench.run is None:
            raise SystemExit(f"benchmarks.{bench.name} only rewrites its sections: use --report-only")
        store = bench.run(args, store, results)
        save(results, store)
        if not is_main:  # a part file: BENCHMARKS.md waits for --merge
            print(f"wrote {results}; join it with --merge")
            return
    elif not store:
        raise SystemExit(f"no results in {results}")
    write(bench, store, BENCH_MD)
    write_summary(BENCH_MD)


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--trace-into":
        _trace_child(sys.argv)
    else:
        raise SystemExit("usage: python -m benchmarks.harness --trace-into OUT.json -m MODULE [ARGS...]")
