"""What TCP connections a process holds, read from /proc (Linux), without any tool.

established(api.pid, remote_port=6379)   # its connections to Redis
established(api.pid, local_port=8000)    # clients connected to it
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["established"]

_ESTABLISHED = "01"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def established(pid: int, *, remote_port: int | None = None, local_port: int | None = None) -> int:
    """How many established TCP connections `pid` owns, to `remote_port` / on `local_port`."""
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state != _ESTABLISHED or inode not in inodes:
                continue
            if remote_port is not None and _port(remote) != remote_port:
                continue
            if local_port is not None and _port(local) != local_port:
                continue
            count += 1
    return count
