"""A real single-node Apache Kafka broker (KRaft, no ZooKeeper) for tests and benchmarks.

The embedded Tansu broker (:mod:`devkit.broker`) is light but is not Kafka; this
module runs the real thing when a test or a benchmark must see Kafka's own
behaviour. Nothing is downloaded except through Maven:

* :func:`install` resolves ``org.apache.kafka:kafka_2.13:<version>`` (it pulls
  ``kafka-server``, ``kafka-storage``, ``kafka-raft``, ``kafka-metadata``,
  ``kafka-clients``, Scala, ...) plus log4j2 from Maven Central with
  ``mvn dependency:copy-dependencies`` into ``<cache>/libs`` (46 jars, 43 MB),
  once. The cache is ``$FRAUD_KAFKA_CACHE`` if set, else
  ``~/.cache/fraudstream/apache-kafka-<version>/``, outside the repository;
  Maven's own repository (``~/.m2``) keeps the downloads too.
* :class:`ApacheKafka` formats a fresh storage directory (``kafka.tools.StorageTool
  format`` with a random cluster id) and runs ``kafka.Kafka`` as a combined
  broker+controller on ``127.0.0.1``, as a child process that dies with its
  parent (:mod:`devkit.deathsig`). Kafka logs WARN and above to
  ``<log_dir>/server.log``; JVM output goes to ``<log_dir>/stdout.log``.

* With ``scram_users`` (``--scram-user NAME[:PASSWORD]``) the client listener is
  ``SASL_PLAINTEXT`` with SCRAM-SHA-512 only, and the KRaft ``StandardAuthorizer``
  decides every request: nothing is allowed without an ACL
  (``allow.everyone.if.no.acl.found=false``) except to the super user
  :data:`ADMIN_USER`, whose password is random per start (:attr:`ApacheKafka.admin_password`).
  The users' SCRAM credentials are written at format time (``kafka-storage format
  --add-scram``); :meth:`ApacheKafka.client_options` gives a user's librdkafka options.
  The controller listener authenticates the broker with SASL/PLAIN as the super user
  (KRaft cannot check SCRAM there: the credentials live in the metadata it serves).
  Without ``scram_users`` nothing changes: PLAINTEXT, no authorizer. ACLs are the
  caller's (``docs/kafka-acls.md``, ``tests/integration/test_kafka_acls.py``).

``python -m devkit.apache_kafka`` runs one in the foreground (``--help``).

Measured on the 2-core development machine (Kafka 4.1.1, OpenJDK 17, 512 MB heap,
with other tests running beside it, so figures vary): first install 20 s with
an empty ``~/.m2`` (5 s when Maven already has the jars); start-up, format
included, 5-7 s until metadata is served (format 1.5 s, broker 3.5-5 s); idle
broker RSS about 330 MB; idle CPU about 3-4 % of one core; a clean SIGTERM
shutdown takes about 1.5-2 s.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devkit import child
from devkit.broker import HOST, free_port
from devkit.deathsig import orphan_safe, stop_with_parent
from topics.devbroker import port_answers
from topics.errors import BrokerError
from topics.settings import BOOTSTRAP_ENV

KAFKA_VERSION = "4.1.1"
#: log4j2 matching Kafka 4.1's own distribution; Kafka logs through slf4j 1.7.
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE_ENV = "FRAUD_KAFKA_CACHE"
#: G1 with short pauses, as Kafka's scripts use; C1 only (``TieredStopAtLevel=1``):
#: starts 1.5-2 s sooner, idles with less CPU and memory, and gave the same
#: throughput to a Python client here (``jvm_options=["-XX:TieredStopAtLevel=4"]``
#: restores the C2 compiler).
BROKER_JVM_OPTIONS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:TieredStopAtLevel=1")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")
_STAMP = ".installed"  # written last: its presence (with the version inside) means complete
#: The super user of a broker started with ``scram_users`` (the broker itself, and admin tools).
ADMIN_USER = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_USER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KafkaInstallError(BrokerError):
    """Maven (or Java) is missing or could not resolve the Kafka jars; the message says which."""


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where :func:`install` keeps the jars: ``$FRAUD_KAFKA_CACHE`` or the per-user cache."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fraudstream" / f"apache-kafka-{version}"


def _pom(version: str) -> str:
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    xml = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>local.fraudstream</groupId><artifactId>apache-kafka-jars</artifactId>"
        f"<version>1</version><packaging>pom</packaging><dependencies>{xml}</dependencies>"
        "</project>"
    )


def _installed(libs: Path, version: str) -> bool:
    stamp = libs.parent / _STAMP
    try:
        return stamp.read_text().strip() == version and any(libs.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def install(cache: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """Resolve the broker's jars once; return the directory holding them (``<cache>/libs``).

    Idempotent and safe to call from several processes at once (a file lock);
    returns at once when the jars are there. ``cache`` defaults to
    :func:`cache_dir`. Raises :class:`KafkaInstallError` naming what failed,
    with the tail of Maven's output, when ``mvn`` is missing or fails (no
    network to Maven Central, unknown version, ...), or after 15 minutes.
    """
    cache = Path(cache) if cache is not None else cache_dir(version)
    libs = cache / "libs"
    if _installed(libs, version):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaInstallError(
            f"cannot install Apache Kafka {version}: `mvn` (Maven) is not on PATH; "
            "install Maven (Debian: apt-get install maven)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing: wait for it
        if _installed(libs, version):
            return libs
        (cache / _STAMP).unlink(missing_ok=True)
        partial = cache / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="fraudstream-kafka-pom-") as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_pom(version))
            command = [
                mvn, "-q", "-B", "-f", str(pom),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
            ]  # fmt: skip
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired as exc:
                raise KafkaInstallError(
                    f"`mvn dependency:copy-dependencies` for Apache Kafka {version} took more "
                    "than 900 s; is Maven Central reachable?"
                ) from exc
        if done.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            tail = "\n".join(_ANSI.sub("", done.stdout + done.stderr).splitlines()[-25:])
            shutil.rmtree(partial, ignore_errors=True)
            raise KafkaInstallError(
                f"`mvn dependency:copy-dependencies` could not resolve "
                f"org.apache.kafka:kafka_2.13:{version} (exit code {done.returncode}); "
                f"check the version and that Maven Central is reachable. Maven said:\n{tail}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        (cache / _STAMP).write_text(version)
    return libs


def _cluster_id() -> str:
    """A random Kafka cluster id: 16 bytes, URL-safe base64 without padding (22 characters)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() avoids these too
            return text


