"""docs/: the configuration reference is generated from the pydantic models and committed up to date, every key is
described, the commands and options the pages show exist in the CLI, relative links resolve, the capability pages
quote their numbers from BENCHMARKS.md, and every YAML example is a valid config."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml
from pydantic import Field, create_model
from typer.exceptions import TyperException

from selfsup.cli import app
from selfsup.config import Config, EvalConfig, load_config
from selfsup.methods import DESCRIPTIONS, METHODS
from selfsup.methods.simclr import SimCLR, SimCLRParams

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
CAPABILITY_PAGES = ["streams.md", "noisy-labels.md", "robustness.md", "methods.md"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


def _mutated_config():
    """Config with one key added to ``eval`` and no description for it (what a hurried new key looks like)."""
    mut_eval = create_model("MutEval", __base__=EvalConfig, extra_knob=(int, 3))
    return create_model("MutConfig", __base__=Config,
                        eval=(mut_eval, Field(default_factory=mut_eval, description="the evaluation protocol")))


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows of config.md by key; method parameters as ``method.<name>.<param>``."""
    rows, method, in_keys = {}, None, False
    for line in text.splitlines():
        m = re.match(r"### method\.name: (\w+)", line)
        if m:
            method = m.group(1)
        elif line.startswith("## "):
            method = None
        in_keys = line.startswith("| key |") or (in_keys and line.startswith("|"))
        if in_keys and line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            key = cells[0].strip("`")
            if method and key.startswith("method."):
                key = f"method.{method}.{key[len('method.'):]}"
            rows[key] = cells[1:]
    return rows


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


# ------------------------------------------------------------------------------------------- config reference
def test_committed_config_reference_is_what_the_generator_writes():
    assert (DOCS / "config.md").read_text() == gen.render(), \
        "docs/config.md is stale: run python scripts/config_reference.py"


def test_every_key_and_method_parameter_has_a_description():
    assert gen.undocumented() == []


def test_an_added_key_without_description_is_caught_and_makes_the_reference_stale():
    mut = _mutated_config()
    assert gen.undocumented(mut) == ["eval.extra_knob"]
    text = gen.render(mut)
    assert _rows(text)["eval.extra_knob"][:3] == ["int", "`3`", ""]
    assert text != (DOCS / "config.md").read_text()

    class Params(SimCLRParams):
        new_param: int = 3

    class Fake(SimCLR):
        pass

    Fake.Params = Params
    assert gen.undocumented(methods={**METHODS, "simclr": Fake}) == ["method.simclr.new_param"]


def test_reference_rows_match_the_models_by_hand():
    rows = _rows(gen.render())
    assert rows["train.batch_size"][:3] == ["int", "`256`", "> 1"]
    assert rows["train.lr"][:3] == ["float", "`0.06`", "> 0"]
    assert rows["train.grad_clip"][:3] == ["float or null", "`null`", "> 0"]
    assert rows["augment.flip_p"][:3] == ["float", "`0.5`", "≥ 0; ≤ 1"]
    assert rows["augment.crop_ratio"][:2] == ["[float, float]", "`[0.75, 1.33333]`"]
    assert rows["data.source"][2] == ("one of `fashion_mnist`, `digits`, `folder`, `cifar`, `npz`, `webdataset`")
    assert rows["model.widths"][:3] == ["list of int", "`[32, 64, 128]`", "at least 1 item(s); each > 0"]
    assert rows["sequence.kinds"][2] == ("at least 1 item(s); each one of `instance`, `random_class`, "
                                         "`distant_class`, `domain`, `far_domain`")
    assert rows["robustness.finetune.trades_beta"][3] == r"trades: beta, weight of KL(f(x) \|\| f(x_adv))"
    assert rows["method.moco.queue_size"][:2] == ["int", "`4096`"]
    assert rows["method.sat.alpha"][:3] == ["float", "`0.9`", "≥ 0; < 1"]
    assert rows["method.vicreg.sim_coeff"][:2] == ["float", "`25`"]
    assert rows["method.simsiam.proj_dim"][:2] == ["int", "`256`"]


def test_reference_lists_every_key_of_the_default_config_and_of_every_method():
    rows = _rows((DOCS / "config.md").read_text())
    keys = [k for k in _leaf_keys(Config().model_dump()) if not k.startswith("method.")]
    keys += [f"method.{m}.{p}" for m, cls in METHODS.items() for p in cls.Params().model_dump()]
    assert len(keys) > 100
    assert [k for k in keys if k not in rows] == []
    assert [k for k in rows if k not in keys] == []
    text = (DOCS / "config.md").read_text()
    assert [m for m in METHODS if f"| `{m}` |" not in text] == []


def test_no_method_parameter_description_is_left_behind():
    assert gen.unused_param_descriptions() == []
    assert gen.unused_param_descriptions({"simclr": METHODS["simclr"]}) == [
        "barlow_twins.lambda_offdiag", "base_momentum", "moco.momentum", "moco.queue_size", "pred_hidden",
        "vicreg.cov_coeff", "vicreg.sim_coeff", "vicreg.std_coeff"]


