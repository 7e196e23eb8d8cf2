"""Rewrite BENCHMARKS.md from the stored results, measuring nothing: every benchmark's sections, then the summary
table that opens the file.

    python -m benchmarks.report [--markdown BENCHMARKS.md] [NAME ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import harness


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"benchmarks to rewrite (default: all: {', '.join(harness.BENCHMARKS)})")
    ap.add_argument("--markdown", type=Path, default=harness.BENCH_MD)
    args = ap.parse_args(argv)
    harness.report(args.names or None, args.markdown)


if __name__ == "__main__":
    main()
