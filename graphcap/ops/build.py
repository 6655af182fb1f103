"""``python -m graphcap.ops.build``: compile graphcap's C++ ops into the build cache.

Prints where the library is and how many seconds the compile took (0.0 when
the cached library for the current sources was reused). ``make op`` runs this.
"""

from __future__ import annotations

import argparse
import sys

from graphcap.errors import OpBuildError
from graphcap.ops._loader import build, load_ops


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the ops library, load it once as a smoke check, print the build time."""
    parser = argparse.ArgumentParser(prog="python -m graphcap.ops.build", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cached library exists")
    parser.add_argument("--verbose", action="store_true", help="show the compiler output")
    args = parser.parse_args(argv)
    try:
        path, seconds = build(force=args.force, verbose=args.verbose)
        load_ops()
    except OpBuildError as exc:
        print(f"graphcap.ops.build: {exc}", file=sys.stderr)
        return 1
    state = f"built in {seconds:.1f} s" if seconds > 0 else "up to date (cached, 0.0 s)"
    print(f"graphcap ops {state}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
