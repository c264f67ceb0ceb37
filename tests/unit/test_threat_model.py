"""docs/threat-model.md stays true: every test and file it names exists, every threat has both.

Also the check behind threat IF-2: no metric is labelled by a card or a transaction.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "threat-model.md"
TEST_REF = re.compile(r"`(tests/[\w/.-]+\.py)(?:::(\w+))?`")
FILE_REF = re.compile(r"`((?!tests/)[\w.-]+(?:/[\w.-]+)+\.(?:py|yaml|md))`")
THREAT_ROW = re.compile(r"^\| ([A-Z]{2}-\d+) \|(.*)$", re.M)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


@cache
def _functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def test_every_test_the_threat_model_names_exists() -> None:
    refs = TEST_REF.findall(_text())
    assert len(refs) >= 30
    missing = []
    for path, function in refs:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif function and function not in _functions(file):
            missing.append(f"{path}::{function}")
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"


def test_every_file_the_threat_model_names_exists() -> None:
    files = set(FILE_REF.findall(_text()))
    assert {"topics/pan.py", "export/handover.py", "k8s/base/networkpolicy.yaml"} <= files
    assert not sorted(f for f in files if not (ROOT / f).is_file())


def test_every_threat_names_a_mitigation_in_the_code_and_a_test() -> None:
    rows = THREAT_ROW.findall(_text())
    assert len(rows) >= 25
    ids = [threat for threat, _ in rows]
    assert len(ids) == len(set(ids)), "threat ids must be unique"
    for threat, row in rows:
        *_, mitigation, test = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert TEST_REF.search(test), f"{threat}: no test named"
        assert "`" in mitigation, f"{threat}: no code named in the mitigation"


def test_every_topic_and_interface_has_its_stride_section() -> None:
    from topics.registry import TOPICS

    text = _text()
    headings = " ".join(re.findall(r"^### (.+)$", text, re.M))
    for logical in TOPICS:
        assert re.search(rf"\b{re.escape(logical)}\b", headings), logical
    for interface in ("metrics/health HTTP", "Bytewax peer port", "state volume",
                      "model volume", "CLI"):
        assert f"| {interface}" in text, interface
    for section in ("## Assets", "## Trust boundaries", "## What fails open, what fails closed",
                    "## Insider misuse of rules", "## Retention", "## Key management",
                    "## Residual risks"):
        assert section in text, section


@pytest.mark.parametrize("word", ["card", "pan", "transaction", "merchant", "token"])
def test_no_metric_is_labelled_by_a_card_or_transaction(word: str) -> None:
    """IF-2: Prometheus labels are bounded; none names a card, a PAN or a transaction."""
    from prometheus_client.metrics import MetricWrapperBase

    import flows.metrics as metrics

    declared = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(declared) >= 20
    for metric in declared:
        labels = metric._labelnames  # noqa: SLF001 - prometheus_client keeps them here
        assert not [n for n in labels if word in n.lower()], (metric._name, labels)
