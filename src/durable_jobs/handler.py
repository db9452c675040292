"""Registered handlers: the function, how to decode its argument and its result."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .codec import Decoder, decoder_for, describe_decode_error, loads
from .options import Limits

__all__ = ["Handler", "InvalidArguments", "inspect_handler"]


class InvalidArguments(TypeError, ValueError):
    """Arguments that do not fit the parameter annotation of the handler they are for.

    Both a ``TypeError`` and a ``ValueError`` (a string where a dataclass is expected,
    a missing field, a value out of range): either catches it. ``job_type`` and
    ``parameter`` name the handler and its parameter.
    """

    def __init__(self, message: str, *, job_type: str, parameter: str | None) -> None:
        super().__init__(message)
        self.job_type = job_type
        self.parameter = parameter


@dataclass(frozen=True)
class Handler:
    """A job type's function and its registration defaults.

    ``checks_args``: whether ``decode_args`` validates (the parameter is annotated with a
    dataclass, pydantic model or TypedDict), so that arguments can be refused before they
    are stored; for a plain parameter any JSON value is passed on and there is nothing to
    check. ``param`` and ``arg_type`` are that parameter's name and annotation.
    """

    name: str
    fn: Callable[..., Any]
    is_async: bool
    takes_arg: bool
    decode_args: Decoder
    decode_result: Decoder
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Fleet-wide caps of the type (``concurrency``, ``rate_limit``), if any.
    limits: Limits | None = None
    checks_args: bool = False
    param: str | None = None
    arg_type: Any = None

    def check_args(self, encoded: bytes) -> Any:
        """Decode JSON-encoded arguments exactly as a worker will before calling the
        handler, and return the value; ``InvalidArguments`` naming the job type and the
        parameter if they do not fit its annotation."""
        try:
            return self.decode_args(encoded)
        except Exception as exc:
            kind = getattr(self.arg_type, "__name__", repr(self.arg_type))
            raise InvalidArguments(
                f"arguments of job type {self.name!r} do not fit parameter {self.param!r} "
                f"({kind}) of its handler: {describe_decode_error(exc)}",
                job_type=self.name,
                parameter=self.param,
            ) from exc


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


def inspect_handler(
    name: str, fn: Callable[..., Any], defaults: dict[str, Any], limits: Limits | None = None
) -> Handler:
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
    param = positional[0].name if positional else None
    arg_type = hints.get(param) if param is not None else None
    decode_args = decoder_for(arg_type) if arg_type is not None else loads
    return Handler(
        name=name,
        fn=fn,
        is_async=_is_async(fn),
        takes_arg=takes_arg,
        decode_args=decode_args,
        decode_result=decoder_for(hints["return"]) if "return" in hints else loads,
        defaults=defaults,
        limits=limits,
        checks_args=decode_args is not loads,  # plain JSON: nothing to check
        param=param,
        arg_type=arg_type,
    )
