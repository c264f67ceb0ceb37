"""Model lifecycle on top of the registry: states, champion history, shadow link, audit log.

States per published version (``models/lifecycle.json``, rewritten atomically):

- ``candidate``: published, passed its gates, not serving;
- ``shadow``: the challenger; ``models/shadow`` points at it (set the flow's
  ``FRAUD_SHADOW_MODEL_PATH=models/shadow``): scored beside the champion, never decides;
- ``champion``: ``models/current`` points at it; the flow serves it;
- ``retired``: a former champion (rollback goes back through these, newest first);
- ``rejected``: failed a gate at export; never moved ``models/current``.

``models/current`` and ``models/shadow`` move by ``os.replace`` of a fresh symlink, so
a running flow hot-reloads (:mod:`flows.serving`) and never sees a half-moved link.
Every change appends one JSON line to ``models/audit.jsonl``: ``time`` (UTC),
``user``, ``host``, ``action``, ``version``, states before and after, ``reason``,
``forced`` and the gate summary. Changes are serialised by an exclusive ``flock`` on
``models/.lifecycle.lock``.

Registries older than this file are read as they are: the version ``current``
points at is the champion, the others are candidates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.errors import LifecycleError, RegistryError
from export.gates import GateReport
from export.model import MODEL_FILE
from export.registry import CURRENT, ModelRegistry

STATES = ("candidate", "shadow", "champion", "retired", "rejected")
STATE_FILE = "lifecycle.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = ".lifecycle.lock"

#: Called after each change: ``(version, state, aliases)`` where aliases maps
#: ``champion``/``challenger`` to a version or None (for the MLflow registry).
Listener = Callable[[str, str, dict[str, str | None]], None]


def now_utc() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Actor:
    """Who makes a change: login name and host (recorded in the audit log)."""

    user: str
    host: str

    @classmethod
    def current(cls) -> Actor:
        """The user running this process and this host."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid-{os.getuid()}"
        return cls(user, socket.gethostname())


@dataclass
class VersionRecord:
    """Lifecycle facts of one version."""

    state: str
    created: str = ""
    updated: str = ""
    gates: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"state": self.state, "created": self.created, "updated": self.updated,
                "gates": self.gates, "metrics": self.metrics, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["state"]), str(d.get("created", "")), str(d.get("updated", "")),
                   d.get("gates"), dict(d.get("metrics", {})), dict(d.get("extra", {})))


