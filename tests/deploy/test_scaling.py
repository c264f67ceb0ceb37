"""k8s/README.md's shard-owner table is what Bytewax really does.

The flow keys its card stage and its merchant stage by :func:`flows.routing.shard_key`
(flows/score.py ``key-by-card`` / ``key-by-merchant``); Bytewax sends each key to a
worker by a hash over the worker count. The README tells operators which
process owns which ``cards/<shard>`` and ``merchants/<shard>`` directory for 1, 2, 4 and 8
processes (one worker each); this test routes the same keys through Bytewax's own
exchange, in one process with as many workers (a cluster of N processes with one worker
each numbers its workers the same way), and compares.
"""

from __future__ import annotations

from typing import Any

import pytest

from deploy.queries import K8S
from flows.routing import ROUTE_KEYS_V1, ROUTE_KEYS_V2, V2_MODULUS, shard_key

README = K8S / "README.md"


def readme_table() -> dict[int, list[int]]:
    """``processes -> owner of shard 0..7`` from the table between the shard-owners markers."""
    text = README.read_text()
    block = text.split("<!-- shard-owners:begin -->", 1)[1].split("<!-- shard-owners:end -->")[0]
    rows: dict[int, list[int]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = [int(c) for c in cells[1:9]]
            busiest = max(rows[int(cells[0])].count(w) for w in range(int(cells[0])))
            assert cells[9].startswith(f"{busiest} of 8"), line
    return rows


def owners(workers: int, keys: list[str]) -> dict[str, int]:
    """The worker Bytewax routes each key's stateful step to, in a cluster of ``workers``."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators import StatefulBatchLogic
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    seen: dict[str, int] = {}

    class Tell(StatefulBatchLogic[str, str, None]):
        def on_batch(self, values: list[str]) -> tuple[list[str], bool]:
            return values, False

        def snapshot(self) -> None:
            return None

    class Where(StatelessSinkPartition[Any]):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items: list[Any]) -> None:
            for key, _ in items:
                seen[key] = self.worker

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Where:
            return Where(worker_index)

    flow = Dataflow("owners")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    op.output("out", op.stateful_batch("shard", keyed, lambda _resume: Tell()), Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


@pytest.mark.parametrize("processes", sorted(readme_table()))
def test_the_readme_says_which_process_owns_which_shard(processes: int) -> None:
    keys = [shard_key(s) for s in range(8)]
    routed = owners(processes, keys)
    assert [routed[k] for k in keys] == readme_table()[processes]


@pytest.mark.parametrize("workers", [2, 4, 8, 64])
def test_every_v1_route_key_lands_on_shard_modulo_workers(workers: int) -> None:
    """Routing v1 (recovery directories written before v2): even for divisors of 64."""
    routed = owners(workers, list(ROUTE_KEYS_V1))
    assert [routed[k] for k in ROUTE_KEYS_V1] == [s % workers for s in range(len(ROUTE_KEYS_V1))]


#: Shards routed through Bytewax per worker count (every key is checked by hash below).
ROUTED = 256


@pytest.mark.parametrize("workers", range(1, 17))
def test_v2_spreads_shards_evenly_over_every_process_count_from_1_to_16(workers: int) -> None:
    """Issue 25: at most one shard more than the fairest share, through Bytewax's routing.

    Every shard count up to :data:`ROUTED` (card shards, merchant shards): Bytewax sends
    shard ``s`` to worker ``s % workers``, so the first ``k`` shards spread with at most
    one more on the busiest worker than on the idlest, whatever ``k``.
    """
    keys = list(ROUTE_KEYS_V2[:ROUTED])
    routed = owners(workers, keys)
    assert [routed[k] for k in keys] == [s % workers for s in range(ROUTED)]
    for shards in (1, 3, 8, 10, 16, 24, 64, 100, ROUTED):
        load = [0] * workers
        for k in keys[:shards]:
            load[routed[k]] += 1
        assert max(load) - min(load) <= 1 and max(load) == -(-shards // workers)


def test_every_v2_key_hashes_to_its_shard_modulo_lcm_1_to_16() -> None:
    """All 1,024 keys, by Bytewax's hash (devkit.route_keys, checked through Bytewax above)."""
    from math import lcm

    from devkit.route_keys import bytewax_hash

    assert lcm(*range(1, 17)) == V2_MODULUS
    assert [bytewax_hash(k) % V2_MODULUS for k in ROUTE_KEYS_V2] == list(range(1024))
    assert all(bytewax_hash(k) % 64 == s for s, k in enumerate(ROUTE_KEYS_V1))


def test_the_table_covers_the_shipped_replica_count() -> None:
    from deploy.kustomize import render

    (sts,) = [o for o in render(K8S / "base")[0] if o["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] in readme_table()
    assert {1, 2, 4, 8} <= set(readme_table())
