"""Shared helpers for the benchmark scripts: machine description and BENCHMARKS.md section updates."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH_MD = ROOT / "BENCHMARKS.md"


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide which CPU kernels torch can use (fp32 GEMM width, bf16/int8 paths)."""


def cpu() -> tuple[str, list[str]]:
    """The CPU model name (lscpu's "Model name", from /proc/cpuinfo) and which of ISA_FLAGS it has."""
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


def machine() -> str:
    name, flags = cpu()
    missing = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f not in flags]
    isa = "ISA " + (" ".join(flags) or "none of " + "/".join(ISA_FLAGS)) + ("; no " + "/".join(missing) if missing
                                                                             else "")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{name} ({isa}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread"
            f"{'' if torch.get_num_threads() == 1 else 's'})"
            f"{gpu}, Python {platform.python_version()}")


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def _head() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_STARTED_AT = _head()  # the commit when this benchmark process started, i.e. the code it imported


def git_rev() -> str:
    """The commit a benchmark's numbers come from: HEAD when the process started (a record written at the end of a
    long run must not name a commit made while it ran)."""
    return _STARTED_AT


def update_section(key: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- key -->`` markers in BENCHMARKS.md."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = BENCH_MD.read_text() if BENCH_MD.exists() else "# Benchmarks\n\nEvery number here was produced by the command shown with it.\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCH_MD.write_text(text)


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
