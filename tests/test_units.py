import pytest

from memfit.errors import InvalidInputError
from memfit.units import GiB, MiB, format_bytes, parse_budget, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * GiB),
        ("80GB", 80 * 10**9),
        ("512 MiB", 512 * MiB),
        ("1.5GiB", 3 * GiB // 2),
        (4096, 4096),
        ("2048B", 2048),
    ],
)
def test_parse(text, expected):
    assert parse_bytes(text) == expected


def test_fraction_of_a_reference():
    assert parse_bytes("0.5", of=80 * GiB) == 40 * GiB


@pytest.mark.parametrize("text", ["-3GB", "lots", "0", "3 parsecs", "", True, None, [16]])
def test_bad_sizes(text):
    with pytest.raises(InvalidInputError):
        parse_bytes(text, what="budget")


@pytest.mark.parametrize(
    ("text", "suggested"),
    [("16", "'16GiB'"), ("1.5", "'1.5GiB'"), (1.5, "'1.5GiB'"), (" 80 ", "'80GiB'")],
)
def test_a_bare_number_above_one_asks_for_a_unit(text, suggested):
    with pytest.raises(InvalidInputError, match=f"has no unit; give {suggested}.*fraction"):
        parse_bytes(text, of=80 * GiB, what="budget")


@pytest.mark.parametrize("text", [float("nan"), float("inf"), "inf", "nan"])
def test_not_a_finite_number(text):
    with pytest.raises(InvalidInputError, match="budget"):
        parse_bytes(text, of=80 * GiB, what="budget")


def test_fraction_without_reference():
    with pytest.raises(InvalidInputError, match="no reference size"):
        parse_bytes("0.9", what="budget")


@pytest.mark.parametrize(
    ("text", "suggested"),
    [(16, "'16GiB'"), ("16B", "'16GiB'"), ("1KiB", "'1GiB'"), ("512kB", "'16GiB'")],
)
def test_a_budget_under_a_mebibyte_suggests_a_size_that_parses(text, suggested):
    # the suggestion appended GiB to whatever was given: '1KiBGiB', '16BGiB'
    with pytest.raises(InvalidInputError, match=f"less than any training step needs.*{suggested}"):
        parse_budget(text, of=80 * GiB)
    assert parse_budget(suggested.strip("'"), of=80 * GiB) <= 80 * GiB


def test_a_tiny_budget_on_a_small_card_suggests_what_the_card_has():
    with pytest.raises(InvalidInputError, match="e.g. '12GiB'"):
        parse_budget("512kB", of=12 * GiB)


def test_format():
    assert format_bytes(3 * GiB // 2) == "1.50 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(-2 * MiB) == "-2.00 MiB"
