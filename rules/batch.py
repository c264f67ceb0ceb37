"""A batch of scored transactions as columns: what rules are evaluated over.

The flow builds one per scoring batch (the rows it just scored), the backtest
one per chunk of history. Shapes: ``n`` rows; ``features`` float32 ``[n, F]``
named by ``feature_names``; times int64 epoch ms; amounts float64 in major
units (``amount`` in the transaction currency, ``amount_reference`` in the
reference currency, NaN where no rate converted the amount: the row is
*unrated*, :attr:`RuleBatch.amount_unrated`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rules.lists import card_bin
from rules.names import TEXT_FIELDS
from topics.contracts import AttributeValue, Transaction


@dataclass(frozen=True)
class RuleBatch:
    """Column arrays of ``n`` transactions with their features and model verdicts.

    ``text`` maps each of :data:`rules.names.TEXT_FIELDS` to an object array of
    ``str`` (absent = ``""``); ``model_decision`` is a ``<U7`` array of
    ``approve``/``review``/``decline``. Raises ``ValueError`` when lengths differ.
    ``amount_reference`` is NaN on unrated rows; :attr:`amount_unrated` derives from it.
    """

    event_time: np.ndarray
    text: Mapping[str, np.ndarray]
    amount: np.ndarray
    amount_reference: np.ndarray
    attributes: Sequence[Mapping[str, AttributeValue] | None]
    features: np.ndarray
    feature_names: tuple[str, ...]
    score: np.ndarray
    model_decision: np.ndarray
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.event_time)
        sizes = {
            "amount": len(self.amount), "amount_reference": len(self.amount_reference),
            "attributes": len(self.attributes), "features": self.features.shape[0],
            "score": len(self.score), "model_decision": len(self.model_decision),
            **{f"text.{k}": len(v) for k, v in self.text.items()},
        }  # fmt: skip
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"batch columns must all have {n} rows; got {wrong}")
        if self.features.ndim != 2 or self.features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"features must be [n, {len(self.feature_names)}], got {self.features.shape}"
            )
        missing = set(TEXT_FIELDS) - set(self.text)
        if missing:
            raise ValueError(f"text columns missing: {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.event_time)

    @property
    def amount_unrated(self) -> np.ndarray:
        """Bool ``[n]``: no rate converted the amount (``amount_reference`` is NaN), computed once.

        The flow passes NaN for such rows (:mod:`state.inputs`); the rule variable
        ``amount_unrated`` reads this column.
        """
        cached = self._cache.get("amount_unrated")
        if cached is None:
            cached = self._cache["amount_unrated"] = np.isnan(self.amount_reference)
        return cached

    @property
    def bins(self) -> np.ndarray:
        """Each card's BIN (object array of str, ``""`` when unknown), computed once."""
        cached = self._cache.get("bin")
        if cached is None:
            cards = self.text["card_id"]
            kept = self._cache.get("card_bin") or [None] * len(cards)  # kept at decode
            cached = np.array(
                [card_bin(c, a, k) for c, a, k in zip(cards, self.attributes, kept, strict=True)],
                dtype=object,
            )
            self._cache["bin"] = cached
        return cached

    @classmethod
    def from_transactions(
        cls,
        transactions: Sequence[Transaction],
        features: np.ndarray,
        feature_names: Sequence[str],
        scores: np.ndarray,
        model_decisions: np.ndarray | Sequence[str],
        amount_reference: np.ndarray | None = None,
    ) -> RuleBatch:
        """Columns of ``transactions`` (one row each, in order).

        ``amount_reference`` (float ``[n]``, reference currency) is what the flow
        computed for the features, NaN where unrated; when None it is the feature
        ``amount`` (which feature spec v2 states in the reference currency, and at its
        neutral 0 when unrated: nothing is then unrated), else the raw amount.
        """
        names = tuple(feature_names)
        n = len(transactions)
        text = {
            name: np.array([getattr(t, name) or "" for t in transactions], dtype=object)
            for name in TEXT_FIELDS
        }
        amount = np.fromiter((t.amount for t in transactions), np.float64, n)
        if amount_reference is None:
            if "amount" in names:
                amount_reference = features[:, names.index("amount")].astype(np.float64)
            else:
                amount_reference = amount
        return cls(
            event_time=np.fromiter((t.event_time for t in transactions), np.int64, n),
            text=text,
            amount=amount,
            amount_reference=np.asarray(amount_reference, dtype=np.float64),
            attributes=[t.attributes for t in transactions],
            features=features,
            feature_names=names,
            score=np.asarray(scores),
            model_decision=np.asarray(model_decisions, dtype="<U7"),
            _cache={"card_bin": [t.card_bin for t in transactions]},
        )

    def row(self, i: int, names: Collection[str] | None = None) -> dict[str, Any]:
        """Row ``i`` as plain Python values by name (for the library evaluator and tests).

        ``names``: only these (a field, ``bin``, ``attributes``, ``features`` for the
        whole map, or a bare feature name); unknown names are left out. The library
        evaluates a rule several times faster when the row holds only what it reads.
        """
        if names is not None:
            return self._some(i, names)
        out: dict[str, Any] = {k: str(v[i]) for k, v in self.text.items()}
        out["bin"] = str(self.bins[i])
        out["amount"] = float(self.amount[i])
        out["amount_reference"] = float(self.amount_reference[i])
        out["amount_unrated"] = bool(self.amount_unrated[i])
        out["score"] = float(self.score[i])
        out["model_decision"] = str(self.model_decision[i])
        out["event_time"] = int(self.event_time[i])
        out["attributes"] = dict(self.attributes[i] or {})
        out["features"] = {
            name: float(v) for name, v in zip(self.feature_names, self.features[i].tolist(),
                                              strict=True)
        }
        return out

    def _some(self, i: int, names: Collection[str]) -> dict[str, Any]:
        index = self._cache.get("feature_index")
        if index is None:
            index = self._cache["feature_index"] = {n: j for j, n in enumerate(self.feature_names)}
        out: dict[str, Any] = {}
        for name in names:
            if name in self.text:
                out[name] = str(self.text[name][i])
            elif name in ("amount", "amount_reference", "score"):
                out[name] = float(getattr(self, name)[i])
            elif name == "event_time":
                out[name] = int(self.event_time[i])
            elif name == "amount_unrated":
                out[name] = bool(self.amount_unrated[i])
            elif name == "bin":
                out[name] = str(self.bins[i])
            elif name == "model_decision":
                out[name] = str(self.model_decision[i])
            elif name == "attributes":
                out[name] = dict(self.attributes[i] or {})
            elif name == "features":
                out[name] = dict(zip(self.feature_names, self.features[i].tolist(), strict=True))
            elif name in index:
                out[name] = float(self.features[i, index[name]])
        return out
