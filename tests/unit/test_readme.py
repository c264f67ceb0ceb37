import re
from pathlib import Path

import msgspec

from topics.registry import TOPICS
from topics.validation import ContractDecoder, Rejection

README = (Path(__file__).parents[2] / "README.md").read_text()
EXAMPLE = re.compile(r"```json ([a-z-]+)\n(.*?)```", re.DOTALL)


def test_every_topic_has_a_readme_example_that_its_contract_accepts() -> None:
    examples = dict(EXAMPLE.findall(README))
    assert set(examples) == set(TOPICS)
    for logical, body in examples.items():
        decoder = ContractDecoder(TOPICS[logical].contract)
        result = decoder.decode(body.encode(), now_ms=1_900_000_000_000)
        assert not isinstance(result, Rejection), (logical, result)
        assert isinstance(result, msgspec.Struct)


def test_readme_documents_every_topic_override_variable() -> None:
    from topics.settings import topic_env_var

    for logical in TOPICS:
        assert f"`{topic_env_var(logical)}`" in README


def test_readme_documents_every_flow_setting_and_feature() -> None:
    from flows.settings import VARIABLES
    from state.spec import FEATURE_NAMES

    for name in VARIABLES:
        assert f"`{name}`" in README, name
    for name in FEATURE_NAMES:
        assert f"`{name}`" in README, name
