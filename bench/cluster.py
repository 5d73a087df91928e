"""A real Redis Cluster on loopback, for tests and the load suite: N masters, no replicas.

`EmbeddedCluster(base_dir).start()` launches N `redis-server --cluster-enabled yes` processes
(the same binary as gateway.store.embedded) on free ports, splits the 16384 slots evenly between them
with CLUSTER ADDSLOTS, introduces them with CLUSTER MEET and waits until every node reports
`cluster_state:ok` and sees every slot served. No `redis-cli --cluster create` is needed. The
servers keep nothing on disk but their cluster config files (no AOF, no RDB); `stop()` ends them.

    with EmbeddedCluster(tmp_dir) as url:   # "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,..."
        ...
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from gateway.store.embedded import ping, redis_server_binary, wait_or_kill

SLOTS = 16384
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_NAME = "redis.log"
BUS_OFFSET = 10000  # a node also listens on port + 10000 for the cluster bus
PORT_RANGE = (20000, 55535)  # Redis refuses a cluster port above 55535
PORT_ATTEMPTS = 50


class ClusterError(RuntimeError):
    """The cluster could not be started or did not converge."""


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) slot ranges, one per master, covering 0..16383 evenly."""
    edges = [SLOTS * i // masters for i in range(masters + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(masters)]


def cluster_port() -> int:
    """A port in PORT_RANGE that is free on 127.0.0.1, with its bus port free too."""
    for _ in range(PORT_ATTEMPTS):
        port = random.randint(*PORT_RANGE)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise ClusterError(f"no free port pair (p, p+{BUS_OFFSET}) found in {PORT_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def node_args(binary: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(binary),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--logfile", str(data_dir / LOG_NAME),
        "--daemonize", "no",
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", "5000",
        "--appendonly", "no",
        "--save", "",
    ]  # fmt: skip


@dataclass(eq=False)
class EmbeddedCluster:
    base_dir: Path
    masters: int = 3
    start_timeout: float = START_TIMEOUT_S
    ports: list[int] = field(default_factory=list, init=False)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False, repr=False)

    @property
    def url(self) -> str:
        if not self.ports:
            raise ClusterError("the cluster is not running")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> str:
        """Start the nodes, form the cluster, wait for it; returns `url`."""
        if self.ports:
            return self.url
        binary = redis_server_binary()
        try:
            for index in range(self.masters):
                self._launch(binary, Path(self.base_dir).resolve() / f"node{index}")
            self._form()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _launch(self, binary: Path, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "nodes.conf").unlink(missing_ok=True)  # a new cluster every start
        port = cluster_port()
        with (data_dir / LOG_NAME).open("ab") as early_log:
            process = subprocess.Popen(
                node_args(binary, data_dir, port), stdin=subprocess.DEVNULL, stdout=early_log, stderr=subprocess.STDOUT
            )
        self._processes.append(process)
        self.ports.append(port)
        deadline = time.monotonic() + self.start_timeout
        while not ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"cluster node on port {port} did not start; see {data_dir / LOG_NAME}")
            time.sleep(0.01)

    def _form(self) -> None:
        clients = [redis.Redis(port=port, decode_responses=True) for port in self.ports]
        try:
            for epoch, (client, (first, last)) in enumerate(zip(clients, slot_ranges(self.masters), strict=True), 1):
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            for port in self.ports[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
            self._converge(clients)
        finally:
            for client in clients:
                client.close()

    def _converge(self, clients: list[redis.Redis]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if all(_settled(client, self.masters) for client in clients):
                return
            time.sleep(0.05)
        raise ClusterError(f"the cluster on ports {self.ports} did not reach cluster_state:ok")

    def stop(self) -> None:
        """SIGTERM every node, wait, SIGKILL as a last resort."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            wait_or_kill(process, STOP_TIMEOUT_S)
        self._processes.clear()
        self.ports.clear()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _settled(client: redis.Redis, masters: int) -> bool:
    """This node says the cluster is ok, knows every master and maps every slot to one."""
    fields = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    if fields.get("cluster_state") != "ok" or int(fields.get("cluster_known_nodes", 0)) != masters:
        return False
    served = sum(int(r[1]) - int(r[0]) + 1 for r in client.execute_command("CLUSTER SLOTS"))
    return served == SLOTS
