from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import devkit.broker as broker_mod
import topics.devbroker as record_mod
from devkit.broker import EmbeddedBroker, connect
from topics.admin import ensure_topics, topic_partitions
from topics.devbroker import DevBrokerState, pid_alive, port_answers
from topics.errors import BrokerError
from topics.registry import TOPICS
from topics.settings import KafkaSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _wait_dead(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _tansu_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"tansu" in cmdline.split(b"\0")[0] and pid_alive(int(entry.name)):
                pids.add(int(entry.name))
    return pids


def test_start_serves_metadata_and_stop_leaves_no_process(tmp_path: Path) -> None:
    with EmbeddedBroker(log_dir=tmp_path) as broker:
        pid = broker.pid
        assert pid is not None and pid in _tansu_pids()
        assert broker.bootstrap.startswith("127.0.0.1:")
        assert broker.log_file.parent == tmp_path and broker.log_file.exists()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.list_topics(timeout=5)
    assert broker.pid is None and not broker.running
    assert _wait_dead(pid, 1.0)
    assert pid not in _tansu_pids()
    assert not port_answers("127.0.0.1", int(broker.bootstrap.rsplit(":", 1)[1]))
    broker.stop()  # idempotent


def _spawn_parent(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    script = textwrap.dedent(
        f"""
        import sys, time
        from devkit.broker import EmbeddedBroker
        b = EmbeddedBroker(log_dir={str(tmp_path)!r}).start()
        print(b.pid, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip().isdigit(), line
    broker_pid = int(line)
    assert pid_alive(broker_pid)
    return child, broker_pid


def test_parent_killed_with_sigkill_takes_its_broker_with_it(tmp_path: Path) -> None:
    child, broker_pid = _spawn_parent(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(5)
    assert _wait_dead(broker_pid, 5.0), f"tansu pid {broker_pid} outlived its parent"


def test_parent_terminated_with_sigterm_stops_its_broker_cleanly(tmp_path: Path) -> None:
    child, broker_pid = _spawn_parent(tmp_path)
    os.kill(child.pid, signal.SIGTERM)
    assert child.wait(10) == 128 + signal.SIGTERM
    assert _wait_dead(broker_pid, 2.0)


def test_killing_the_launcher_of_just_broker_stops_the_broker(tmp_path: Path) -> None:
    """`kill <pid of just>` kills only `just`: its `python -m devkit.broker` child must stop
    its broker too, not keep it running with nobody to stop it."""
    port = broker_mod.free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import subprocess, sys, time
            p = subprocess.Popen([sys.executable, "-m", "devkit.broker", "--port", "{port}",
                                  "--no-topics", "--log-dir", {str(tmp_path)!r}])
            print(p.pid, flush=True)
            time.sleep(120)
            """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    cli_pid = int(launcher.stdout.readline())
    deadline = time.monotonic() + 30
    while not port_answers("127.0.0.1", port):
        assert time.monotonic() < deadline and pid_alive(cli_pid), "the broker never served"
        time.sleep(0.1)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait(5)
    assert _wait_dead(cli_pid, 10.0), "python -m devkit.broker outlived its launcher"
    deadline = time.monotonic() + 5
    while port_answers("127.0.0.1", port):
        assert time.monotonic() < deadline, "the broker outlived its launcher"
        time.sleep(0.1)
    state = DevBrokerState.read(record_mod.state_file())
    assert state is None or state.pid != cli_pid  # its state file was removed


def test_start_failure_is_a_broker_error_naming_the_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        broker = EmbeddedBroker(port, log_dir=tmp_path, startup_timeout=3.0)
        with pytest.raises(BrokerError) as err:
            broker.start()
    assert str(tmp_path / f"tansu-{port}.log") in str(err.value)
    assert not broker.running and _tansu_pids().isdisjoint({broker.pid})


def test_connect_prefers_the_environment(kafka: KafkaSettings) -> None:
    with connect(kafka) as settings:
        assert settings is kafka


def test_connect_uses_a_running_dev_broker(
    kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kafka.bootstrap_servers
    state_path = tmp_path / "broker.json"
    monkeypatch.setattr(record_mod, "state_file", lambda: state_path)
    DevBrokerState(kafka.bootstrap_servers, os.getpid(), os.getpid(), "log").write(state_path)
    with connect(dataclasses.replace(kafka, bootstrap_servers=None)) as settings:
        assert settings.bootstrap_servers == kafka.bootstrap_servers
    # A stale file (dead pid) is ignored: an embedded broker starts instead.
    dead = subprocess.Popen(["true"])
    dead.wait()
    DevBrokerState(kafka.bootstrap_servers, dead.pid, dead.pid, "log").write(state_path)
    assert record_mod.running_dev_broker(state_path) is None


def test_connect_starts_an_embedded_broker_for_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(record_mod, "state_file", lambda: tmp_path / "none.json")
    monkeypatch.setattr(broker_mod, "dev_dir", lambda: tmp_path)
    with connect(KafkaSettings(None)) as settings:
        assert settings.bootstrap_servers
        assert set(topic_partitions(settings)) >= set(TOPICS)
    host, port = settings.bootstrap_servers.rsplit(":", 1)
    assert not port_answers(host, int(port))
    err = capsys.readouterr().err
    assert f"started embedded broker on {settings.bootstrap_servers}" in err
    assert "just broker" in err
    assert not list(tmp_path.glob("tansu-*.log"))  # clean stop removes the throwaway log


def test_ensure_topics_is_idempotent(topics: KafkaSettings) -> None:
    # The fixture already created them once.
    again = ensure_topics(topics)
    assert again == {topics.topic(name): "exists" for name in TOPICS}
    found = topic_partitions(topics)
    for name, spec in TOPICS.items():
        assert found[topics.topic(name)] == spec.partitions


def test_ensure_topics_creates_and_reports_fewer_partitions(
    kafka: KafkaSettings, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(kafka, topic_prefix=topic_prefix)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    admin.create_topics([NewTopic(settings.topic("transactions"), 2)])[
        settings.topic("transactions")
    ].result(10)
    with caplog.at_level(logging.WARNING, logger="topics.admin"):
        result = ensure_topics(settings)
    assert result.pop(settings.topic("transactions")) == "exists"
    assert set(result.values()) == {"created"}
    assert "has 2 partitions, the registry wants 8" in caplog.text
    assert topic_partitions(settings)[settings.topic("drift")] == 1
