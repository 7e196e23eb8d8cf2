"""Generate docs/config.md, the configuration reference, from the pydantic models of ``selfsup.config`` and the
``Params`` of every method in ``selfsup.methods.METHODS``.

    python scripts/config_reference.py            # write docs/config.md
    python scripts/config_reference.py --stdout   # print it instead
    python scripts/config_reference.py --check    # exit 1 when docs/config.md differs from what would be written

tests/test_docs.py checks that the committed docs/config.md is current and that every key has a description.
"""
from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from selfsup.atomic import atomic_write_text
from selfsup.config import Config
from selfsup.data import SOURCES
from selfsup.streams.strategies import STRATEGIES
from selfsup.methods import DESCRIPTIONS, METHODS
from selfsup.robustness.robustness_schema import MOVED_KEYS
from selfsup.train.run_policy import RESUMABLE_CHANGES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "config.md"

# Descriptions of method parameters whose Field carries none (a Field description in the method's file wins), by
# "method.param" or, for a parameter that means the same in every method that has it, by "param".
PARAM_DESCRIPTIONS = {
    "proj_hidden": "hidden width of the projection head (MLP on the encoder's features)",
    "proj_dim": "output width of the projection head (the space the loss compares)",
    "pred_hidden": "hidden width of the predictor (Linear-BN-ReLU-Linear on the projection)",
    "temperature": "softmax temperature of the contrastive (InfoNCE / NT-Xent) loss",
    "base_momentum": "target network EMA momentum at the start, raised to 1 on a cosine schedule",
    "moco.queue_size": "negative keys kept in the FIFO queue (must be at least 2 x train.batch_size)",
    "moco.momentum": "key encoder EMA momentum m (constant): w_key <- m w_key + (1 - m) w",
    "barlow_twins.lambda_offdiag": "weight of the off-diagonal (redundancy) term of the cross-correlation loss",
    "vicreg.sim_coeff": "weight of the invariance term (MSE between the two views' projections)",
    "vicreg.std_coeff": "weight of the variance term (hinge on each dimension's standard deviation)",
    "vicreg.cov_coeff": "weight of the covariance term (off-diagonal covariance squared)",
}

# Rules that involve several keys (model validators), stated by hand.
CROSS_CHECKS = [
    "`augment.crop_scale`: 0 < low <= high <= 1; `augment.crop_ratio`: 0 < low <= high.",
    "`augment.local_crops` > 0 (multi-crop): only with a method that takes multi-crop (`swav`, `dino`) "
    "and not with `augment.recipe: supervised`; `augment.local_crop_scale`: 0 < low <= high <= 1.",
    "`method.name: moco`: `method.queue_size` must be at least 2 x `train.batch_size` (each step enqueues the keys "
    "of both views of the global batch).",
    "`selfsup pretrain --devices N`: `train.batch_size` must be divisible by N.",
]

# Keys whose values a registry checks (config.register_check), not the schema: their names, for the "allowed" column.
REGISTRIES = {"data.source": SOURCES, "stream.strategy": STRATEGIES, "sequence.strategies": STRATEGIES}

_BOUNDS = ((at.Gt, "gt", "> {}"), (at.Ge, "ge", "≥ {}"), (at.Lt, "lt", "< {}"), (at.Le, "le", "≤ {}"),
           (at.MinLen, "min_length", "at least {} item(s)"), (at.MaxLen, "max_length", "at most {} item(s)"))


def _num(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def _value(v) -> str:
    """A default as it would be written in the YAML file."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return _num(v)


def _bounds(metadata) -> list[str]:
    out = []
    for m in metadata:
        if isinstance(m, FieldInfo):  # Annotated[int, Field(gt=0)]: the bounds live in the Field's metadata
            out += _bounds(m.metadata)
        for cls, attr, fmt in _BOUNDS:
            if isinstance(m, cls):
                out.append(fmt.format(_num(getattr(m, attr))))
    return out


def _type(ann) -> tuple[str, list[str]]:
    """(type name, allowed values / bounds) of an annotation."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return type(args[0]).__name__, ["one of " + ", ".join(f"`{a}`" for a in args)]
    if origin is typing.Annotated:
        name, allowed = _type(args[0])
        return name, _bounds(args[1:]) + allowed
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type(a) for a in args]
        return " or ".join("null" if a is type(None) else p[0] for a, p in zip(args, parts)), \
            [x for p in parts for x in p[1]]
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            names = [_type(a)[0] for a in args]
            return f"[{', '.join(names)}]", []
        name, allowed = _type(args[0]) if args else ("any", [])
        return f"list of {name}", [f"each {a}" if not a.startswith("each") else a for a in allowed]
    if origin is dict:
        return "mapping", []
    if ann is typing.Any:
        return "any", []
    return getattr(ann, "__name__", str(ann)), []


