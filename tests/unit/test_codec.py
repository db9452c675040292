"""JSON encoding of arguments and results, and typed decoding for handlers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any, NotRequired, Required, TypedDict

import pydantic
import pytest

from durable_jobs.codec import decoder_for, dumps, loads


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


class Size(enum.IntEnum):
    SMALL = 1


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    created: dt.datetime
    colour: Colour


class Address(pydantic.BaseModel):
    city: str
    zip_code: str | None = None


class Customer(pydantic.BaseModel):
    name: str
    address: Address
    since: dt.date
    balance: decimal.Decimal


class Email(TypedDict):
    to: str
    subject: str
    cc: NotRequired[list[str]]


class Options(TypedDict, total=False):
    verbose: bool
    name: Required[str]


def roundtrip(value: Any) -> Any:
    return json.loads(dumps(value))


def test_plain_json_is_compact_ascii_bytes() -> None:
    data = dumps({"a": [1, 2.5, None, True], "b": "é"})
    assert isinstance(data, bytes)
    assert data == b'{"a":[1,2.5,null,true],"b":"\\u00e9"}'
    assert loads(data) == {"a": [1, 2.5, None, True], "b": "é"}
    assert dumps(None) == b"null"
    assert loads(None) is None
    assert loads("[1]") == [1]


def test_dataclasses_nested_in_anything() -> None:
    shape = Shape(
        "tri",
        [Point(1, 2), Point(3)],
        dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        Colour.BLUE,
    )
    assert roundtrip({"shapes": [shape]}) == {
        "shapes": [
            {
                "name": "tri",
                "points": [{"x": 1, "y": 2}, {"x": 3, "y": 0}],
                "created": "2030-01-02T03:04:05+00:00",
                "colour": 2,
            }
        ]
    }


def test_pydantic_models() -> None:
    customer = Customer(
        name="Ann",
        address=Address(city="Oslo"),
        since=dt.date(2020, 2, 29),
        balance=decimal.Decimal("10.50"),
    )
    encoded = roundtrip(customer)
    assert encoded["name"] == "Ann"
    assert encoded["address"] == {"city": "Oslo", "zip_code": None}
    assert encoded["since"] == "2020-02-29"
    assert decimal.Decimal(encoded["balance"]) == decimal.Decimal("10.50")
    assert Customer.model_validate(encoded) == customer
    assert roundtrip([Address(city="a")]) == [{"city": "a", "zip_code": None}]


def test_typeddicts_are_plain_dicts() -> None:
    email: Email = {"to": "u@example.com", "subject": "hi"}
    assert roundtrip(email) == {"to": "u@example.com", "subject": "hi"}


def test_standard_library_values() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert roundtrip(
        {
            "when": dt.datetime(2030, 1, 2, 3, 4, 5, 6),
            "aware": dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "day": dt.date(2030, 1, 2),
            "at": dt.time(9, 30),
            "wait": dt.timedelta(minutes=1, milliseconds=500),
            "id": u,
            "amount": decimal.Decimal("1.10"),
            "colour": Colour.RED,
            "size": Size.SMALL,
            "mode": Mode.FAST,
            "tags": {"b", "a"},
            "frozen": frozenset({3, 1, 2}),
            "tuple": (1, "two"),
        }
    ) == {
        "when": "2030-01-02T03:04:05.000006",
        "aware": "2030-01-02T03:04:05-05:00",
        "day": "2030-01-02",
        "at": "09:30:00",
        "wait": 60.5,
        "id": "12345678-1234-5678-1234-567812345678",
        "amount": "1.10",
        "colour": "red",
        "size": 1,
        "mode": "fast",
        "tags": ["a", "b"],
        "frozen": [1, 2, 3],
        "tuple": [1, "two"],
    }


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        {"nested": [1, {"deeper": float("nan")}]},
        Point(1, float("inf")),  # type: ignore[arg-type]
        object(),
        {"fn": print},
        b"raw bytes",
        {(1, 2): "tuple key"},
        Colour,
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "nested-nan",
        "dataclass-inf",
        "object",
        "function",
        "bytes",
        "tuple-key",
        "enum-class",
    ],
)
def test_unencodable_values_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        dumps(value)


def test_circular_and_too_deep_structures_raise_type_error() -> None:
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(TypeError):
        dumps(circular)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TypeError):
        dumps(deep)


@pytest.mark.parametrize(
    "text",
    ["\udc80", "a\ud800b", "\udfff\ud83d", "😀 \x00 \x1f \u2028 \\ \" '"],
    ids=["low", "high-inside", "reversed-pair", "controls"],
)
def test_any_python_string_round_trips(text: str) -> None:
    data = dumps({"s": text, text: [text]})
    data.decode("ascii")  # escapes only: any database text column stores it
    assert loads(data) == {"s": text, text: [text]}


def test_loads_rejects_non_standard_constants() -> None:
    for text in ("NaN", "[Infinity]", '{"a": -Infinity}'):
        with pytest.raises(ValueError):
            loads(text)


# -- decoding ------------------------------------------------------------------------------


def test_decoder_for_a_dataclass_validates_and_builds_it() -> None:
    decode = decoder_for(Point)
    assert decode(b'{"x": 1, "y": 2}') == Point(1, 2)
    assert decode(dumps(Point(5))) == Point(5, 0)
    with pytest.raises(ValueError):
        decode(b'{"y": 2}')
    with pytest.raises(ValueError):
        decode(b'{"x": "not a number"}')


def test_decoder_for_nested_dataclasses_and_enums() -> None:
    shape = Shape("sq", [Point(0, 0)], dt.datetime(2030, 1, 1, tzinfo=dt.UTC), Colour.RED)
    decoded = decoder_for(Shape)(dumps(shape))
    assert decoded == shape
    assert isinstance(decoded.points[0], Point)


def test_decoder_for_a_pydantic_model() -> None:
    customer = Customer(
        name="Ann",
        address=Address(city="Oslo"),
        since=dt.date(2020, 1, 1),
        balance=decimal.Decimal("3.25"),
    )
    decoded = decoder_for(Customer)(dumps(customer))
    assert decoded == customer
    assert isinstance(decoded.address, Address)
    with pytest.raises(ValueError):
        decoder_for(Customer)(b'{"name": "Ann"}')


def test_decoder_for_a_typeddict() -> None:
    decode = decoder_for(Email)
    value = decode(b'{"to": "u@example.com", "subject": "hi"}')
    assert value == {"to": "u@example.com", "subject": "hi"}
    assert type(value) is dict
    assert decode(b'{"to": "a", "subject": "b", "cc": ["c"]}')["cc"] == ["c"]
    with pytest.raises(ValueError):
        decode(b'{"to": "u@example.com"}')  # missing a required key
    with pytest.raises(ValueError):
        decode(b"[1, 2]")


def test_decoder_for_a_partial_typeddict() -> None:
    decode = decoder_for(Options)
    assert decode(b'{"name": "x"}') == {"name": "x"}
    assert decode(b'{"name": "x", "verbose": true}') == {"name": "x", "verbose": True}
    with pytest.raises(ValueError):
        decode(b'{"verbose": true}')  # the Required key is missing


@pytest.mark.parametrize("annotation", [int, str, dict, list, Any, list[Point], None, "Point"])
def test_decoder_for_anything_else_is_plain_json(annotation: Any) -> None:
    decode = decoder_for(annotation)
    assert decode(b'{"x": 1}') == {"x": 1}
    assert decode(b"[1, 2]") == [1, 2]
    assert decode(b"null") is None


def test_decoders_are_cached() -> None:
    assert decoder_for(Point) is decoder_for(Point)
