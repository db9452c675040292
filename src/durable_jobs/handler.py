"""Registered handlers: the function, how to decode its argument and its result."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .codec import Decoder, decoder_for, loads

__all__ = ["Handler", "inspect_handler"]


@dataclass(frozen=True)
class Handler:
    """A job type's function and its registration defaults."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    takes_arg: bool
    decode_args: Decoder
    decode_result: Decoder
    defaults: dict[str, Any] = field(default_factory=dict)


def _annotated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose annotations describe a call of ``fn``.

    That is ``fn`` itself for functions and methods, the wrapped function of a
    ``functools.partial`` and ``__call__`` for other callable objects.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    # The bound __call__ of an object (fn is known to be callable).
    call: Callable[..., Any] = type(fn).__call__.__get__(fn)
    return call


def _is_async(fn: Callable[..., Any]) -> bool:
    # iscoroutinefunction sees through partials but not an object's async __call__.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(_annotated(fn))


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(_annotated(fn))
    except Exception:
        # Unresolvable annotations (forward references to missing names) fall back to
        # plain JSON, rather than making the handler unusable.
        return {}


def inspect_handler(name: str, fn: Callable[..., Any], defaults: dict[str, Any]) -> Handler:
    """Check that ``fn`` takes zero or one positional argument and build its ``Handler``."""
    if not callable(fn):
        raise ValueError(f"handler for {name!r} must be callable, got {fn!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"handler for {name!r} has no usable signature: {exc}") from exc
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [
        p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if len(required) > 1 or required_kw:
        raise ValueError(
            f"handler for {name!r} must take zero or one positional argument (the job's "
            f"arguments), but its signature is {name}{sig}"
        )
    takes_arg = bool(positional) or any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    hints = _hints(fn)
    arg_type = hints.get(positional[0].name) if positional else None
    return Handler(
        name=name,
        fn=fn,
        is_async=_is_async(fn),
        takes_arg=takes_arg,
        decode_args=decoder_for(arg_type) if arg_type is not None else loads,
        decode_result=decoder_for(hints["return"]) if "return" in hints else loads,
        defaults=defaults,
    )
