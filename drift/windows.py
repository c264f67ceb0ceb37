"""Drift snapshots: PSI against the model's reference, decision rates, label feedback, shadow.

Two halves, so the counting stays inline and cheap and the verdict comes from all workers:

* :class:`PartitionDrift` lives in each merchant shard's scoring step (a
  "partition" of the drift counts is a merchant shard). Per batch it adds the
  rows to per-(event-time window, model version) :class:`WindowCounts` with a
  few numpy calls (histogram bins by ``searchsorted``, counts by ``bincount``).
  A shard hears from several input partitions, each in its own event-time
  order, and a backlog reads one partition days ahead of another. Its clock is
  therefore a watermark: the smallest of its input partitions' largest event
  times, leaving out partitions not heard from for ``idle_seconds`` (the
  per-source watermark with idleness of the Dataflow model, Akidau et al.,
  VLDB 2015; Flink's ``WatermarkStrategy.withIdleness``). When the watermark
  passes a window's end plus the grace, the closed windows leave as one
  :class:`DriftPartial`.
* :class:`DriftAggregator` is one keyed step fed by every partition. A window is
  emitted as :class:`~topics.contracts.DriftSnapshot` per model version once
  every partition has passed it, or ``flush_seconds`` after its first partial
  (then ``complete`` is false and ``partitions`` says how many reported).

PSI per feature: ``sum((a - e) * ln(a / e))`` over the reference bins, with
proportions floored at :data:`PSI_FLOOR`.

>>> round(psi(np.array([50, 50]), np.array([0.5, 0.5])), 6)
0.0
>>> round(psi(np.array([90, 10]), np.array([0.5, 0.5])), 3)
0.879
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np

from export.metadata import ModelMetadata
from topics.contracts import DriftSnapshot, LabelFeedback, RuleHits, ShadowSummary

DECISIONS = ("approve", "review", "decline")


class Judged(NamedTuple):
    """What a label is joined with: the decisions of the verdict it judges."""

    decision: str
    model_version: str
    shadow_decision: str | None = None
    shadow_model_version: str | None = None

PSI_FLOOR = 1e-4
#: Scored rows buffered per partition before they are counted (see PartitionDrift.add_scored).
BUFFER_ROWS = 256
_NEVER = -(1 << 62)
_DECISION_INDEX = {d: i for i, d in enumerate(DECISIONS)}


def psi(counts: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of observed ``counts`` against ``expected`` proportions."""
    total = counts.sum()
    return float(_psi_terms(counts / total, expected).sum()) if total else 0.0


