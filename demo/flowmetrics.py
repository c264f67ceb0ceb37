"""What the demo reads from the flow's Prometheus endpoint: the stage histograms and the rule set.

The flow serves ``/metrics`` on ``FRAUD_METRICS_PORT``. Two of its series matter
here: ``fraud_stage_seconds{stage}`` (a histogram of where a verdict's time goes:
``broker``, ``card``, ``merchant``, ``sink``, ``ack``), shown when the flow
exports it and skipped when it does not, and ``fraud_rule_set_info{version}``,
the rule set in force. Quantiles over an interval come from the difference of
two scrapes' cumulative buckets, interpolated inside a bucket as Prometheus'
``histogram_quantile`` does (so they are estimates, as precise as the buckets).
"""

from __future__ import annotations

import dataclasses
import math
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: Stage label values in the order a verdict goes through them.
STAGES = ("broker", "card", "merchant", "sink", "ack")
STAGE_METRIC = "fraud_stage_seconds"
RULE_SET_METRIC = "fraud_rule_set_info"  # an Info metric: exposed as a gauge named *_info

Buckets = list[tuple[float, float]]  # (upper bound in seconds, cumulative count), ascending


@dataclasses.dataclass(frozen=True)
class Scrape:
    """One read of ``/metrics``: cumulative stage buckets and the rule-set version."""

    at: float  # time.time() of the read
    stages: dict[str, Buckets]
    rule_set: str | None = None


def parse(text: str, at: float) -> Scrape:
    """The stage histograms and the rule-set version of a Prometheus text exposition."""
    stages: dict[str, Buckets] = {}
    rule_set = None
    for family in text_string_to_metric_families(text):
        if family.name == STAGE_METRIC:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    stage = sample.labels.get("stage", "")
                    stages.setdefault(stage, []).append(
                        (float(sample.labels["le"]), float(sample.value)))
        elif family.name in (RULE_SET_METRIC, RULE_SET_METRIC.removesuffix("_info")):
            for sample in family.samples:
                rule_set = sample.labels.get("version", rule_set)
    return Scrape(at, {k: sorted(v) for k, v in stages.items()}, rule_set)


def scrape(port: int, timeout: float = 1.0) -> Scrape | None:
    """Read ``http://127.0.0.1:<port>/metrics``; None while the flow does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return parse(r.read().decode("utf-8", "replace"), time.time())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def difference(later: Buckets, earlier: Buckets | None) -> Buckets:
    """Bucket counts observed between two scrapes (``earlier`` None: since the start)."""
    if not earlier:
        return later
    before = dict(earlier)
    return [(le, count - before.get(le, 0.0)) for le, count in later]


def quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` (0..1) quantile in seconds of cumulative ``buckets``; None when empty.

    Linear inside the bucket that holds the rank, as Prometheus' ``histogram_quantile``;
    in the ``+Inf`` bucket, the highest finite bound.

    >>> quantile([(0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)], 0.5)
    0.01
    >>> round(quantile([(0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)], 0.75), 4)
    0.055
    >>> quantile([(0.01, 0.0), (math.inf, 0.0)], 0.5) is None
    True
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound  # pragma: no cover - the last bucket holds every observation


@dataclasses.dataclass(frozen=True)
class StageLatency:
    """p50 and p99 of one stage over an interval, in ms, and how many samples made them."""

    stage: str
    p50_ms: float | None
    p99_ms: float | None
    samples: int


class StageWatch:
    """Scrapes kept over time: each stage's latency over the last seconds, or since a mark."""

    def __init__(self, port: int | None, keep_seconds: float = 120.0) -> None:
        self.port = port
        self.keep_seconds = keep_seconds
        self.scrapes: list[Scrape] = []
        self.mark: Scrape | None = None  # e.g. the start of the live phase

    @property
    def latest(self) -> Scrape | None:
        """The last successful scrape."""
        return self.scrapes[-1] if self.scrapes else None

    def poll(self) -> Scrape | None:
        """Scrape now (when there is a port); keep it; forget what is older than needed."""
        got = scrape(self.port) if self.port else None
        if got is not None:
            self.scrapes.append(got)
            cutoff = got.at - self.keep_seconds
            while len(self.scrapes) > 2 and self.scrapes[0].at < cutoff:
                self.scrapes.pop(0)
        return got

    def set_mark(self) -> None:
        """Remember the latest scrape as the start of :meth:`since_mark`."""
        self.mark = self.poll() or self.latest

    def last(self, seconds: float) -> list[StageLatency]:
        """Each stage over the last ``seconds``, never reaching back before the mark.

        Between the latest scrape and the newest one at least ``seconds`` older (or the
        oldest kept, or the mark when that is newer); empty until two scrapes exist.
        """
        if len(self.scrapes) < 2:
            return []
        latest = self.scrapes[-1]
        base = next((s for s in reversed(self.scrapes) if s.at <= latest.at - seconds),
                    self.scrapes[0])  # fmt: skip
        if self.mark is not None and self.mark.at > base.at:
            base = self.mark
        return [] if base is latest else self._between(latest, base)

    def since_mark(self) -> list[StageLatency]:
        """Each stage since :meth:`set_mark` (since the flow started, without a mark)."""
        latest = self.latest
        return [] if latest is None else self._between(latest, self.mark)

    @staticmethod
    def _between(later: Scrape, earlier: Scrape | None) -> list[StageLatency]:
        out = []
        names = [s for s in STAGES if s in later.stages] + sorted(set(later.stages) - set(STAGES))
        for stage in names:
            buckets = difference(later.stages[stage],
                                 earlier.stages.get(stage) if earlier else None)  # fmt: skip
            p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
            out.append(StageLatency(stage, None if p50 is None else p50 * 1000,
                                    None if p99 is None else p99 * 1000,
                                    int(buckets[-1][1]) if buckets else 0))  # fmt: skip
        return out
