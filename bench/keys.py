"""Key prefixes for a bench's data on the machine's shared Redis, deleted when it exits.

prefix = bench_prefix()           # "rrbench:<8 hex>:", gone at exit
key = bench_prefix("rrbench:{{x{}}}:ref")  # any shape with one {} for the id
"""

from __future__ import annotations

import atexit
import os
import sys
import uuid

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def bench_prefix(shape: str = "rrbench:{}:", redis_url: str = REDIS_URL) -> str:
    prefix = shape.format(uuid.uuid4().hex[:8])
    atexit.register(forget, redis_url, prefix)
    return prefix


def forget(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` (benches share the machine's Redis)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for at in range(0, len(keys), 1000):
            client.unlink(*keys[at : at + 1000])
    except redis.RedisError as exc:
        print(f"bench: could not delete the {prefix}* keys: {exc}", file=sys.stderr)
    finally:
        client.close()
