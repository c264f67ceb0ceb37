"""The cluster's size from the Kubernetes API: addresses at start, a restart on a resize.

The API server here is a local HTTP server answering the one request the flow makes
(``GET /apis/apps/v1/namespaces/<ns>/statefulsets/<name>``) with the fields a real one
returns; the bearer token is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lifecycle.cluster import ClusterError, ClusterWatch, StatefulSetRef, addresses, replicas


class _Api(BaseHTTPRequestHandler):
    size = 2
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        _Api.seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        if self.path != "/apis/apps/v1/namespaces/fraud/statefulsets/fraud-score":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"kind": "StatefulSet", "metadata": {"name": "fraud-score"},
                           "spec": {"replicas": _Api.size}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[dict[str, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    account = tmp_path / "account"
    account.mkdir()
    (account / "token").write_text("s3cret\n")
    (account / "namespace").write_text("fraud")
    _Api.size, _Api.seen = 2, []
    yield {"FLOW_KUBERNETES_API": f"http://127.0.0.1:{server.server_address[1]}",
           "FLOW_KUBERNETES_ACCOUNT_DIR": str(account)}
    server.shutdown()


def test_replicas_are_read_with_the_service_account_token(api: dict[str, str]) -> None:
    ref = StatefulSetRef.from_env(api, "fraud-score-1")
    assert (ref.namespace, ref.name) == ("fraud", "fraud-score")
    assert "s3cret" not in repr(ref)
    assert replicas(ref) == 2
    assert _Api.seen[-1][1] == "Bearer s3cret"
    wrong = StatefulSetRef.from_env({**api, "FLOW_STATEFULSET": "other"}, "fraud-score-1")
    with pytest.raises(ClusterError, match="cannot read StatefulSet fraud/other"):
        replicas(wrong)


def test_outside_a_pod_the_template_is_refused_with_the_remedy() -> None:
    with pytest.raises(ClusterError, match="set FLOW_ADDRESSES"):
        StatefulSetRef.from_env({}, "laptop")
    with pytest.raises(ClusterError, match="no {i}"):
        addresses("fraud-score.headless:2101", 2)


def test_a_resize_is_noticed_once_and_a_failed_read_runs_on(api: dict[str, str]) -> None:
    ref = StatefulSetRef.from_env(api, "fraud-score-0")
    resized: list[int] = []
    watch = ClusterWatch(ref, 2, 0.05, resized.append)
    assert watch.check() is None and resized == []
    _Api.size = 3  # the autoscaler added a pod
    assert watch.check() == 3 and resized == [3]
    broken = ClusterWatch(StatefulSetRef.from_env({**api, "FLOW_STATEFULSET": "gone"},
                                                  "fraud-score-0"), 2, 0.05, resized.append)
    assert broken.check() is None and resized == [3]  # unknown: the cluster runs on
    _Api.size = 4
    live = ClusterWatch(ref, 3, 0.02, resized.append).start()
    live._thread.join(5)
    assert resized == [3, 4]


def test_the_entrypoint_helper_prints_the_address_list(api: dict[str, str]) -> None:
    env = {**api, "HOSTNAME": "fraud-score-0", "PATH": "/usr/bin:/bin",
           "FLOW_ADDRESS_TEMPLATE": "fraud-score-{i}.fraud-score-headless:2101"}
    done = subprocess.run([sys.executable, "-m", "lifecycle.cluster", "addresses"], env=env,
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("fraud-score-0.fraud-score-headless:2101;"
                                   "fraud-score-1.fraud-score-headless:2101")


def test_the_flow_watches_only_with_a_template_and_stops_cleanly_on_a_resize(
    api: dict[str, str],
) -> None:
    from lifecycle import process as lifecycle
    from lifecycle.cluster import watch_from_env

    assert watch_from_env(api, 2) is None  # FLOW_ADDRESSES given: a fixed cluster
    env = {**api, "HOSTNAME": "fraud-score-1", "FLOW_ADDRESS_TEMPLATE": "fraud-score-{i}:2101"}
    watch = watch_from_env(env, 2)
    assert watch is not None and watch.interval == 5
    _Api.size = 4
    try:
        assert watch.check() == 4
        request = lifecycle.current_request()
        assert request is not None and not request.fatal
        assert "now has 4 replicas, this cluster 2" in request.reason
    finally:
        lifecycle.reset()  # the test's stop request, not the session's
