"""A throwaway Redis Cluster on free ports: masters (and a replica each, when asked).

    with ThrowawayCluster(masters=3, replicas=1) as cluster:
        settings = make_settings(redis_url=cluster.url)  # redis+cluster://127.0.0.1:p1,...
        cluster.master_of_slot(slot).stop()  # kill -9 a master; its replica takes over

Each node is a `ThrowawayRedis` (own port, own data dir, nothing saved) started with
``--cluster-enabled yes``; `redis-cli --cluster create` assigns the slots. Never touches
the shared Redis on 6379. Both binaries come with Debian's redis-server package.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from types import TracebackType

from tests.support.redis_node import ThrowawayRedis

__all__ = ["ThrowawayCluster", "node_command"]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below the ephemeral range."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def node_command(port: int, *args: str) -> str:
    """One command over a bare socket (RESP inline): the reply's text (a bulk reply whole)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if head.startswith(b"$") and head[1:].isdigit():
            size = int(head[1:])
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return rest[:size].decode(errors="replace")
        return data.decode(errors="replace")


class ThrowawayCluster:
    def __init__(self, *, masters: int = 3, replicas: int = 0, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.replicas = replicas
        args = (
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            # A replica takes over however long it was cut off from its master.
            "--cluster-replica-validity-factor",
            "0",
            # Replicas sync at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay",
            "0",
        )
        self.nodes = [
            ThrowawayRedis(_cluster_port(), extra_args=args)
            for _ in range(masters * (1 + replicas))
        ]
        for node in self.nodes:
            # Each node keeps its cluster config in its own dir.
            node.extra_args = (*args, "--cluster-config-file", str(node.dir / "nodes.conf"))

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> ThrowawayCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("ThrowawayCluster needs redis-cli (apt-get install redis-tools)")
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=self.timeout_s,
        )
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        """Until every running node reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            states = [node_command(n.port, "CLUSTER", "INFO") for n in self.nodes if n.running]
            if states and all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cluster never became ok: {states}")
            time.sleep(0.1)

    def masters(self) -> list[ThrowawayRedis]:
        return [
            n
            for n in self.nodes
            if n.running and "role:master" in node_command(n.port, "INFO", "replication")
        ]

    def master_of_slot(self, slot: int) -> ThrowawayRedis:
        """The running master that serves `slot` now (from ``CLUSTER NODES``)."""
        by_port = {n.port: n for n in self.nodes if n.running}
        for port in by_port:
            for line in node_command(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                node_port = int(fields[1].split("@")[0].rpartition(":")[2])
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return by_port[node_port]
            break
        raise RuntimeError(f"no master serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ThrowawayCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