def test_methods_page_lists_every_method_with_its_views_description_and_config():
    text = (DOCS / "methods.md").read_text()
    rows = [ln for ln in text.splitlines() if re.match(r"\| `\w+` \| (a?symmetric|supervised) \|", ln)]
    assert len(rows) == len(METHODS)
    for (name, cls), row in zip(METHODS.items(), rows):
        assert row == (f"| `{name}` | {cls.recipe} | {DESCRIPTIONS[name]} | "
                       f"[configs/{name}_fmnist.yaml](../configs/{name}_fmnist.yaml) |")


def test_check_flag_exits_1_on_a_stale_file(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert gen.main(["--check", "--out", str(out)]) == 1  # missing
    assert gen.main(["--out", str(out)]) == 0
    assert out.read_text() == gen.render()
    assert gen.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("`256`", "`128`", 1))
    assert gen.main(["--check", "--out", str(out)]) == 1
    assert "stale" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- the pages
def _split_fences(text: str) -> tuple[list[tuple[str, str]], str]:
    """([(language, body) of every fenced code block], the text outside them) of a Markdown text."""
    blocks, prose, lang, body = [], [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is None:
            prose.append(line)
        else:
            body.append(line)
    assert lang is None, "unclosed code block"
    return blocks, "\n".join(prose)


def _code(text: str) -> tuple[list[str], list[str]]:
    """(lines of the fenced shell blocks, inline code spans of the prose) of a Markdown text."""
    blocks, prose = _split_fences(text)
    lines = [ln for lang, b in blocks if lang in ("bash", "sh", "console", "") for ln in b.splitlines()]
    return lines, re.findall(r"`([^`\n]+)`", prose)


def _command_lines() -> list[tuple[str, str, bool]]:
    """(page, ``selfsup ...`` command, whether it is a full command line of a code block) for every command shown."""
    out = []
    for page in PAGES:
        lines, spans = _code(page.read_text())
        for ln, full in [(ln, True) for ln in lines] + [(sp, False) for sp in spans]:
            ln = ln.strip().removeprefix("$ ")
            if ln.startswith("selfsup ") and not ln.split()[1].isupper():  # not `selfsup COMMAND --help`
                out.append((page.name, re.split(r"\s+#\s", ln)[0], full))
    return out


def test_every_command_the_docs_show_exists_with_its_options():
    cli = typer.main.get_command(app)
    lines = _command_lines()
    named = {ln.split()[1] for _, ln, _ in lines}
    assert {"pretrain", "eval", "stream", "sequence", "finetune", "attack", "corrupt", "methods", "embed", "export",
            "neighbours", "select", "compare"} <= named
    assert sorted(named - set(cli.commands)) == []
    full = [(page, ln) for page, ln, is_full in lines if is_full]
    assert len(full) >= 30
    for page, ln in full:  # code-block lines are complete invocations: parse them as the CLI would
        args = shlex.split(ln)[1:]
        cmd = cli.commands[args[0]]
        if not cmd.params or "--help" in args:  # a command still being written (no options yet): its name only
            continue
        try:
            cmd.make_context(args[0], args[1:])
        except TyperException as e:  # click's UsageError (typer vendors click)
            pytest.fail(f"{page}: `{ln}`: {e}")


def _anchors(text: str) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", _split_fences(text)[1], flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_points_to_an_existing_file_and_heading():
    checked = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to {target} (no such file)"
            if frag and dest.suffix == ".md":
                assert frag in _anchors(dest.read_text()), f"{page.name}: link to {target} (no such heading)"
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", CAPABILITY_PAGES)
def test_capability_pages_quote_their_numbers_from_benchmarks(name):
    """Every decimal number in a page's prose and tables occurs in BENCHMARKS.md (code is skipped: commands)."""
    bench = set(re.findall(r"\d+\.\d+", (ROOT / "BENCHMARKS.md").read_text()))
    text = (DOCS / name).read_text()
    prose = re.sub(r"`[^`\n]+`", "", _split_fences(text)[1])
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose)
    assert len(numbers) >= 5
    assert sorted({n for n in numbers if n not in bench}) == []


def test_every_yaml_example_is_a_valid_config():
    blocks = [b for p in PAGES for lang, b in _split_fences(p.read_text())[0] if lang == "yaml"]
    assert blocks
    for b in blocks:
        load_config(yaml.safe_load(b))


# ---------------------------------------------------------------------------------------------------------------------
# numbers quoted from the benchmark records

RESULTS = ROOT / "benchmarks" / "results"
NUMBER_PAGES = [ROOT / "README.md", *PAGES]
BENCH_MARK = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:%|min|×|img/s|s|points)?\s*<!-- bench: ([\w.-]+\.json):(\S+?) -->")
ILLUSTRATIVE = "illustrative output of one run"


