"""JSON encoding of job arguments and results, and typed decoding for handlers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import reprlib
import typing
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any, is_typeddict

__all__ = ["Decoder", "decoder_for", "describe_decode_error", "dumps", "loads"]


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)
    if model_dump is not None and hasattr(type(value), "model_fields"):
        return model_dump(mode="json")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


# ASCII output keeps lone surrogates and control characters as escapes, so any Python
# string round-trips through any database's text column unchanged.
_ENCODER = json.JSONEncoder(default=_default, allow_nan=False, separators=(",", ":"))


def _c_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without its per-call setup (half the cost of a small value),
    where the C accelerator exists. A cycle then ends in ``RecursionError``, not
    ``ValueError``: both are reported as ``TypeError``."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    one = make(
        None, _default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda value: "".join(one(value, 0))


_encode = _c_encode()


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON.

    Raises ``TypeError`` for anything JSON cannot represent, NaN and infinities included,
    so bad arguments fail at enqueue rather than in the worker.
    """
    if value is None:  # jobs without arguments: the most common case
        return b"null"
    try:
        return _encode(value).encode("ascii")
    except ValueError as exc:  # allow_nan=False reports NaN/inf as ValueError
        raise TypeError(f"arguments cannot be encoded as JSON: {exc}") from exc
    except RecursionError as exc:
        raise TypeError("arguments cannot be encoded as JSON: nesting too deep") from exc


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


# One decoder for every call: ``json.loads`` with an option builds a new one each time,
# which cost three times the decoding of a small document (arguments, results and
# checkpoints are decoded on every run).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: bytes | str | None) -> Any:
    """Decode JSON bytes (``None`` decodes to ``None``)."""
    if data is None or data == b"null":
        return None
    if isinstance(data, bytes):
        data = data.decode()  # the library writes ASCII (dumps), and users UTF-8
    return _DECODER.decode(data)


Decoder = Callable[[bytes], Any]


def _is_typed(annotation: Any) -> bool:
    if not isinstance(annotation, type):
        return False
    return (
        dataclasses.is_dataclass(annotation)
        or is_typeddict(annotation)
        or hasattr(annotation, "model_validate_json")
    )


@lru_cache(maxsize=1024)
def decoder_for(annotation: Any) -> Decoder:
    """A function decoding JSON into ``annotation``.

    Dataclasses, pydantic models and TypedDicts are validated by pydantic; anything else
    gets the plain decoded JSON value.
    """
    if not _is_typed(annotation):
        return loads
    from pydantic import PydanticUserError, TypeAdapter  # only typed handlers pay for pydantic

    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    except PydanticUserError:
        # pydantic cannot validate typing.TypedDict before Python 3.12: check the keys.
        return _typeddict_decoder(annotation)
    return adapter.validate_json


def _typeddict_keys(annotation: Any) -> tuple[frozenset[str], frozenset[str]]:
    """The required and all known keys of a TypedDict.

    Under ``from __future__ import annotations`` Python 3.11 cannot see ``NotRequired``
    or ``Required`` in the (string) annotations and counts such keys by the class's
    totality; resolving the annotations puts them right.
    """
    required = set(annotation.__required_keys__)
    optional = set(annotation.__optional_keys__)
    try:
        hints = typing.get_type_hints(annotation, include_extras=True)
    except Exception:  # unresolvable names: keep what the class computed
        hints = {}
    for key, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is typing.NotRequired:
            required.discard(key)
            optional.add(key)
        elif origin is typing.Required:
            optional.discard(key)
            required.add(key)
    return frozenset(required), frozenset(required | optional)


def _typeddict_decoder(annotation: Any) -> Decoder:
    required, known = _typeddict_keys(annotation)

    def decode(data: bytes) -> Any:
        value = loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"{annotation.__name__} expects a JSON object, got {value!r}")
        missing, unknown = required - value.keys(), value.keys() - known
        if missing or unknown:
            raise ValueError(
                f"{annotation.__name__}: missing keys {sorted(missing)}, unknown keys "
                f"{sorted(unknown)}"
            )
        return value

    return decode


# How many of a validation error's problems a message lists, and how long the shown
# values may be: a message names the problems, it does not echo the payload.
_MAX_PROBLEMS = 5
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def describe_decode_error(error: Exception) -> str:
    """One line saying why a decoder refused a value: each problem as ``field: message
    (got value)`` for pydantic's errors, the error's own text otherwise."""
    problems = None
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            problems = list(errors(include_url=False))
        except Exception:  # not pydantic's: use the text
            problems = None
    if not problems:
        return str(error).replace("\n", " ")
    parts = []
    for problem in problems[:_MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in problem.get("loc", ()))
        text = f"{loc}: {problem.get('msg', '?')}" if loc else str(problem.get("msg", "?"))
        if problem.get("type") != "missing" and "input" in problem:
            text += f" (got {_SHORT.repr(problem['input'])})"
        parts.append(text)
    if len(problems) > _MAX_PROBLEMS:
        parts.append(f"and {len(problems) - _MAX_PROBLEMS} more")
    return "; ".join(parts)
