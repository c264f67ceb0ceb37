"""The model a process serves, and its hot reload when ``models/current`` moves.

:class:`ModelSource` loads a model path (a ``.onnx`` file, a version directory or
the ``models/current`` link) and, when polled between batches, at most every
``interval`` seconds, checks whether the file behind the path changed. A new
model is loaded and checked (feature spec, graph shapes and a probe prediction,
rate table) *before* it replaces the old one; a corrupt or mismatched model is
refused with a log line and ``fraud_model_reloads_total{outcome="refused"}``, and the old one keeps
serving. A batch is always scored by one model, whose version every verdict
names; replayed offsets re-emit their stored verdicts, so no transaction is
scored twice across a swap.

Publishing a model is therefore ``just export-onnx`` (which moves
``models/current`` atomically), with no restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.metadata import Thresholds
from export.model import ScoringModel, load_model, resolve_model_file
from flows import metrics
from scoring.reasons import ReasonExplainer
from scoring.serving import Serving
from topics.currency import RateTable
from topics.errors import ConfigError, FraudStreamError

log = logging.getLogger(__name__)

Fingerprint = tuple[str, int, int]


def _fingerprint(path: Path) -> Fingerprint | None:
    try:
        target = resolve_model_file(path).resolve()
        stat = target.stat()
    except OSError:
        return None
    return str(target), stat.st_mtime_ns, stat.st_size


class ModelSource:
    """The current :class:`Serving` of one model path, reloaded when the path's file changes."""

    def __init__(
        self,
        path: Path,
        *,
        thresholds: Callable[[ScoringModel], Thresholds],
        check: Callable[[ScoringModel], None] = lambda _model: None,
        max_reasons: int = 3,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        role: str = "champion",
    ) -> None:
        self.path = path
        self._thresholds = thresholds
        self._check = check
        self._max_reasons = max_reasons
        self._interval = interval
        self._clock = clock
        self.role = role
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(path)
        self.current = self._serve(load_model(path))
        self._next_check = clock() + interval

    def _serve(self, model: ScoringModel) -> Serving:
        self._check(model)
        return Serving(model, self._thresholds(model), ReasonExplainer(model, self._max_reasons))

    def poll(self) -> Serving:
        """The model to score the next batch with; reloads first if the file changed."""
        if self._interval <= 0 or self._clock() < self._next_check:
            return self.current
        with self._lock:
            self._next_check = self._clock() + self._interval
            found = _fingerprint(self.path)
            if found is None or found == self._fingerprint:
                return self.current
            self._fingerprint = found
            old = self.current.version
            try:
                # The file fingerprinted, not the path again: ``current`` may have moved since.
                self.current = self._serve(load_model(Path(found[0])))
            except FraudStreamError as exc:
                log.error("%s model at %s refused, still serving %s: %s",
                          self.role, self.path, old, exc)
                metrics.MODEL_RELOADS.labels(role=self.role, outcome="refused").inc()
                return self.current
            log.info("%s model %s now serving (was %s)", self.role, self.current.version, old)
            metrics.MODEL_RELOADS.labels(role=self.role, outcome="loaded").inc()
            if self.role == "champion":
                metrics.MODEL_INFO.info(
                    {"version": self.current.version,
                     "feature_spec_version": self.current.model.feature_spec_version}
                )
            return self.current


def model_rates(model: ScoringModel) -> RateTable:
    """The reference currency and rate table the model's amount features were built with."""
    context = getattr(model.metadata, "feature_context", None) or {}
    table = context.get("rate_table")
    if not table:
        raise ConfigError(
            f"model {model.version} records no rate table (feature context); retrain and "
            "export it with this code: just train DATA=<history> then just export-onnx"
        )
    return RateTable.from_dict(table)


def check_rates(rates: RateTable) -> Any:
    """A model check: its amount features must use the flow's reference currency and rates."""

    def check(model: ScoringModel) -> None:
        theirs = model_rates(model)
        if theirs != rates:
            raise ConfigError(
                f"model {model.version} converts amounts with rate table {theirs.version} to "
                f"{theirs.reference}; this flow's state uses {rates.version} to "
                f"{rates.reference}: card history would mix two scales. Retrain on the same "
                "table, or restart the flow on a fresh state directory"
            )

    return check