def _lookup(store, path: str) -> float:
    """``a.b.3.c*100`` (or ``/60``) in a results store: keys, list indices, one scale."""
    scale = 1.0
    m = re.match(r"(.*?)([*/])([\d.]+)$", path)
    if m:
        path, scale = m.group(1), float(m.group(3)) if m.group(2) == "*" else 1 / float(m.group(3))
    node = store
    for k in path.split("."):
        node = node[int(k)] if isinstance(node, list) else node[k]
    return float(node) * scale


def _leaves(node) -> list[float]:
    if isinstance(node, dict):  # numeric keys too (ε = "0.0314")
        return [x for k, v in node.items() for x in _leaves(k) + _leaves(v)]
    if isinstance(node, list):
        return [x for v in node for x in _leaves(v)]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [float(node)]
    if isinstance(node, str):  # table cells stored as text ("89.73", "75.70 ± 1.33")
        return [float(x) for x in re.findall(r"-?\d+\.\d+", node)]
    return []


def _recorded_numbers() -> set[str]:
    """Every number of benchmarks/results/*.json as a page could print it: 1–3 decimals, raw, as a percentage or
    ×10⁻³ (AURC)."""
    out = set()
    for p in RESULTS.glob("*.json"):
        for v in _leaves(json.loads(p.read_text())):
            for x in (v, 100 * v, -v, -100 * v, 1000 * v):
                out |= {f"{x:.1f}", f"{x:.2f}", f"{x:.3f}", f"{x:.4f}"}
    return out


def test_numbers_marked_with_their_record_match_it():
    """A number followed by ``<!-- bench: FILE.json:path -->`` equals that record's value at its printed precision;
    change the record (or the number) and this fails."""
    checked = 0
    for page in NUMBER_PAGES:
        for number, file, path in BENCH_MARK.findall(page.read_text()):
            value = _lookup(json.loads((RESULTS / file).read_text()), path)
            decimals = len(number.partition(".")[2])
            assert f"{value:.{decimals}f}" == number, f"{page.name}: {number} but {file}:{path} gives {value}"
            checked += 1
    assert checked >= 6


def _cited_paragraphs(text: str) -> list[str]:
    """Paragraphs (with the tables that follow them) that quote BENCHMARKS.md, outside code."""
    prose = re.sub(r"`[^`\n]+`", "", _split_fences(text)[1])
    prose = re.sub(r"<!--.*?-->", "", prose)
    out, cur = [], []
    for block in re.split(r"\n\s*\n", prose):
        if "BENCHMARKS.md" in block:
            cur = [block]
            out.append(cur)
        elif cur and block.lstrip().startswith("|"):
            cur.append(block)
        else:
            cur = []
    return ["\n\n".join(c) for c in out]


@pytest.mark.parametrize("page", NUMBER_PAGES, ids=lambda p: p.name)
def test_numbers_quoted_from_benchmarks_are_in_the_records(page):
    """Every decimal number in a paragraph that cites BENCHMARKS.md (and in the tables under it) is a value of
    benchmarks/results/*.json at its printed precision, unless the paragraph says it is illustrative output."""
    recorded = _recorded_numbers()
    missing = []
    for para in _cited_paragraphs(page.read_text()):
        if ILLUSTRATIVE in para:
            continue
        for n in re.findall(r"(?<![\w.])[-+−]?\d+\.\d+(?![\w.])", para):
            if n.replace("−", "-").lstrip("+") not in recorded:
                missing.append(n)
    assert missing == [], f"{page.name}: numbers not in benchmarks/results/*.json: {sorted(set(missing))}"


def _bench_section(title: str) -> str | None:
    """The text of the BENCHMARKS.md section whose heading starts with ``title`` (up to its end marker)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    m = re.search(r"^#{2,3} " + re.escape(title) + r".*?(?=^<!-- /)", text, flags=re.M | re.S)
    return m.group(0) if m else None


@pytest.mark.parametrize("page", NUMBER_PAGES, ids=lambda p: p.name)
def test_numbers_cited_with_a_section_are_in_that_section(page):
    """A paragraph citing BENCHMARKS.md, section "X" quotes its decimals from that section (generated from the
    records), not from another table that happens to hold the same digits."""
    checked, missing = 0, []
    for para in _cited_paragraphs(page.read_text()):
        if ILLUSTRATIVE in para:
            continue
        flat = para.replace("\n", " ")
        titles = re.findall(r"BENCHMARKS\.md\]?(?:\([^)]*\))?,? (?:section )?\"([^\"]+)\"", flat)
        titles += re.findall(r"section \"([^\"]+)\"", flat)
        sections = [s for s in (_bench_section(t) for t in titles) if s]
        if not sections:
            continue
        for n in re.findall(r"(?<![\w.])[-+−]?\d+\.\d+(?![\w.])", para):
            checked += 1
            if not any(re.search(r"(?<![\d.])" + re.escape(n.lstrip("+−-")) + r"(?![\d])", s) for s in sections):
                missing.append(n)
    assert missing == [], f"{page.name}: numbers not in the cited section: {sorted(set(missing))}"
