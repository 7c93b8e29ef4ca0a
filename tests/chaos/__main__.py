"""``python -m tests.chaos [--seconds N] [--seed S]``: one chaos run; exit 1 on any violation.

`scripts/chaos` runs this with the test backends set up. The Redis it uses is
``RUNRELAY_TEST_REDIS_URL`` (under a key prefix of the run's own, deleted afterwards);
RabbitMQ is a throwaway node of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from tests.chaos.run import chaos


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="workload and faults (60)")
    parser.add_argument("--seed", type=int, default=1, help="what faults, when and where (1)")
    parser.add_argument("--rate", type=float, default=1.0, help="runs created per second (1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every fault")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    redis_url = os.environ.get("RUNRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    result = asyncio.run(chaos(redis_url, seconds=args.seconds, seed=args.seed, rate=args.rate))
    print(result.report())
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
