from __future__ import annotations

from decimal import Decimal

import pytest

from hub.fhir import jsonio


@pytest.mark.parametrize(
    "text", ["1.50", "0.1000", "-3.0", "1E+5", "12345678901234567890.123456789"]
)
def test_decimals_keep_their_precision(text: str) -> None:
    document = jsonio.loads(f'{{"valueDecimal":{text}}}')
    assert document["valueDecimal"] == Decimal(text)
    assert jsonio.dumps(document) == f'{{"valueDecimal":{text}}}'


def test_documents_without_decimals_round_trip_unchanged() -> None:
    text = (
        '{"resourceType":"Patient","active":true,"multipleBirthInteger":2,'
        '"name":[{"family":"Ünal"}]}'
    )
    assert jsonio.dumps(jsonio.loads(text)) == text


def test_nested_decimals_among_other_values() -> None:
    document = {"a": [1, Decimal("2.50"), {"b": None, "c": 'x"y', "d": Decimal("0.0")}]}
    assert jsonio.dumps(document) == '{"a":[1,2.50,{"b":null,"c":"x\\"y","d":0.0}]}'


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"a":1,"a":2}', "duplicate property 'a'"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":Infinity}', "Infinity"),
        (b'{"a":', "Expecting value"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_refused_documents_say_why(body: bytes, problem: str) -> None:
    with pytest.raises(jsonio.JsonError, match=problem):
        jsonio.loads(body)
