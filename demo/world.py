"""The demo's simulated world: the unseen history it streams, its ground truth and its blocklist.

The model is trained on one simulated world (:data:`WORLD`); the demo streams
another (a different seed, the same density of transactions per card and day),
so what it shows is how the model does on traffic it has never seen. The
simulator's truth (which transactions are fraud, and of which scenario) is what
"fraud caught / missed" is judged against; nothing of it reaches the flow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from topics.contracts import ListEntry
from training.history import History
from training.simulate import SimConfig, simulated_history

#: One simulated world shape for the demo's training history and its stream.
WORLD = SimConfig(n_transactions=300_000, n_cards=6_000, days=90, seed=7)
#: The demo world's ground truth, for ``just drift-report --labels``.
TRUTH_FILE = Path(".dev/demo-labels.parquet")
#: Scenarios in which the cardholder notices (a new device, a burst of test payments)
#: and reports the card stolen: the demo blocks such cards from then on.
REPORTED_SCENARIOS = ("account_takeover", "card_testing")
#: How long after the first fraudulent payment a holder reports the card (event time, ms).
REPORT_DELAY_MS = 60_000
#: How long a reported card stays on the blocklist (event time, ms): 30 days.
BLOCK_MS = 30 * 86_400_000


@dataclasses.dataclass(frozen=True)
class DemoWorld:
    """The history streamed, where its live part starts, and the truth per transaction id."""

    history: History
    live_from: int  # index of the first live transaction (the ones before are the warm-up)
    truth: dict[str, bool]  # transaction id -> fraud (from the simulator)
    config: SimConfig

    @property
    def live_count(self) -> int:
        """Transactions offered at the live rate."""
        return len(self.history) - self.live_from


def unseen_world(transactions: int, live_count: int) -> DemoWorld:
    """Simulate ``transactions`` transactions of a world the model was not trained on.

    The last ``live_count`` of them (all of them when there are fewer) are the live
    part; raises ``ValueError`` when ``transactions`` is below 1,000 (too few cards).
    """
    if transactions < 1_000:
        raise ValueError("the demo world needs at least 1,000 transactions")
    config = dataclasses.replace(
        WORLD, seed=WORLD.seed + 1000, n_transactions=transactions,
        n_cards=transactions * WORLD.n_cards // WORLD.n_transactions,
    )  # fmt: skip
    history = simulated_history(config)
    truth = {t.transaction_id: s is not None
             for t, s in zip(history.transactions, history.scenario, strict=True)}  # fmt: skip
    return DemoWorld(history, max(0, len(history) - live_count), truth, config)


def write_truth(world: DemoWorld, path: Path = TRUTH_FILE) -> None:
    """The world's ``transaction_id`` and ``is_fraud`` as Parquet (for the drift report)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "transaction_id": [t.transaction_id for t in world.history.transactions],
        "is_fraud": world.history.is_fraud,
    }), path)  # fmt: skip


def reported_cards(world: DemoWorld, list_name: str = "blocked_cards") -> list[ListEntry]:
    """Blocklist entries for the cards whose holders report them stolen during the live part.

    For each card with a fraud of :data:`REPORTED_SCENARIOS` in the live part, one
    ``card_id`` entry in force from :data:`REPORT_DELAY_MS` after its first such fraud
    (event time) for :data:`BLOCK_MS`. Published before the stream starts, each entry
    shows that list entries apply by event time: the card's earlier payments pass, its
    later ones hit the blocklist rule.
    """
    h = world.history
    first: dict[str, int] = {}
    for i in range(world.live_from, len(h)):
        if h.scenario[i] in REPORTED_SCENARIOS:
            txn = h.transactions[i]
            first.setdefault(txn.card_id, txn.event_time)
    return [
        ListEntry(list=list_name, kind="card_id", value=card, valid_from=t + REPORT_DELAY_MS,
                  expires=t + REPORT_DELAY_MS + BLOCK_MS, added_by="demo",
                  reason="cardholder reported the card stolen")
        for card, t in sorted(first.items(), key=lambda kv: kv[1])
    ]

