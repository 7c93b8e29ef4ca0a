"""RabbitMQ for tests: a throwaway vhost on the shared broker, or a throwaway node of our own.

    with temp_vhost() as url:            # amqp://guest:guest@127.0.0.1:5672/rrtest-1a2b...
        ...

    with rabbit_node() as node:          # our own rabbitmq-server, free to stop and restart
        broker = RabbitBroker(node.url)
        node.stop()                      # or node.kill() for a crash
        node.start()                     # same port, node name and data: messages survive

    with rabbit_cluster(3) as nodes:     # three of our own nodes, clustered (one cookie)
        nodes[0].kill()                  # the others go on; quorum queues elect a leader

Never touches the machine's shared broker beyond adding and deleting vhosts; a
node is stopped through its own node name or its own process group, never by
process name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_AMQP_URL",
    "RabbitNode",
    "rabbit_cluster",
    "rabbit_node",
    "rabbitmqctl",
    "temp_vhost",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_SBIN = Path("/usr/lib/rabbitmq/bin")
_MACHINE_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")


def _tool(name: str) -> str:
    # The /usr/sbin wrappers su to the rabbitmq user, which cannot read our tmp dirs.
    direct = _SBIN / name
    return str(direct) if direct.exists() else name


def _cookie_home(under: Path, cookie: str | None = None) -> Path:
    """A HOME holding the Erlang cookie (`cookie`, else the machine's), so the CLI may
    talk to the nodes — and nodes with the same cookie may cluster."""
    home = under / "home"
    home.mkdir(parents=True, exist_ok=True)
    path = home / ".erlang.cookie"
    if cookie is not None:
        path.write_text(cookie)
        path.chmod(0o600)
    elif _MACHINE_COOKIE.exists() and not path.exists():
        shutil.copyfile(_MACHINE_COOKIE, path)
        path.chmod(0o600)
    return home


def rabbitmqctl(*args: str, node: str | None = None, home: Path | None = None) -> str:
    """Run rabbitmqctl (against `node`, default the machine's node); return its stdout."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = _cookie_home(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        command = [_tool("rabbitmqctl"), "-q", *(["-n", node] if node else []), *args]
        done = subprocess.run(
            command,
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            timeout=60,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode().strip()}"
        )
    return done.stdout.decode()


def _with_vhost(base_url: str, vhost: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@contextlib.contextmanager
def temp_vhost(base_url: str = DEFAULT_AMQP_URL, *, prefix: str = "rrtest-") -> Iterator[str]:
    """A fresh vhost on the local broker, all rights for the URL's user; yields its AMQP URL."""
    vhost = f"{prefix}{uuid.uuid4().hex[:10]}"
    user = unquote(urlsplit(base_url).username or "guest")
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield _with_vhost(base_url, vhost)
    finally:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError, OSError):
            rabbitmqctl("delete_vhost", vhost)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _amqp_answers(port: int) -> bool:
    """The node speaks AMQP: it answers the protocol header with Connection.Start.

    A listening port is not enough: a booting node accepts and then resets until its
    boot steps are done (seen after a kill -9, while it recovers its queues).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"  # a method frame
    except OSError:
        return False


class RabbitNode:
    """A rabbitmq-server of our own in `root`; `start()` and `stop()` as often as needed."""

    def __init__(self, root: Path, *, cookie: str | None = None) -> None:
        self.root = root
        self.port = _free_port()
        self.dist_port = _free_port()
        self.nodename = f"rr-test-{uuid.uuid4().hex[:8]}@localhost"
        self.home = _cookie_home(root, cookie)
        self.log_path = root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        conf = root / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        self._env = {
            **os.environ,
            "HOME": str(self.home),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the node (same port, name and data as before) and wait until it speaks AMQP."""
        if self.running():
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [_tool("rabbitmq-server")],
                env=self._env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one on teardown
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not _amqp_answers(self.port):
            if not self.running():
                raise RuntimeError(f"rabbitmq-server exited early; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rabbitmq-server not listening after {timeout_s}s")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> None:
        """A clean shutdown through this node's own name; a kill if that does not work."""
        if not self.running():
            return
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            rabbitmqctl("stop", node=self.nodename, home=self.home)
        assert self._process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=timeout_s)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the node's whole process group (a crash; also the teardown backstop)."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def rabbit_node() -> Iterator[RabbitNode]:
    """A started throwaway node; stopped, killed and its directory removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="rr-rabbit-"))
    node = RabbitNode(root)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def rabbit_cluster(size: int = 3) -> Iterator[list[RabbitNode]]:
    """`size` started throwaway nodes clustered with the first; all torn down on exit.

    The nodes boot in parallel (each takes seconds); then every other node leaves
    its own one-node cluster for the first's (`stop_app`, `join_cluster`, `start_app`).
    """
    cookie = secrets.token_hex(16)
    roots = [Path(tempfile.mkdtemp(prefix="rr-rabbit-")) for _ in range(size)]
    nodes = [RabbitNode(root, cookie=cookie) for root in roots]
    first = nodes[0]

    def join(node: RabbitNode) -> None:
        for args in (("stop_app",), ("join_cluster", first.nodename), ("start_app",)):
            rabbitmqctl(*args, node=node.nodename, home=node.home)

    try:
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(RabbitNode.start, nodes))
            list(pool.map(join, nodes[1:]))
        yield nodes
    finally:
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(RabbitNode.kill, nodes))  # a throwaway cluster: no orderly leave
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
