"""Card pseudonyms for model artefacts: the holdout rows keep "same card" and nothing more.

The champion gate's card precision@100 per day (``training.report.card_precision_at_k``)
groups held-out rows by card and day; it needs to know which rows share a card, never
which card. So a published ``holdout.parquet`` and the training artifact carry
``card_ref`` = HMAC-SHA-256 (RFC 2104, Python's ``hmac``) of the ``card_id`` under a
random 32-byte key drawn for this one call and then dropped, truncated to 64 bits:

- equal ids get equal refs within one call (the grouping survives, so the metric is
  the same: ``tests/unit/export/test_handover.py``);
- the key exists nowhere, so a ref cannot be reversed or recomputed from a known card
  id or PAN (no dictionary attack over the 10^9-ish BIN+last-4 space, unlike a plain or
  fixed-salt hash), and refs of two artefacts cannot be joined;
- 64 bits: a collision among 10^6 holdout cards has odds about 3e-8.

>>> a = card_pseudonyms(["4111111111111111", "c-2", "4111111111111111"])
>>> a[0] == a[2] != a[1], "4111" in "".join(a), len(a[0])
(True, False, 17)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import numpy as np

#: Prefix of a pseudonym, so that a ref is never mistaken for a card token.
REF_PREFIX = "r"


def card_pseudonyms(card_ids: Iterable[object]) -> np.ndarray:
    """One pseudonym per id (object array of ``str``, ``r`` + 16 hex), equal iff the ids are.

    ``card_ids``: any iterable of ids (str or objects whose ``str`` is the id).
    """
    key = secrets.token_bytes(32)
    memo: dict[str, str] = {}
    out = []
    for card in card_ids:
        text = str(card)
        ref = memo.get(text)
        if ref is None:
            digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
            ref = memo[text] = REF_PREFIX + digest[:16]
        out.append(ref)
    return np.asarray(out, dtype=object)
