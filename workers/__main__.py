"""``python -m workers``: the same as `runrelay worker`."""

from __future__ import annotations

import sys

from shared.errors import ConfigError
from shared.settings import load_settings
from workers.worker import run_worker

if __name__ == "__main__":
    try:
        run_worker(load_settings())
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