class ApacheKafka:
    """A single-node Apache Kafka (broker+controller, KRaft) child process on ``127.0.0.1``.

    Use as a context manager; ``bootstrap`` is ``127.0.0.1:PORT``. Every start
    formats a fresh ``<log_dir>/data`` (topics do not survive a restart). With
    ``log_dir=None`` a temporary directory is used and deleted at :meth:`stop`
    (kept if start-up failed, for its logs). ``heap`` is the JVM's ``-Xmx``/``-Xms``
    (``"512m"``, ``"1g"``); ``jvm_options`` follow :data:`BROKER_JVM_OPTIONS` and
    override them. ``scram_users`` (user name to password) turns on SASL/SCRAM and
    the ACL authorizer (see the module docstring); :data:`ADMIN_USER` is added as
    the super user. Errors are :class:`~topics.errors.BrokerError`
    (:class:`KafkaInstallError` when the jars cannot be had).
    """

    def __init__(
        self,
        log_dir: Path | str | None = None,
        port: int | None = None,
        heap: str = "512m",
        *,
        jvm_options: Sequence[str] = (),
        startup_timeout: float = 60.0,
        version: str = KAFKA_VERSION,
        scram_users: Mapping[str, str] | None = None,
    ) -> None:
        self.requested_port = port
        self.port = port or 0
        self.controller_port = 0
        self.heap = heap
        self.jvm_options = tuple(jvm_options)
        self.startup_timeout = startup_timeout
        self.version = version
        self._temporary = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else Path()
        self._process: subprocess.Popen[bytes] | None = None
        self._failed = False
        self.users: dict[str, str] | None = None
        if scram_users is not None:
            self.users = {ADMIN_USER: secrets.token_hex(16), **scram_users}
            for name, password in self.users.items():
                # they go into a properties file and a --add-scram argument unquoted
                if not _USER_NAME.match(name) or not _USER_NAME.match(password):
                    raise ValueError(f"SCRAM user {name!r}: use 1-64 letters, digits, '.', "
                                     "'_' or '-' for the name and the password")

    @property
    def secured(self) -> bool:
        """True when the broker requires SASL/SCRAM and checks ACLs."""
        return self.users is not None

    @property
    def admin_password(self) -> str:
        """The super user's password (random per instance); only with ``scram_users``."""
        if self.users is None:
            raise BrokerError("this broker has no SASL users (start it with scram_users)")
        return self.users[ADMIN_USER]

    def client_options(self, user: str = ADMIN_USER,
                       password: str | None = None) -> dict[str, str]:
        """The librdkafka options to log in as ``user`` (``password`` defaults to the known one).

        ``{}`` on a broker without SASL, so callers can always merge them.
        """
        if self.users is None:
            return {}
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": SCRAM_MECHANISM,
                "sasl.username": user,
                "sasl.password": self.users.get(user, "") if password is None else password}

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Kafka's own log (log4j2, WARN and above)."""
        return self.log_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """Process id of the broker's JVM, while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> ApacheKafka:
        """Install if need be, format, start, and wait until metadata is served.

        Raises :class:`~topics.errors.BrokerError` with the log tail if the broker
        exits or is not ready within ``startup_timeout`` seconds.
        """
        if self._process is not None:
            return self
        java = shutil.which("java")
        if java is None:
            raise BrokerError("cannot start Apache Kafka: `java` is not on PATH (JDK 17+ needed)")
        libs = install(version=self.version)
        if self._temporary:
            self.log_dir = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.requested_port else 3  # a free port can be taken meanwhile
        for attempt in range(attempts):
            self.port = self.requested_port or free_port()
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
            properties = self._configure()
            self._format(java, libs, properties)
            self._spawn(java, libs, properties)
            try:
                self._wait_ready()
                return self
            except BrokerError:
                exited = self._process is not None and self._process.poll() is not None
                self._failed = True
                self.stop()
                if not exited or attempt == attempts - 1:
                    raise
                self._failed = False
        raise AssertionError("unreachable")

    def _configure(self) -> Path:
        data = self.log_dir / "data"
        shutil.rmtree(data, ignore_errors=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "offsets.topic.replication.factor": "1",
            # not 50: librdkafka looks up a coordinator for every consumer's group.id (even
            # one that only assigns), and the first lookup creates this topic (1 s, not 5-10)
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
        }
        if self.users is not None:
            settings.update(self._sasl_settings())
        properties = self.log_dir / "server.properties"
        properties.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.log_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = warn\n"
            "rootLogger.appenderRef.file.ref = file\n"
        )
        return properties

    def _sasl_settings(self) -> dict[str, str]:
        """SASL_PLAINTEXT/SCRAM for clients and the broker itself, PLAIN for the controller."""
        admin = self.admin_password
        scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{ADMIN_USER}" password="{admin}";')
        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{ADMIN_USER}" password="{admin}" user_{ADMIN_USER}="{admin}";')
        return {
            "listeners": f"SASL_PLAINTEXT://{HOST}:{self.port},"
                         f"CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,"
                                              "CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"listener.name.sasl_plaintext.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram,
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "authorizer.class.name": AUTHORIZER,
            "super.users": f"User:{ADMIN_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _java(self, java: str, libs: Path, *options: str) -> list[str]:
        return [
            java, *options, "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*",
        ]  # fmt: skip

    def _format(self, java: str, libs: Path, properties: Path) -> None:
        # A short-lived tool: C1 alone runs it in 1.4 s instead of 2 s.
        command = self._java(java, libs, "-Xmx256m", "-XX:TieredStopAtLevel=1")
        command += ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(properties)]
        for name, password in (self.users or {}).items():
            command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"`kafka-storage format` took more than 60 s in {self.log_dir}"
            ) from exc
        if done.returncode != 0:
            raise BrokerError(
                f"`kafka-storage format` failed (exit code {done.returncode}) in {self.log_dir}:\n"
                + "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            )

    def _spawn(self, java: str, libs: Path, properties: Path) -> None:
        heap = [f"-Xmx{self.heap}", f"-Xms{self.heap}"]
        options = [*heap, *BROKER_JVM_OPTIONS, *self.jvm_options]  # the last of a flag wins
        command = [*self._java(java, libs, *options), "kafka.Kafka", str(properties)]
        with open(self.log_dir / "stdout.log", "wb") as out:
            self._process = subprocess.Popen(
                orphan_safe(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
            )
        child.track(self)  # stopped at exit; SIGTERM unwinds like Ctrl-C

    def _wait_ready(self) -> None:
        assert self._process is not None
        where = lambda: f"{self.log_dir}:\n{self.log_tail()}"  # noqa: E731
        if self.users is None:
            child.wait_serving(self._process, HOST, self.port, self.startup_timeout,
                               name="Apache Kafka", need_broker=True, pause=0.1, where=where)
        else:
            self._wait_ready_as_admin(where)

    def _wait_ready_as_admin(self, where: Callable[[], str]) -> None:
        """:func:`devkit.child.wait_serving`, logged in as the super user."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        admin = None
        last: object = "port closed"
        while True:
            if self._process.poll() is not None:
                raise BrokerError(f"Apache Kafka exited with code {self._process.returncode} "
                                  f"during start-up; see {where()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"Apache Kafka on {self.bootstrap} was not ready within "
                                  f"{self.startup_timeout:g} s ({last}); see {where()}")
            if admin is None and port_answers(HOST, self.port, timeout=0.2):
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0,
                                     **self.client_options()})
            if admin is not None:
                try:
                    if admin.list_topics(timeout=1.0).brokers:
                        return
                    last = "no broker registered yet"
                except KafkaException as exc:
                    last = exc
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of Kafka's log, then of the JVM's output, for error messages.

        Java stack frames are left out, so the messages and their causes remain.
        """
        parts = []
        for path in (self.log_file, self.log_dir / "stdout.log"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    kept = [line for line in text.splitlines() if not _STACK_FRAME.match(line)]
                    parts.append(f"--- {path.name}\n" + "\n".join(kept[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Kafka's clean shutdown), wait up to ``timeout`` s, then SIGKILL; idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is not None:
            self._failed = True  # it died on its own: keep its logs
        child.stop_process(process, signal.SIGTERM, timeout)
        child.untrack(self)
        self._process = None
        if self._temporary and not self._failed:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.apache_kafka",
        description=(
            "Run a real single-node Apache Kafka broker (KRaft, broker+controller) on "
            "127.0.0.1 in the foreground, for tests and benchmarks that need Kafka rather "
            "than the embedded Tansu broker. The jars come from Maven Central through `mvn`, "
            "once, into a cache outside the repository. Every start is a fresh, empty cluster "
            "(auto.create.topics.enable=false). Ctrl-C or SIGTERM stops it cleanly."
        ),
        epilog=(
            f"environment: {CACHE_ENV} is the jar cache directory (default: "
            f"~/.cache/fraudstream/apache-kafka-{KAFKA_VERSION}). Point other commands at the "
            f"broker with the printed `export {BOOTSTRAP_ENV}=...`; `just topics` then creates "
            "the registry topics on it."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=None,
        help="PLAINTEXT port to listen on (default: a free port chosen by the OS)",
    )  # fmt: skip
    parser.add_argument(
        "--log-dir", type=Path, default=None,
        help="directory for the config, logs and data, kept after exit "
        "(default: a temporary directory deleted at exit)",
    )  # fmt: skip
    parser.add_argument(
        "--heap", default="512m", help="JVM heap, -Xmx and -Xms (default: 512m)"
    )  # fmt: skip
    parser.add_argument(
        "--jvm-option", action="append", default=[], metavar="OPTION",
        help="extra JVM option, repeatable; overrides the defaults "
        f"({' '.join(BROKER_JVM_OPTIONS)}), e.g. --jvm-option=-XX:TieredStopAtLevel=4",
    )  # fmt: skip
    parser.add_argument(
        "--version", default=KAFKA_VERSION, dest="kafka_version",
        help=f"Kafka version from Maven Central (default: {KAFKA_VERSION})",
    )  # fmt: skip
    parser.add_argument(
        "--scram-user", action="append", default=None, metavar="NAME[:PASSWORD]",
        help="repeatable: require SASL_PLAINTEXT/SCRAM-SHA-512 and check ACLs "
        f"(StandardAuthorizer), with this user (random password if none given) and the super "
        f"user {ADMIN_USER!r}; every password is printed (docs/kafka-acls.md)",
    )  # fmt: skip
    parser.add_argument(
        "--install-only", action="store_true",
        help="only resolve the jars into the cache (what CI runs), print their directory, exit",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devkit.apache_kafka``; returns the exit code."""
    args = _parse_args(argv)
    # Ctrl-C, SIGTERM and the death of our parent (`just`) stop the broker cleanly
    if threading.current_thread() is threading.main_thread():
        stop_with_parent()
    try:
        if args.install_only:
            started = time.monotonic()
            libs = install(version=args.kafka_version)
            print(f"Apache Kafka {args.kafka_version} jars in {libs} "
                  f"({time.monotonic() - started:.1f} s)")  # fmt: skip
            return 0
        users = None
        if args.scram_user is not None:
            users = {}
            for spec in args.scram_user:
                name, _, password = spec.partition(":")
                users[name] = password or secrets.token_hex(16)
        broker = ApacheKafka(
            args.log_dir,
            args.port,
            args.heap,
            jvm_options=args.jvm_option,
            version=args.kafka_version,
            scram_users=users,
        )
        started = time.monotonic()
        with broker:
            print(f"Apache Kafka {args.kafka_version} ready on {broker.bootstrap} in "
                  f"{time.monotonic() - started:.1f} s (pid {broker.pid}, logs: {broker.log_dir})",
                  flush=True)  # fmt: skip
            print(f"export {BOOTSTRAP_ENV}={broker.bootstrap}", flush=True)
            for name, password in (broker.users or {}).items():
                print(f"SASL user {name} password {password} ({SCRAM_MECHANISM}; as env: "
                      "FRAUD_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
                      f"FRAUD_KAFKA_SASL_MECHANISM={SCRAM_MECHANISM} "
                      f"FRAUD_KAFKA_SASL_USERNAME={name} FRAUD_KAFKA_SASL_PASSWORD=...)",
                      flush=True)
            print("Ctrl-C to stop.", file=sys.stderr, flush=True)
            while broker.running:
                time.sleep(0.5)
            print(f"the broker exited unexpectedly; see {broker.log_dir}", file=sys.stderr)
            return 1
    except (KeyboardInterrupt, SystemExit):  # SystemExit: SIGTERM, see devkit.child.track
        print("\nbroker stopped.", file=sys.stderr)
        return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