class Lifecycle:
    """States, champion history and audit of the registry at ``root``."""

    def __init__(
        self, root: Path, actor: Actor | None = None, listeners: list[Listener] | None = None
    ) -> None:
        self.registry = ModelRegistry(root)
        self.root = self.registry.root
        self.actor = actor or Actor.current()
        self.listeners = list(listeners or [])
        self.warnings: list[str] = []

    # ---- reading -------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        path = self.root / STATE_FILE
        if not path.is_file():
            return {"versions": {}, "champions": []}
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except ValueError as exc:
            raise LifecycleError(
                f"{path} is not valid JSON ({exc}); restore it from backup or delete it (states "
                f"are then inferred from models/{CURRENT}; {AUDIT_FILE} keeps the history)"
            ) from exc
        data.setdefault("versions", {})
        data.setdefault("champions", [])
        return data

    def records(self) -> dict[str, VersionRecord]:
        """Every published version's record; versions unknown to the state file are inferred."""
        data = self._read()
        current, shadow = self.registry.current(), self.registry.shadow()
        out: dict[str, VersionRecord] = {}
        for version in self.registry.versions():
            raw = data["versions"].get(version)
            rec = VersionRecord.from_dict(raw) if raw else VersionRecord("candidate")
            if version == current:
                rec.state = "champion"
            elif version == shadow:
                rec.state = "shadow"
            elif rec.state in ("champion", "shadow"):  # a link moved by hand or a lost write
                rec.state = "retired" if rec.state == "champion" else "candidate"
            out[version] = rec
        return out

    def champion(self) -> str | None:
        """The version ``models/current`` points at."""
        return self.registry.current()

    def shadow(self) -> str | None:
        """The version ``models/shadow`` points at."""
        return self.registry.shadow()

    def champion_history(self) -> list[str]:
        """Champions in the order they served (last = the serving one), rolled-back ones removed."""
        hist = [v for v in self._read()["champions"]
                if (self.registry.path(v) / MODEL_FILE).is_file()]
        current = self.champion()
        if current is not None and (not hist or hist[-1] != current):
            hist = [v for v in hist if v != current] + [current]
        return hist

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        path = self.root / AUDIT_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ---- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                tmp = self.root / f".{STATE_FILE}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, self.root / STATE_FILE)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _audit(self, action: str, version: str | None, **fields: Any) -> dict[str, Any]:
        record = {"time": now_utc(), "user": self.actor.user, "host": self.actor.host,
                  "action": action, "version": version, **fields}
        with (self.root / AUDIT_FILE).open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def _set(self, data: dict[str, Any], version: str, state: str, **extra: Any) -> str:
        raw = data["versions"].setdefault(version, {"state": state, "created": now_utc()})
        before = str(raw.get("state", "candidate"))
        raw["state"] = state
        raw["updated"] = now_utc()
        for k, v in extra.items():
            raw[k] = v
        return before

    def _notify(self, version: str, state: str, aliases: dict[str, str | None]) -> None:
        for listener in self.listeners:
            try:
                listener(version, state, aliases)
            except Exception as exc:  # MLflow down must not block a rollback
                self.warnings.append(f"{type(exc).__name__}: {exc}")

    def require(self, version: str) -> None:
        """Raise :class:`LifecycleError` unless ``version`` is published."""
        if not (self.registry.path(version) / MODEL_FILE).is_file():
            known = ", ".join(self.registry.versions()[-5:]) or "none"
            raise LifecycleError(
                f"no published model {version!r} in {self.root} (latest: {known}); "
                "list them with `just models`"
            )

    def record_published(
        self, version: str, state: str, gates: GateReport | None, metrics: dict[str, float],
        reason: str = "", **extra: Any,
    ) -> None:
        """Record a freshly published version as ``candidate`` or ``rejected`` (audited)."""
        if state not in ("candidate", "rejected"):
            raise LifecycleError(f"a new version starts as candidate or rejected, not {state!r}")
        with self._locked() as data:
            self._set(data, version, state, gates=None if gates is None else gates.to_dict(),
                      metrics=metrics, extra=extra)
            self._audit("publish", version, from_state=None, to_state=state, reason=reason,
                        gates=None if gates is None else gates.summary())
        self._notify(version, state, {})

    def record_gates(self, version: str, gates: GateReport) -> None:
        """Store a fresh gate evaluation of ``version`` (no state change)."""
        with self._locked() as data:
            raw = data["versions"].setdefault(version, {"state": "candidate",
                                                        "created": now_utc()})
            raw["gates"] = gates.to_dict()

    def promote(
        self, version: str, gates: GateReport | None, *, reason: str = "", force: bool = False,
        check: Callable[[Path], Any] | None = None,
    ) -> str | None:
        """Make ``version`` the champion; return the previous champion.

        Refuses (:class:`LifecycleError`) a missing or rejected version, failed gates, or
        a model ``check`` (default :func:`export.model.load_model`: spec and probe) refuses,
        unless ``force`` with a ``reason``; ``check`` failures cannot be forced.
        """
        self.require(version)
        if force and not reason.strip():
            raise LifecycleError("--force needs --reason \"why\": it is written to the audit log")
        previous = self.champion()
        if previous == version:
            raise LifecycleError(f"{version} is already the champion")
        rec = self.records()[version]
        problems = []
        if rec.state == "rejected" and gates is None:
            problems.append("it was rejected at export: " + "; ".join(
                (rec.gates or {}).get("reasons", []) or ["see `just models`"]))
        if gates is not None and not gates.passed:
            problems.append("gates failed: " + "; ".join(gates.reasons))
        if problems and not force:
            raise LifecycleError(
                f"not promoting {version}: {' / '.join(problems)}. Fix the model, or override "
                "with --force --reason \"why\" (audited)"
            )
        if check is None:
            from export.model import load_model

            check = load_model
        try:
            check(self.registry.path(version))
        except Exception as exc:
            raise LifecycleError(f"not promoting {version}: the model does not load: {exc}") \
                from exc
        was_shadow = self.shadow() == version
        self.registry.set_current(version)  # the atomic step the flow sees
        if was_shadow:
            self.registry.clear_shadow()
        with self._locked() as data:
            before = self._set(data, version, "champion",
                               **({} if gates is None else {"gates": gates.to_dict()}))
            if previous is not None:
                self._set(data, previous, "retired")
            hist = [v for v in data["champions"] if v != version]
            if previous is not None and (not hist or hist[-1] != previous):
                hist = [v for v in hist if v != previous] + [previous]
            data["champions"] = [*hist, version]
            self._audit("promote", version, from_state=before, to_state="champion",
                        previous_champion=previous, reason=reason, forced=bool(problems),
                        gates=None if gates is None else gates.summary(),
                        overridden=problems)
        self._notify(version, "champion",
                     {"champion": version, **({"challenger": None} if was_shadow else {})})
        if previous is not None:
            self._notify(previous, "retired", {})
        return previous

    def rollback(self, reason: str = "", check: Callable[[Path], Any] | None = None
                 ) -> tuple[str, str]:
        """Point ``current`` back at the previous champion; return ``(from, to)``."""
        hist = self.champion_history()
        current = self.champion()
        if current is None or len(hist) < 2:
            raise LifecycleError(
                "no previous champion to roll back to "
                f"(champion history: {', '.join(hist) or 'empty'}); promote a version instead"
            )
        target = hist[-2]
        if check is None:
            from export.model import load_model

            check = load_model
        try:
            check(self.registry.path(target))
        except Exception as exc:
            raise LifecycleError(
                f"cannot roll back to {target}: the model does not load: {exc}"
            ) from exc
        self.registry.set_current(target)
        with self._locked() as data:
            self._set(data, current, "retired", extra={"rolled_back": now_utc()})
            before = self._set(data, target, "champion")
            data["champions"] = hist[:-1]
            self._audit("rollback", target, from_state=before, to_state="champion",
                        previous_champion=current, reason=reason)
        self._notify(target, "champion", {"champion": target})
        self._notify(current, "retired", {})
        return current, target

    def set_shadow(self, version: str, reason: str = "") -> str | None:
        """Make ``version`` the challenger (``models/shadow``); return the previous one."""
        self.require(version)
        if version == self.champion():
            raise LifecycleError(f"{version} is the champion; shadow another version")
        rec = self.records()[version]
        if rec.state == "rejected":
            why = "; ".join((rec.gates or {}).get("reasons", []))
            raise LifecycleError(
                f"{version} was rejected at export ({why}); a rejected model does not ride "
                "along: retrain with `--gate NAME=VALUE` limits you accept, "
                f"or `just promote {version} --force --reason ...`"
            )
        previous = self.shadow()
        self.registry.set_shadow(version)
        with self._locked() as data:
            before = self._set(data, version, "shadow", extra={"shadow_since": now_utc()})
            if previous is not None and previous != version:
                self._set(data, previous, "candidate")
            self._audit("shadow", version, from_state=before, to_state="shadow",
                        previous_shadow=previous, reason=reason)
        self._notify(version, "shadow", {"challenger": version})
        return previous

    def clear_shadow(self, reason: str = "") -> str | None:
        """Remove ``models/shadow``; its version becomes a candidate again."""
        previous = self.shadow()
        if previous is None:
            return None
        self.registry.clear_shadow()
        with self._locked() as data:
            self._set(data, previous, "candidate")
            self._audit("unshadow", previous, from_state="shadow", to_state="candidate",
                        reason=reason)
        self._notify(previous, "candidate", {"challenger": None})
        return previous


def check_registry_root(root: Path) -> None:
    """Raise :class:`RegistryError` unless ``root`` looks like a model registry."""
    if not Path(root).is_dir():
        raise RegistryError(f"no model registry at {root}; publish one with `just export-onnx`")
