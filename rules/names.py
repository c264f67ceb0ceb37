"""The names a rule expression can use, and their CEL types, built from the running spec.

A rule sees (all declared to the CEL type checker, so an unknown name or a type
mistake is refused when the rule arrives, with the position of the problem):

====================  =======================  ==========================================
name                  CEL type                 meaning
====================  =======================  ==========================================
``amount``            double                   amount in major units of ``currency``
``amount_reference``  double                   amount in the reference currency (EUR);
                                               NaN when unrated (every comparison false)
``amount_unrated``    bool                     no rate converted the amount: the currency
                                               (or billing currency) has none
``currency``          string                   ISO 4217 alphabetic code
``channel``           string                   ``pos``, ``ecom``, ``atm``, ``moto`` or ``""``
``entry_mode``        string                   ``chip``, ``contactless``, ... or ``""``
``country``           string                   merchant country, ISO 3166-1 alpha-2, or ``""``
``mcc``               string                   ISO 18245 merchant category code, or ``""``
``card_id``           string                   card id
``merchant_id``       string                   merchant id
``device_id``         string                   device id, or ``""``
``ip``                string                   IP address text, or ``""``
``customer_id``       string                   customer id, or ``""``
``bin``               string                   the card's BIN (see :func:`rules.lists.card_bin`)
``event_time``        int                      UTC epoch milliseconds
``attributes``        map(string, dyn)         the transaction's free attributes
``score``             double                   model fraud score, 0-1
``model_decision``    string                   ``approve``, ``review`` or ``decline``
``lists``             map(string, list)        named lists: ``card_id in lists.blocked``
``features``          map(string, double)      every feature: ``features.card_count_10m``
every feature name    double                   the feature (``state.spec.FEATURE_NAMES``),
                                               unless the name is taken above
====================  =======================  ==========================================

Absent optional text reads as ``""``, so ``country != "FR"`` holds for a
transaction without a country; test absence with ``country == ""``. Features are
float32 in the model and read as double here. CEL does not mix int and double
in a comparison: write ``card_count_10m > 3.0``, not ``> 3``. An amount rule
says what it means for an unrated transaction (README "Every currency gets a
verdict"): ``amount_unrated || amount_reference > 1000.0`` catches both,
``!amount_unrated && amount_reference > 1000.0`` only the rated ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

#: Text fields of the transaction (absent = ``""``), in this order in the batch.
TEXT_FIELDS = (
    "card_id", "merchant_id", "currency", "channel", "entry_mode", "country", "mcc",
    "device_id", "ip", "customer_id",
)  # fmt: skip
NUMBER_FIELDS = ("amount", "amount_reference", "score")
INT_FIELDS = ("event_time",)
#: True where ``amount_reference`` is NaN (no rate converted the amount).
BOOL_FIELDS = ("amount_unrated",)
#: Derived text: the BIN, and the model's decision.
DERIVED_TEXT = ("bin", "model_decision")
MAPS = ("attributes", "lists", "features")
#: CEL reserved words (cel-spec langdef.md): never usable as a bare name.
RESERVED = frozenset(
    "false in null true as break const continue else for function if import let loop package "
    "namespace return var void while".split()
)

Kind = Literal["text", "double", "int", "bool", "attributes", "lists", "features"]


@dataclass(frozen=True)
class Vocabulary:
    """Names and types for one feature spec (``feature_names`` read at run time)."""

    feature_names: tuple[str, ...]

    @cached_property
    def kinds(self) -> dict[str, Kind]:
        """Every bare name and its kind."""
        kinds: dict[str, Kind] = {}
        for name in TEXT_FIELDS + DERIVED_TEXT:
            kinds[name] = "text"
        for name in NUMBER_FIELDS:
            kinds[name] = "double"
        for name in INT_FIELDS:
            kinds[name] = "int"
        for name in BOOL_FIELDS:
            kinds[name] = "bool"
        kinds["attributes"] = "attributes"
        kinds["lists"] = "lists"
        kinds["features"] = "features"
        for name in self.feature_names:
            if name not in kinds and name.isidentifier() and name not in RESERVED:
                kinds[name] = "double"
        return kinds

    @cached_property
    def bare_features(self) -> frozenset[str]:
        """Feature names usable without ``features.`` (those not shadowed by a field)."""
        taken = set(TEXT_FIELDS + DERIVED_TEXT + NUMBER_FIELDS + INT_FIELDS + BOOL_FIELDS + MAPS)
        return frozenset(
            n for n in self.feature_names
            if n not in taken and n.isidentifier() and n not in RESERVED
        )

    @cached_property
    def feature_index(self) -> dict[str, int]:
        """Column of each feature in the batch's matrix."""
        return {name: i for i, name in enumerate(self.feature_names)}

    def cel_variables(self) -> dict[str, Any]:
        """``{name: cel.Type}`` for ``cel.NewEnv(variables=...)``."""
        from cel_expr_python import cel

        t = cel.Type
        types = {"text": t.STRING, "double": t.DOUBLE, "int": t.INT, "bool": t.BOOL}
        out: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            if kind in types:
                out[name] = types[kind]
        out["attributes"] = t.Map(t.STRING, t.DYN)
        out["lists"] = t.Map(t.STRING, t.List(t.STRING))
        out["features"] = t.Map(t.STRING, t.DOUBLE)
        return out


def vocabulary(feature_names: Sequence[str] | None = None) -> Vocabulary:
    """The vocabulary of ``feature_names``, by default ``state.spec.FEATURE_NAMES`` (read now)."""
    if feature_names is None:
        from state.spec import FEATURE_NAMES

        feature_names = FEATURE_NAMES
    return Vocabulary(tuple(feature_names))
