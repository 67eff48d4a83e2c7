"""A real RabbitMQ broker for tests: its own temp folder, loopback ports, stopped by its PID.

``RabbitMQ`` runs Debian's broker script (``/usr/lib/rabbitmq/bin/rabbitmq-server``, not the
``/usr/sbin`` wrapper, which changes into ``/var/lib/rabbitmq`` and switches to the system's
``rabbitmq`` user) with every path it writes or reads under its own folder: node data
(``RABBITMQ_MNESIA_BASE``, where quorum queues and persistent messages live), logs, config, an
empty plugin list (no management plugin, so it listens on two ports only: AMQP and Erlang
distribution, both on 127.0.0.1) and ``HOME`` with its own ``.erlang.cookie``, so
``rabbitmqctl`` reaches this node and no other. The node name (``ainode-test-<port>@localhost``)
is unique per instance; the only thing shared with other Erlang nodes is epmd on port 4369,
which the Erlang VM starts by itself (as a daemon, loopback only) when none is running.

The script is a shell that traps SIGTERM and forwards it to the Erlang VM, its child; it runs
in a session of its own, so ``kill()`` (a crash) SIGKILLs the whole process group (our PID).
``start()`` again uses the same ports, node name and data: durable queues and confirmed
persistent messages survive.

Hard-kill caveat (RabbitMQ 3.10 / Ra 2.2): a quorum queue's Ra server is registered in DETS
files written up to ~3 s after the declare; a SIGKILL before that brought the queue back
*empty*, confirms notwithstanding, and one CI run lost them even after the registry was on
disk. Classic durable queues kept every confirmed message: the scale-out queues are classic by
default (``node.jobs.remote.settings.QueueType``).

Tests import the fixtures ``rabbitmq`` (one broker per test) or ``rabbitmq_module`` (one per
module) and carry the ``rabbitmq`` marker; without RabbitMQ installed the fixtures skip with the
reason, and fail where ``CI`` is set::

    from rabbitmq_support import rabbitmq  # noqa: F401 - a fixture

    pytestmark = pytest.mark.rabbitmq

    def test_something(rabbitmq):  # noqa: F811 - the fixture
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import amqp
import pytest

from tests.conftest import free_port, poll_until

RABBITMQ_SERVER = Path(
    os.environ.get("AINODE_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")
)
RABBITMQCTL = RABBITMQ_SERVER.with_name("rabbitmqctl")
EPMD_PORT = 4369
INSTALL_HINT = "apt-get install rabbitmq-server (scripts/install-test-peers.sh)"

CONFIG = """\
loopback_users.guest = true
log.console = false
log.file.level = info
disk_free_limit.absolute = 1MB
"""


class RabbitMQError(RuntimeError):
    """The broker did not start or stop, or rabbitmqctl failed."""


def rabbitmq_available() -> bool:
    return all(os.access(path, os.X_OK) for path in (RABBITMQ_SERVER, RABBITMQCTL))


def require_rabbitmq() -> None:
    """Skip the test when RabbitMQ is not installed; fail it under CI, which installs it."""
    if not rabbitmq_available():
        reason = f"RabbitMQ not found at {RABBITMQ_SERVER}: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def epmd_names() -> set[str] | None:
    """The node names registered with the local epmd (``NAMES_REQ``); None when none runs."""
    try:
        with socket.create_connection(("127.0.0.1", EPMD_PORT), timeout=2) as sock:
            sock.sendall(b"\x00\x01n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return None
    lines = data[4:].decode(errors="replace").splitlines()
    return {line.split()[1] for line in lines if line.startswith("name ")}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class RabbitMQ:
    """One RabbitMQ node with its own data, logs, cookie, AMQP port and distribution port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.dist_port = poll_until(lambda: (port := free_port()) != self.port and port, 5)
        self.name = f"ainode-test-{self.port}"
        self.nodename = f"{self.name}@localhost"
        self.home = self.workdir / "home"
        self.data_dir = self.workdir / "mnesia"
        self.log_dir = self.workdir / "log"
        self.config_path = self.workdir / "rabbitmq.conf"
        self.plugins_path = self.workdir / "enabled_plugins"
        self.stdout_path = self.workdir / "rabbitmq-server.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        """The environment for the broker and for rabbitmqctl: ours replaces any RABBITMQ_*
        or ERL_* setting of the caller."""
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NOTIFY_SOCKET"
        }
        return {
            **base,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.data_dir),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(self.config_path),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.plugins_path),
        }

    # -- life cycle --------------------------------------------------------------------------
    def _prepare(self) -> None:
        for folder in (self.home, self.data_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():  # kept across restarts: the node's data is tied to it
            cookie.write_text(secrets.token_hex(20), encoding="ascii")
            cookie.chmod(0o400)
        self.config_path.write_text(CONFIG, encoding="utf-8")
        self.plugins_path.write_text("[].\n", encoding="utf-8")

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker (again: same ports, name and data) and wait until AMQP answers."""
        if self.running:
            return
        self._prepare()
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env(),
                start_new_session=True,  # its own process group: kill() takes the VM too
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RabbitMQError(
                    f"rabbitmq-server exited with {process.returncode}; log:\n{self.log()}"
                )
            return self._amqp_answers()

        try:
            if poll_until(ready, timeout, interval=0.1):
                return
        except RabbitMQError:
            self.kill()
            raise
        self.kill()
        raise RabbitMQError(f"RabbitMQ not ready after {timeout:.0f}s; log:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully: SIGTERM to our PID (the script stops the VM), SIGKILL at the
        deadline; returns when the node is gone (ports closed, name out of epmd)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self.process = None
        self._wait_gone(timeout)

    def kill(self, timeout: float = 30.0) -> None:
        """Crash: SIGKILL the broker's process group (the script and the Erlang VM) at once."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self._kill_group(process)
        self.process = None
        self._wait_gone(timeout)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # The script is our child and not yet reaped, so its PID (the group's id) is still ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _wait_gone(self, timeout: float) -> None:
        """The VM is the script's child: wait until its ports are closed and its name has
        left epmd, so that a restart can take both again."""

        def gone() -> bool:
            names = epmd_names()
            registered = names is not None and self.name in names
            return not (registered or _listening(self.port) or _listening(self.dist_port))

        if not poll_until(gone, timeout, interval=0.1):
            raise RabbitMQError(f"RabbitMQ {self.nodename} still up {timeout:.0f}s after stop")

    def amqp_connection(self, timeout: float = 5.0) -> amqp.Connection:
        """A py-amqp connection to this broker as guest (not yet connected)."""
        return amqp.Connection(
            f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=timeout
        )

    def _amqp_answers(self) -> bool:
        connection = self.amqp_connection(timeout=2)
        try:
            connection.connect()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            connection.close()
        return True

    # -- inspection ----------------------------------------------------------------------------
    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <this node> args``; its stdout, or RabbitMQError."""
        result = subprocess.run(
            [str(RABBITMQCTL), "-n", self.nodename, *args],
            capture_output=True,
            text=True,
            errors="replace",
            env=self.env(),
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RabbitMQError(
                f"rabbitmqctl {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def queue_depths(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Ready messages per queue, exact at the time of the call: every queue of the default
        vhost (names from ``rabbitmqctl list_queues``) or ``names``, each counted by an AMQP
        passive declare; rabbitmqctl's own counts of quorum queues lag by seconds (periodic
        metrics). A queue that does not exist is left out; one that another connection holds
        exclusively keeps rabbitmqctl's count."""
        listed: dict[str, int] = {}
        if names is None:
            out = self.rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "messages")
            listed = {row["name"]: int(row["messages"]) for row in json.loads(out or "[]")}
            names = list(listed)
        depths: dict[str, int] = {}
        connection = self.amqp_connection()
        connection.connect()
        try:
            channel = connection.channel()
            for name in names:
                try:
                    depths[name] = channel.queue_declare(name, passive=True).message_count
                except amqp.exceptions.NotFound:
                    channel = connection.channel()  # the error closed the channel
                except amqp.exceptions.ResourceLocked:
                    channel = connection.channel()
                    if name in listed:
                        depths[name] = listed[name]
        finally:
            with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
                connection.close()
        return depths

    def log(self, tail: int = 6000) -> str:
        """The end of the script's output and of the node's log, for assertion messages."""
        parts = []
        for path in (self.stdout_path, self.log_dir / f"{self.nodename}.log"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                text = "(none)"
            parts.append(f"--- {path.name}\n{text[-tail:]}")
        return "\n".join(parts)


def rabbitmq_brokers(workdir: Path) -> Iterator:
    """Body of a fixture that yields a function starting brokers under ``workdir`` (skipping
    when RabbitMQ is absent, failing under CI) and stops them all afterwards."""
    require_rabbitmq()
    brokers: list[RabbitMQ] = []

    def make() -> RabbitMQ:
        broker = RabbitMQ(Path(workdir) / f"rabbitmq{len(brokers)}")
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def rabbitmq(tmp_path: Path) -> Iterator[RabbitMQ]:
    """A broker of this test's own (marker ``rabbitmq``)."""
    yield from _one_broker(tmp_path / "rabbitmq")


@pytest.fixture(scope="module")
def rabbitmq_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One broker for the whole module (marker ``rabbitmq``)."""
    yield from _one_broker(tmp_path_factory.mktemp("rabbitmq"))


def _one_broker(workdir: Path) -> Iterator[RabbitMQ]:
    require_rabbitmq()
    broker = RabbitMQ(workdir)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
