"""python -m tests.torture [--short | --long] [--backend sqlite|postgresql|mysql|all] [--seed N]

Runs the torture test and prints one summary line per backend (``all``, the default: each
in turn; ``both`` is an old name for ``all``); exits 1 if a guarantee
broke (the worker logs are then kept and their directory printed).
"""

from __future__ import annotations

import argparse
import sys

from tests.torture import driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.torture", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", dest="profile", action="store_const", const="short")
    size.add_argument("--long", dest="profile", action="store_const", const="long")
    parser.add_argument("--backend", choices=(*driver.WORKERS, "all", "both"), default="all")
    parser.add_argument("--seed", type=int, help="replay the random choices of a run")
    parser.add_argument("--repeat", type=int, default=1, help="run this many times")
    options = parser.parse_args(argv)
    profile = driver.PROFILES[options.profile or "short"]
    every = options.backend in ("all", "both")
    backends = list(driver.WORKERS) if every else [options.backend]
    failed = False
    for _ in range(options.repeat):
        for backend in backends:
            try:
                print(driver.run(backend, profile, options.seed).line(), flush=True)
            except driver.TortureFailure as exc:
                print(f"torture FAILED on {backend}: {exc}", file=sys.stderr, flush=True)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