def describe(info: FieldInfo, choices=None) -> tuple[str, str, str]:
    """(type, default, allowed values and bounds) of a field; ``choices``: the names a registry allows."""
    name, allowed = _type(info.annotation)
    allowed += ["one of " + ", ".join(f"`{a}`" for a in choices)] if choices else []
    allowed = _bounds(info.metadata) + allowed
    default = info.get_default(call_default_factory=True)
    return name, _value(default), "; ".join(allowed)


def _sections(config=Config) -> tuple[list[str], list[str]]:
    top = [k for k, f in config.model_fields.items() if not _is_section(f) and k != "method"]
    sections = [k for k, f in config.model_fields.items() if _is_section(f)]
    return top, sections


def _is_section(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _param_description(info: FieldInfo, method: str, name: str) -> str:
    return info.description or PARAM_DESCRIPTIONS.get(f"{method}.{name}") or PARAM_DESCRIPTIONS.get(name, "")


def unused_param_descriptions(methods=METHODS) -> list[str]:
    """Entries of PARAM_DESCRIPTIONS that describe no parameter without a Field description (left behind)."""
    used = set()
    for mname, cls in methods.items():
        for k, f in cls.Params.model_fields.items():
            if not f.description:
                used.add(f"{mname}.{k}" if f"{mname}.{k}" in PARAM_DESCRIPTIONS else k)
    return sorted(set(PARAM_DESCRIPTIONS) - used)


def _undocumented_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """The keys of a section (and of its sub-sections) without a description."""
    out = []
    for k, f in model.model_fields.items():
        if not (f.description or "").strip():
            out.append(f"{prefix}{k}")
        if _is_section(f):
            out += _undocumented_keys(f.annotation, f"{prefix}{k}.")
    return out


def undocumented(config=Config, methods=METHODS) -> list[str]:
    """Every key (``section.key``, ``section.sub.key``, ``method.<name>.<param>``) without a description."""
    out = [k for k, f in config.model_fields.items() if not (f.description or "").strip()]
    for sec in _sections(config)[1]:
        out += _undocumented_keys(config.model_fields[sec].annotation, f"{sec}.")
    for mname, cls in methods.items():
        out += [f"method.{mname}.{k}" for k, f in cls.Params.model_fields.items()
                if not _param_description(f, mname, k).strip()]
        if not DESCRIPTIONS.get(mname, "").strip():
            out.append(f"method.name: {mname}")
    return out


def _sentence(text: str | None) -> str:
    return (text[:1].upper() + text[1:] + ".") if text else ""


def _cell(text: str) -> str:
    """A table cell: pipes escaped, ``<word`` escaped so that Markdown does not read it as an HTML tag."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", text.replace("|", "\\|").replace("\n", " "))


def _table(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in (f"`{key}`", typ, f"`{default}`", allowed, desc)) + " |"
              for key, typ, default, allowed, desc in rows]
    return lines


def _config_file(name: str) -> str | None:
    path = ROOT / "configs" / f"{name}_fmnist.yaml"
    return f"[configs/{path.name}](../configs/{path.name})" if path.exists() else None


def render(config=Config, methods=METHODS) -> str:
    """The Markdown text of docs/config.md."""
    top, sections = _sections(config)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/config_reference.py from selfsup/config.py, selfsup/*/*_schema.py and",
        "selfsup/methods/*.py; do not edit by hand: change a description there and run",
        "`python scripts/config_reference.py` (tests/test_docs.py fails when this file is stale). -->",
        "",
        "A run is configured by one YAML file of sections (see [configs/](../configs/)); every command that takes",
        "`--config` also takes `key.sub=value` overrides after it, values parsed as YAML:",
        "",
        "```bash",
        "selfsup pretrain --config configs/simclr_fmnist.yaml train.epochs=2 method.temperature=0.1 name=short",
        "```",
        "",
        "The whole file is validated before any work starts. An unknown key, a wrong type or a value out of bounds",
        "stops the command with one line naming the key, e.g. `config error: train.batch_size: Input should be",
        "greater than 1`. A resolved copy is saved as `config.yaml` in the run directory; `--resume` refuses a",
        "config that differs from it, except in " + ", ".join(f"`{k}`" for k in RESUMABLE_CHANGES) + ".",
        "",
        "Sections: " + ", ".join(f"[`{s}`](#{s})" for s in [*sections[:2], "method", *sections[2:]]) + ".",
        "",
        "## Top level",
        "",
    ]
    out += _table([(k, *describe(config.model_fields[k]), config.model_fields[k].description or "") for k in top])
    order = [*sections[:2], "method", *sections[2:]]
    for sec in order:
        info = config.model_fields[sec]
        if sec == "method":
            out += ["", f"## {sec}", "", _sentence(info.description)] + _method_section(methods)
            continue
        out += _section_text(sec, info, 2)
    out += ["", "## Checks across keys", ""]
    out += [f"- {c}" for c in CROSS_CHECKS]
    out += ["", "## Moved keys", "",
            "Keys that moved to another section are still read, from a YAML file, an override or the `config.yaml` of",
            "an older run directory (so it evaluates, reports and resumes as before), with a warning naming the new",
            "key; a config that sets an old key and its new key to different values is refused.", "",
            "| old key | read as |", "|---|---|"]
    out += [f"| `{old}` | `{new}` |" for old, new in MOVED_KEYS.items()]
    return "\n".join(out) + "\n"


def _section_text(key: str, info: FieldInfo, level: int) -> list[str]:
    """A section's heading, its text and its table of keys, then each of its sub-sections one level down."""
    model = info.annotation
    doc = " ".join((model.__doc__ or "").split()).replace("``", "`")
    own_doc = doc and not doc.startswith(model.__name__ + "(")  # pydantic's generated docstring otherwise
    out = ["", f"{'#' * level} {key}", "", doc if own_doc else _sentence(info.description)]
    keys = [(k, f) for k, f in model.model_fields.items() if not _is_section(f)]
    if keys:
        out += [""] + _table([(f"{key}.{k}", *describe(f, REGISTRIES.get(f"{key}.{k}")), f.description or "")
                              for k, f in keys])
    for k, f in model.model_fields.items():
        if _is_section(f):
            out += _section_text(f"{key}.{k}", f, level + 1)
    return out


def _method_section(methods) -> list[str]:
    default = Config.model_fields["method"].get_default(call_default_factory=True)["name"]
    out = ["", "`method.name` picks the self-supervised method (default `" + default + "`); the other keys of the",
           "section are that method's parameters, listed below (`selfsup methods` prints the same list). Keys of",
           "another method are refused.", "",
           "| `method.name` | views (`augment.recipe: auto`) | what | setting of the method table |",
           "|---|---|---|---|"]
    for name, cls in methods.items():
        out.append(f"| `{name}` | {cls.recipe} | {_cell(DESCRIPTIONS.get(name, ''))} | {_config_file(name) or '—'} |")
    for name, cls in methods.items():
        out += ["", f"### method.name: {name}", ""]
        out += _table([(f"method.{k}", *describe(f), _param_description(f, name, k))
                       for k, f in cls.Params.model_fields.items()])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file is stale (write nothing)")
    ap.add_argument("--stdout", action="store_true", help="print the reference instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT, help=f"file to write or check (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    text = render()
    missing = undocumented()
    if missing:
        print("keys without a description: " + ", ".join(missing), file=sys.stderr)
    if args.stdout:
        sys.stdout.write(text)
        return 1 if missing else 0
    if args.check:
        current = args.out.read_text() if args.out.exists() else None
        if current != text:
            print(f"{args.out} is stale: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 1 if missing else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
