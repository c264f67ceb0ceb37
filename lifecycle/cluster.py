"""The cluster's size from Kubernetes: the address list at start, a clean restart on a resize.

A Bytewax cluster's process list is fixed when it starts (``-a host0;host1;...``),
so a StatefulSet scaled by an autoscaler (``k8s/overlays/autoscale``: KEDA on the
flow's consumer lag) must restart as a whole with the new list. With
``FLOW_ADDRESS_TEMPLATE`` set (and ``FLOW_ADDRESSES`` not), each pod:

* at start (``docker/fraud-flow.sh``) asks the Kubernetes API for its StatefulSet's
  ``spec.replicas`` and builds the list from the template
  (``python -m lifecycle.cluster addresses``);
* while it runs (:class:`ClusterWatch`, every ``FLOW_CLUSTER_WATCH_SECONDS``) asks
  again, and when the count differs from its cluster's, requests a clean stop
  (:func:`lifecycle.process.request_stop`: final snapshot, exit 0); Kubernetes
  restarts the container, which joins the resized cluster. Every pod sees the change
  within one interval, so the cluster stops as a whole. Shards that move to another
  pod are rebuilt there from their changelogs (``FRAUD_CHANGELOG=on``,
  :mod:`state.changelog`), so a resize changes no verdict; the verdicts of the last
  snapshot interval may be re-emitted (identical).

The API is read with the pod's service-account token (a Role allowing ``get`` on
its StatefulSet, shipped in the overlay), with the Python standard library.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ClusterError(RuntimeError):
    """The StatefulSet's size cannot be read (no API access, no such StatefulSet)."""


@dataclass(frozen=True)
class StatefulSetRef:
    """Where to ask: the API server, the StatefulSet, and the credentials."""

    api: str
    """``https://host:port`` of the API server."""
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | None

    def __repr__(self) -> str:  # the token is a secret: only its path is shown
        return (f"StatefulSetRef({self.api!r}, {self.namespace!r}, {self.name!r}, "
                f"token_file={str(self.token_file)!r})")

    @classmethod
    def from_env(cls, env: Mapping[str, str], hostname: str) -> StatefulSetRef:
        """From the pod's environment (in-cluster defaults; ``FLOW_KUBERNETES_*`` override).

        ``FLOW_STATEFULSET``: its name (default: the host name without its ``-<ordinal>``).
        """
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        api = env.get("FLOW_KUBERNETES_API") or (f"https://{host}:{port}" if host else "")
        if not api:
            raise ClusterError("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); "
                               "set FLOW_ADDRESSES instead of FLOW_ADDRESS_TEMPLATE")
        account = Path(env.get("FLOW_KUBERNETES_ACCOUNT_DIR", str(_ACCOUNT)))
        namespace = env.get("FLOW_NAMESPACE") or _read(account / "namespace", "default")
        name = env.get("FLOW_STATEFULSET") or hostname.rsplit("-", 1)[0]
        ca = account / "ca.crt"
        return cls(api, namespace, name, account / "token", ca if ca.exists() else None)


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text().strip() or default
    except OSError:
        return default


def replicas(ref: StatefulSetRef, timeout: float = 10.0) -> int:
    """The StatefulSet's ``spec.replicas``; raises :class:`ClusterError` with the reason."""
    url = f"{ref.api}/apis/apps/v1/namespaces/{ref.namespace}/statefulsets/{ref.name}"
    try:
        token = ref.token_file.read_text().strip()
    except OSError as exc:
        raise ClusterError(f"cannot read the service-account token {ref.token_file}: {exc}"
                           ) from exc
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})
    context = (ssl.create_default_context(cafile=str(ref.ca_file))
               if ref.ca_file is not None and url.startswith("https") else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = json.load(response)
    except Exception as exc:  # noqa: BLE001 - one message for every way it fails
        raise ClusterError(f"cannot read StatefulSet {ref.namespace}/{ref.name} at {ref.api}: "
                           f"{exc} (the overlay's Role must allow get on it)") from exc
    try:
        return int(body["spec"]["replicas"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ClusterError(f"StatefulSet {ref.namespace}/{ref.name} has no spec.replicas"
                           ) from exc


def addresses(template: str, count: int) -> str:
    """``template`` (with ``{i}``) for processes 0 .. count-1, joined by ``;``.

    >>> addresses("fraud-score-{i}.fraud-score-headless:2101", 2)
    'fraud-score-0.fraud-score-headless:2101;fraud-score-1.fraud-score-headless:2101'
    """
    if "{i}" not in template:
        raise ClusterError(f"FLOW_ADDRESS_TEMPLATE {template!r} has no {{i}} for the ordinal")
    return ";".join(template.replace("{i}", str(i)) for i in range(count))


class ClusterWatch:
    """Asks the StatefulSet's size every ``interval`` s; on a change, ``on_resize(new)``.

    A failed read is logged (once per failure streak) and the cluster runs on.
    """

    def __init__(self, ref: StatefulSetRef, size: int, interval: float,
                 on_resize: Callable[[int], object],
                 read: Callable[[StatefulSetRef], int] = replicas) -> None:
        self.ref, self.size, self.interval = ref, size, interval
        self._on_resize, self._read = on_resize, read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)
        self._failing = False

    def start(self) -> ClusterWatch:
        """Start asking (a daemon thread)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop asking."""
        self._stop.set()

    def check(self) -> int | None:
        """One look: the new size if it changed (``on_resize`` called), else None."""
        try:
            now = self._read(self.ref)
        except ClusterError as exc:
            if not self._failing:
                log.warning("cluster size unknown, running on with %d processes: %s",
                            self.size, exc)
            self._failing = True
            return None
        self._failing = False
        if now == self.size or now < 1:
            return None
        self._on_resize(now)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.check() is not None:
                return


def watch_from_env(env: Mapping[str, str], processes: int) -> ClusterWatch | None:
    """The flow's watch when its addresses come from ``FLOW_ADDRESS_TEMPLATE`` (else None).

    ``processes``: the size of the cluster this process joined. A resize requests a clean
    stop naming both sizes; ``FLOW_CLUSTER_WATCH_SECONDS`` (default 5) between looks.
    Raises :class:`ClusterError` outside a pod.
    """
    if not env.get("FLOW_ADDRESS_TEMPLATE"):
        return None
    from lifecycle import process as lifecycle

    ref = StatefulSetRef.from_env(env, env.get("HOSTNAME") or os.uname().nodename)
    interval = float(env.get("FLOW_CLUSTER_WATCH_SECONDS") or 5)

    def resized(size: int) -> None:
        lifecycle.request_stop(f"StatefulSet {ref.name} now has {size} replicas, this cluster "
                               f"{processes}: restarting to join the resized cluster")

    return ClusterWatch(ref, processes, interval, resized)


def main(argv: list[str] | None = None) -> int:
    """``python -m lifecycle.cluster addresses``: print the address list (fraud-flow.sh)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["addresses"]:
        print("usage: python -m lifecycle.cluster addresses\n\nPrints FLOW_ADDRESS_TEMPLATE "
              "for every replica of this pod's StatefulSet (read from the Kubernetes API), "
              "joined by ';'.", file=sys.stderr)
        return 2
    env = os.environ
    try:
        ref = StatefulSetRef.from_env(env, env.get("HOSTNAME") or os.uname().nodename)
        print(addresses(env.get("FLOW_ADDRESS_TEMPLATE", ""), replicas(ref)))
    except ClusterError as exc:
        print(f"fraud-flow: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