def _psi_terms(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-bin PSI terms of observed and reference proportions (floored)."""
    a, e = np.maximum(actual, PSI_FLOOR), np.maximum(expected, PSI_FLOOR)
    return (a - e) * np.log(a / e)


def decision_codes(decisions: np.ndarray) -> np.ndarray:
    """``approve``/``review``/``decline`` as 0/1/2."""
    return (decisions == "review") + 2 * (decisions == "decline")


@dataclass(frozen=True, eq=False)
class Reference:
    """A model's reference histograms, flattened for counting many features in one bincount."""

    version: str
    names: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    offsets: np.ndarray  # first flat bin of each feature
    expected: np.ndarray  # flat reference proportions, all features
    score_edges: np.ndarray
    score_expected: np.ndarray

    @classmethod
    def of(cls, metadata: ModelMetadata) -> Reference:
        """From the histograms embedded in the ONNX metadata (a missing one: a single bin)."""
        edges, expected = [], []
        for name in metadata.feature_names:
            hist = metadata.feature_histograms.get(name) or {"edges": [], "proportions": [1.0]}
            edges.append(np.asarray(hist["edges"], dtype=np.float64))
            expected.append(np.asarray(hist["proportions"], dtype=np.float64))
        sizes = [len(e) for e in expected]
        score = metadata.score_histogram or {"edges": [], "proportions": [1.0]}
        return cls(
            version=metadata.model_version,
            names=tuple(metadata.feature_names),
            edges=tuple(edges),
            offsets=np.cumsum([0, *sizes[:-1]]).astype(np.int64),
            expected=np.concatenate(expected),
            score_edges=np.asarray(score["edges"], dtype=np.float64),
            score_expected=np.asarray(score["proportions"], dtype=np.float64),
        )

    @property
    def n_bins(self) -> int:
        """Flat bins over all features."""
        return len(self.expected)

    def feature_bins(self, features: np.ndarray) -> np.ndarray:
        """Flat bin index of every cell of ``features`` [n, F] (int64, same shape)."""
        out = np.empty(features.shape, dtype=np.int64)
        for j, edges in enumerate(self.edges):
            out[:, j] = np.searchsorted(edges, features[:, j], side="right")
        out += self.offsets
        return out

    def feature_psi(self, counts: np.ndarray) -> dict[str, float]:
        """PSI per feature from flat bin ``counts`` (every feature counts each row once)."""
        total = counts[: self.offsets[1] if len(self.offsets) > 1 else None].sum()
        if not total:
            return dict.fromkeys(self.names, 0.0)
        terms = _psi_terms(counts / total, self.expected)
        return dict(zip(self.names, np.add.reduceat(terms, self.offsets).tolist(), strict=True))


def _label_matrix() -> np.ndarray:
    return np.zeros((3, 2), dtype=np.int64)  # decision x (legit, fraud)


@dataclass
class WindowCounts:
    """Mergeable counts of one model version over one event-time window."""

    reference: Reference | None = None
    count: int = 0
    feature_bins: np.ndarray | None = None
    score_bins: np.ndarray | None = None
    decisions: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    labels: np.ndarray = field(default_factory=_label_matrix)
    labels_unknown: int = 0
    shadow_version: str | None = None
    shadow: np.ndarray = field(default_factory=lambda: np.zeros(7))
    """Shadow pairs: n, agreements, sum x, sum y, sum x², sum y², sum xy."""
    shadow_labels: np.ndarray = field(default_factory=_label_matrix)
    rules: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(rule id, mode) -> [hits, hits the model alone flagged]."""

    def add_rule_hits(self, hits: dict[tuple[str, str], list[int]]) -> None:
        """Add analyst rule hit counts (same shape as :attr:`rules`)."""
        for key, (n, flagged) in hits.items():
            mine = self.rules.setdefault(key, [0, 0])
            mine[0] += n
            mine[1] += flagged

    def add_scored(
        self, reference: Reference, bins: np.ndarray, scores: np.ndarray, codes: np.ndarray
    ) -> None:
        """Count scored rows: flat feature ``bins`` [n, F], ``scores``, decision ``codes``."""
        self.feature_bins, self.score_bins = self._histograms(reference)
        self.count += len(scores)
        self.feature_bins += np.bincount(bins.ravel(), minlength=reference.n_bins)
        score_idx = np.searchsorted(reference.score_edges, scores, side="right")
        self.score_bins += np.bincount(score_idx, minlength=len(self.score_bins))
        self.decisions += np.bincount(codes, minlength=3)

    def _histograms(self, reference: Reference) -> tuple[np.ndarray, np.ndarray]:
        """The feature and score bin counts, created empty on first use."""
        if self.reference is None or self.feature_bins is None or self.score_bins is None:
            self.reference = reference
            self.feature_bins = np.zeros(reference.n_bins, dtype=np.int64)
            self.score_bins = np.zeros(len(reference.score_expected), dtype=np.int64)
        return self.feature_bins, self.score_bins

    def add_shadow(
        self, version: str, scores: np.ndarray, shadow_scores: np.ndarray, agree: np.ndarray
    ) -> None:
        """Count champion/shadow pairs for agreement and score correlation."""
        x, y = scores.astype(np.float64), shadow_scores.astype(np.float64)
        self.shadow_version = version
        self.shadow += (len(x), agree.sum(), x.sum(), y.sum(), x @ x, y @ y, x @ y)

    def merge(self, other: WindowCounts) -> None:
        """Add ``other`` (same window and version) into this one."""
        if other.reference is not None:
            assert other.feature_bins is not None and other.score_bins is not None
            features, score = self._histograms(other.reference)
            features += other.feature_bins
            score += other.score_bins
        self.count += other.count
        self.decisions += other.decisions
        self.labels += other.labels
        self.labels_unknown += other.labels_unknown
        self.shadow_version = self.shadow_version or other.shadow_version
        self.shadow += other.shadow
        self.shadow_labels += other.shadow_labels
        self.add_rule_hits(other.rules)


def feedback(matrix: np.ndarray) -> LabelFeedback | None:
    """Precision and recall at both thresholds from decision x truth counts (None: no labels)."""
    if not matrix.any():
        return None
    (la, fa), (lr, fr), (ld, fd) = matrix.tolist()

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    fraud = fa + fr + fd
    return LabelFeedback(
        fraud_declined=fd, fraud_reviewed=fr, fraud_approved=fa,
        legit_declined=ld, legit_reviewed=lr, legit_approved=la,
        precision_flagged=ratio(fr + fd, fr + fd + lr + ld), recall_flagged=ratio(fr + fd, fraud),
        precision_decline=ratio(fd, fd + ld), recall_decline=ratio(fd, fraud),
    )


def _shadow_summary(counts: WindowCounts) -> ShadowSummary | None:
    n, agree, sx, sy, sxx, syy, sxy = counts.shadow.tolist()
    if counts.shadow_version is None:
        return None
    if not n:
        return ShadowSummary(model_version=counts.shadow_version, count=0,
                             labels=feedback(counts.shadow_labels))
    cov = sxy / n - (sx / n) * (sy / n)
    var = (sxx / n - (sx / n) ** 2) * (syy / n - (sy / n) ** 2)
    return ShadowSummary(
        model_version=counts.shadow_version, count=int(n), agreement=agree / n,
        score_correlation=float(cov / np.sqrt(var)) if var > 1e-18 else None,
        labels=feedback(counts.shadow_labels),
    )


def snapshot(
    window_start: int, window_ms: int, version: str, counts: WindowCounts, *,
    psi_threshold: float, min_count: int, partitions: int, complete: bool,
    ignore: frozenset[str] = frozenset(),
) -> DriftSnapshot:
    """The published snapshot of one window and model version."""
    feature_psi: dict[str, float] = {}
    score_psi = None
    alerts: list[str] = []
    ref = counts.reference
    if ref is not None and counts.count and counts.feature_bins is not None:
        assert counts.score_bins is not None
        feature_psi = {k: round(v, 6) for k, v in ref.feature_psi(counts.feature_bins).items()}
        score_psi = round(psi(counts.score_bins, ref.score_expected), 6)
        if counts.count >= min_count:
            alerts = [
                k for k, v in feature_psi.items() if v > psi_threshold and k not in ignore
            ]
            if score_psi > psi_threshold and "score" not in ignore:
                alerts.append("score")
    total = int(counts.decisions.sum())
    return DriftSnapshot(
        window_start=window_start, window_end=window_start + window_ms, model_version=version,
        count=counts.count, feature_psi=feature_psi, score_psi=score_psi,
        decision_rates={d: int(c) / total for d, c in zip(DECISIONS, counts.decisions, strict=True)}
        if total else {},
        alerts=alerts, psi_threshold=psi_threshold, partitions=partitions, complete=complete,
        labels=feedback(counts.labels), labels_unknown=counts.labels_unknown,
        shadow=_shadow_summary(counts),
        rules=[RuleHits(rule_id=rule_id, mode=cast(Any, mode), hits=n, model_flagged=flagged)
               for (rule_id, mode), (n, flagged) in sorted(counts.rules.items())],
    )


WindowKey = tuple[int, str]
"""(window index, model version)."""


@dataclass(frozen=True)
class DriftPartial:
    """One partition's closed windows, and how far its event time has gone."""

    partition: int
    closed_before: int
    """Every window with a smaller index is closed at this partition."""
    windows: dict[WindowKey, WindowCounts]


class PartitionDrift:
    """Inline drift counting of one input partition (see module docstring)."""

    def __init__(self, partition: int, window_ms: int, grace_ms: int,
                 idle_seconds: float = 60.0, n_inputs: int = 1) -> None:
        """``n_inputs``: input partitions (numbered from 0) the watermark waits for."""
        self.partition = partition
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self.idle_seconds = idle_seconds
        self.n_inputs = n_inputs
        self._open: dict[WindowKey, WindowCounts] = {}
        self._max_time = _NEVER
        self._started: float | None = None
        self._inputs: dict[int, tuple[int, float]] = {}
        """Input partition -> (largest event time ms, wall time s it was last heard from)."""
        self._closed_before = _NEVER
        self._references: dict[str, Reference] = {}
        self._buffer: list[tuple[Any, ...]] = []
        self._buffered = 0
        self.late_rows = 0

    def reference(self, metadata: ModelMetadata) -> Reference:
        """The flattened reference of a model (built once per version)."""
        ref = self._references.get(metadata.model_version)
        if ref is None:
            ref = self._references[metadata.model_version] = Reference.of(metadata)
        return ref

    def _window(self, key: WindowKey) -> WindowCounts:
        counts = self._open.get(key)
        if counts is None:
            counts = self._open[key] = WindowCounts()
        return counts

    def _late(self, index: int) -> bool:
        return index < self._closed_before

    def add_scored(
        self, metadata: ModelMetadata, event_times: np.ndarray, features: np.ndarray,
        scores: np.ndarray, decisions: np.ndarray,
        shadow: tuple[str, np.ndarray, np.ndarray] | None = None,
        inputs: np.ndarray | None = None, now: float | None = None,
    ) -> None:
        """Count a scored batch; ``shadow`` is (version, scores, decisions).

        ``inputs``: the input partition of each row (None: one input), which
        the watermark follows; ``now``: wall time in s (default: the clock).
        Batches are buffered up to :data:`BUFFER_ROWS` rows and counted together:
        counting costs about 100 µs per call whatever its size, and under light
        load a batch is one or two transactions.
        """
        key = (metadata.model_version, shadow[0] if shadow is not None else None)
        if self._buffer and self._buffer[0][0] != key:
            self._count()
        self._buffer.append((key, metadata, event_times, features, scores, decisions, shadow))
        self._buffered += len(scores)
        self._max_time = max(self._max_time, int(event_times.max()))
        self._heard(event_times, inputs, time.time() if now is None else now)
        if self._buffered >= BUFFER_ROWS:
            self._count()

    def _heard(self, event_times: np.ndarray, inputs: np.ndarray | None, now: float) -> None:
        """Move the input partitions' event times on."""
        if self._started is None:
            self._started = now
        if inputs is None or len(inputs) == 0 or np.all(inputs == inputs[0]):
            groups = [(0 if inputs is None or len(inputs) == 0 else int(inputs[0]),
                       int(event_times.max()))]
        else:
            groups = [(int(p), int(event_times[inputs == p].max()))
                      for p in np.unique(inputs).tolist()]
        for source, latest in groups:
            seen = self._inputs.get(source)
            self._inputs[source] = (latest if seen is None else max(seen[0], latest), now)

    def watermark(self, now: float | None = None) -> int:
        """Event time (ms) every active input partition has passed (see module docstring)."""
        if not self._inputs or self._started is None:
            return _NEVER
        now = time.time() if now is None else now
        newest = max(seen for _, seen in self._inputs.values())
        clocks = [t for t, seen in self._inputs.values()
                  if seen >= newest or now - seen < self.idle_seconds]
        if now - self._started < self.idle_seconds and any(
            p not in self._inputs for p in range(self.n_inputs)
        ):
            return _NEVER  # an input not heard from yet may bring any event time
        return min(clocks)

    def _count(self) -> None:
        """Count the buffered batches (one model version, one shadow or none)."""
        if not self._buffer:
            return
        batches, self._buffer, self._buffered = self._buffer, [], 0
        metadata, shadow = batches[0][1], batches[0][6]
        parts = list(zip(*(b[2:6] for b in batches), strict=True))
        event_times, features, scores, decisions = (np.concatenate(p) for p in parts)
        if shadow is not None:
            shadow = (shadow[0], np.concatenate([b[6][1] for b in batches if b[6]]),
                      np.concatenate([b[6][2] for b in batches if b[6]]))
        late = self._count_rows(metadata, event_times, features, scores, decisions, shadow)
        self.late_rows += late  # the merchant stage counts them (fraud_drift_late_total)

    def _count_rows(
        self, metadata: ModelMetadata, event_times: np.ndarray, features: np.ndarray,
        scores: np.ndarray, decisions: np.ndarray,
        shadow: tuple[str, np.ndarray, np.ndarray] | None,
    ) -> int:
        """Add rows to their windows; return the rows whose window has closed here."""
        ref = self.reference(metadata)
        windows = event_times // self.window_ms
        bins = ref.feature_bins(features)
        codes = decision_codes(decisions)
        late = 0
        if windows[0] == windows[-1] and (len(windows) < 3 or np.all(windows == windows[0])):
            groups = [(int(windows[0]), slice(None))]  # the usual case: one window per batch
        else:
            groups = [(int(w), windows == w) for w in np.unique(windows).tolist()]
        for index, rows in groups:
            if self._late(index):
                late += int(np.count_nonzero(windows[rows] == index))
                continue
            counts = self._window((index, metadata.model_version))
            counts.add_scored(ref, bins[rows], scores[rows], codes[rows])
            if shadow is not None:
                version, s_scores, s_decisions = shadow
                counts.add_shadow(version, scores[rows], s_scores[rows],
                                  s_decisions[rows] == decisions[rows])
        return late

    def add_rule_hits(self, version: str, event_times: np.ndarray,
                      hits: Sequence[Sequence[tuple[str, str]]], model_flagged: np.ndarray,
                      ) -> None:
        """Count analyst rule hits in the rows' windows.

        ``hits[i]``: the (rule id, mode) pairs that hit row ``i`` (event time
        ``event_times[i]`` ms); ``model_flagged[i]``: whether the model alone
        reviewed or declined it. Rows of a closed window are not counted (as late rows).
        """
        per_window: dict[int, dict[tuple[str, str], list[int]]] = {}
        for t, row_hits, flagged in zip(event_times.tolist(), hits, model_flagged.tolist(),
                                        strict=True):
            if not row_hits:
                continue
            index = int(t) // self.window_ms
            if self._late(index):
                continue
            counts = per_window.setdefault(index, {})
            for key in row_hits:
                c = counts.setdefault(key, [0, 0])
                c[0] += 1
                c[1] += int(flagged)
        for index, counts in per_window.items():
            self._window((index, version)).add_rule_hits(counts)

    def add_unknown(self, count: int, live_version: str) -> None:
        """Count labels whose transaction never arrived within the horizon (oldest open window)."""
        index = max(self._closed_before, self._max_time // self.window_ms)
        self._window((index, live_version)).labels_unknown += count

    def __getstate__(self) -> dict[str, Any]:
        """Recovery snapshot: counts only (buffered rows are counted first, caches dropped)."""
        self._count()
        state = dict(self.__dict__)
        state["_references"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Resume: every input partition counts as just heard from (none is idle yet)."""
        now = time.time()
        state["_inputs"] = {p: (t, now) for p, (t, _) in state.get("_inputs", {}).items()}
        if state.get("_started") is not None:
            state["_started"] = now
        self.__dict__.update(state)

    def add_label(
        self, label_time: int, is_fraud: bool, verdict: Judged | None, live_version: str
    ) -> None:
        """Count one label joined with its verdict (None: unknown, counted under ``live_version``).

        A label goes to the window of its ``label_time``, or to the oldest open
        one if that has closed here: labels run days behind the transactions, and
        none is dropped. Only transactions move the windows' clock.
        """
        index = max(label_time // self.window_ms, self._closed_before)
        if verdict is None:
            self._window((index, live_version)).labels_unknown += 1
            return
        counts = self._window((index, verdict.model_version))
        counts.labels[_DECISION_INDEX[verdict.decision], int(is_fraud)] += 1
        if verdict.shadow_model_version is not None and verdict.shadow_decision is not None:
            counts.shadow_version = counts.shadow_version or verdict.shadow_model_version
            counts.shadow_labels[_DECISION_INDEX[verdict.shadow_decision], int(is_fraud)] += 1

    def retract_label(self, label_time: int, is_fraud: bool, verdict: Judged) -> bool:
        """Take back one label :meth:`add_label` counted, which a later label replaced.

        Only from the window of ``label_time`` while it is still open here and holds
        such a label (counts never go below zero); a window already handed on stands as
        published (it said what was known then). Returns whether it was taken back.
        """
        index = label_time // self.window_ms
        counts = self._open.get((index, verdict.model_version))
        cell = (_DECISION_INDEX[verdict.decision], int(is_fraud))
        if self._late(index) or counts is None or counts.labels[cell] <= 0:
            return False
        counts.labels[cell] -= 1
        if verdict.shadow_model_version is not None and verdict.shadow_decision is not None:
            shadow = (_DECISION_INDEX[verdict.shadow_decision], int(is_fraud))
            if counts.shadow_labels[shadow] > 0:
                counts.shadow_labels[shadow] -= 1
        return True

    @property
    def has_open_windows(self) -> bool:
        """Whether counts are waiting for their window to close here."""
        return bool(self._open or self._buffer)

    def close(self, idle: bool = False, now: float | None = None) -> DriftPartial | None:
        """The windows that ended before the watermark minus grace, once per window boundary.

        ``idle``: the partition has gone quiet; close every open window now.
        ``now``: wall time in s (default: the clock).
        """
        if self._max_time == _NEVER and not (idle and self.has_open_windows):
            return None  # no transaction yet: the clock has not started
        watermark = self.watermark(now)
        if watermark == _NEVER and not idle:
            return None
        closed_before = (watermark - self.grace_ms) // self.window_ms
        if closed_before > self._closed_before or idle:
            self._count()
        if idle and self._open:
            closed_before = max(closed_before, max(index for index, _ in self._open) + 1)
        if closed_before <= self._closed_before:
            return None
        self._closed_before = closed_before
        done = {k: v for k, v in self._open.items() if k[0] < closed_before}
        for key in done:
            del self._open[key]
        return DriftPartial(self.partition, closed_before, done)


@dataclass
class _Pending:
    counts: dict[str, WindowCounts]
    first_seen: float
    partitions: set[int]


@dataclass
class DriftAggregator:
    """Merges every partition's partials; emits snapshots (see module docstring)."""

    n_partitions: int
    window_ms: int
    psi_threshold: float
    min_count: int
    flush_seconds: float
    ignore: frozenset[str] = frozenset()
    pending: dict[int, _Pending] = field(default_factory=dict)
    closed_before: dict[int, int] = field(default_factory=dict)
    emitted_before: int = _NEVER
    late_partials: int = 0

    def add(self, partial: DriftPartial, now: float) -> list[DriftSnapshot]:
        """Merge one partial; return the snapshots it completes."""
        seen = self.closed_before.get(partial.partition, _NEVER)
        self.closed_before[partial.partition] = max(seen, partial.closed_before)
        for (index, version), counts in partial.windows.items():
            if index < self.emitted_before and index not in self.pending:
                self.late_partials += 1
                continue
            entry = self.pending.get(index)
            if entry is None:
                entry = self.pending[index] = _Pending({}, now, set())
            entry.partitions.add(partial.partition)
            mine = entry.counts.get(version)
            if mine is None:
                entry.counts[version] = counts
            else:
                mine.merge(counts)
        return self._emit(now)

    def due(self) -> float | None:
        """When the oldest pending window times out (None: nothing pending)."""
        if not self.pending:
            return None
        return min(e.first_seen for e in self.pending.values()) + self.flush_seconds

    def _emit(self, now: float) -> list[DriftSnapshot]:
        everyone = (
            min(self.closed_before.values())
            if len(self.closed_before) >= self.n_partitions else _NEVER
        )
        out: list[DriftSnapshot] = []
        for index in sorted(self.pending):
            entry = self.pending[index]
            complete = index < everyone
            if not complete and now < entry.first_seen + self.flush_seconds:
                continue
            del self.pending[index]
            self.emitted_before = max(self.emitted_before, index + 1)
            for version, counts in sorted(entry.counts.items()):
                out.append(snapshot(
                    index * self.window_ms, self.window_ms, version, counts,
                    psi_threshold=self.psi_threshold, min_count=self.min_count,
                    partitions=self.n_partitions if complete else len(entry.partitions),
                    complete=complete, ignore=self.ignore,
                ))
        return out

    def flush(self, now: float) -> list[DriftSnapshot]:
        """Snapshots of windows whose flush timeout has passed."""
        return self._emit(now)

