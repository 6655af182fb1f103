"""Regenerate ``benchmarks/results/demo.json``: the ``make bench`` step for the demo.

    python benchmarks/run_demo.py [DEMO OPTIONS...]

Runs ``python -m graphcap demo --json benchmarks/results/demo.json`` with the
demo's default settings (the ones ``make demo`` and the README table use), plus
any demo options given here. ``make demo`` itself writes to the ignored
``runs/`` directory, so that running the demo never changes a committed file;
this step is the one that refreshes the committed result.
"""

from __future__ import annotations

import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    """Run the demo with the given extra options and write its JSON to ``results/demo.json``."""
    from graphcap.__main__ import main as graphcap_main

    extra = sys.argv[1:] if argv is None else argv
    return graphcap_main(["demo", "--json", str(RESULTS / "demo.json"), *extra])


if __name__ == "__main__":
    sys.exit(main())
