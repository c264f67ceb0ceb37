import math

from state.spec import FEATURES, describe


def test_every_feature_has_analyst_words_for_typical_values() -> None:
    for feature in FEATURES:
        for value in (0.0, 1.0, 3.0, feature.neutral):
            text = describe(feature.name, value)
            assert text and text != f"{feature.name} = {value:.4g}", (feature.name, text)


def test_words_follow_the_value() -> None:
    assert describe("card_amount_ratio_30d", 14.0) == "amount 14x the card's 30-day average"
    assert describe("card_new_merchant_30d", 0.0) == "merchant used by this card before"
    assert describe("card_count_30d", 0.0) == "no card history in the previous 30 days"
    assert describe("log_amount", math.log1p(250.0)) == "amount 250.00 EUR"
    assert describe("amount", 27.5, "JPY") == "amount 27.50 JPY"
    assert describe("unknown_feature", 2.5) == "unknown_feature = 2.5"
