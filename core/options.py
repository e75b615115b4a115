"""The one options parser and the one error formatter for everything a user writes.

Grid files, ``mlflow.yaml``, and the options of attention variants, model families and tasks
are pydantic models. :func:`parse_options` validates raw input against one of them and turns
every pydantic error into a :class:`Problem` with its real field path (``grid.model[1].
attention_options.window``), so messages never string-patch paths. An :class:`OptionsError`
can be re-rooted with :meth:`OptionsError.under` by a caller that knows where the options sat
in the file. Echoed values are truncated, so a huge value never floods the terminal.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from .errors import BadInputError

MAX_ECHO = 60  # characters of a user's value echoed back in a message


def short_repr(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 50 MB alias expansion stays one line)."""
    text = _bounded_repr(value, limit + 1)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded_repr(value: Any, budget: int) -> str:
    # repr() of a deeply shared structure is exponential; stop walking once the budget is spent
    if isinstance(value, dict):
        parts, used = [], 0
        for k, v in value.items():
            if used > budget:
                parts.append("…")
                break
            part = f"{k!r}: {_bounded_repr(v, budget - used)}"
            parts.append(part)
            used += len(part) + 2
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        parts, used = [], 0
        for v in value:
            if used > budget:
                parts.append("…")
                break
            part = _bounded_repr(v, budget - used)
            parts.append(part)
            used += len(part) + 2
        return "[" + ", ".join(parts) + "]"
    text = repr(value)
    return text[: budget + 1]


def join_path(*parts: Any) -> str:
    """``join_path("grid.model", 1, "window")`` -> ``grid.model[1].window``."""
    out = ""
    for part in parts:
        if part in ("", None):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where, and what (including what would be valid)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class OptionsError(BadInputError):
    """A BadInputError made of problems with field paths; exit code 2."""

    def __init__(self, problems: Iterable[Problem], source: str = ""):
        self.problems = list(problems)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        lines = [str(p) for p in self.problems]
        if not self.source:
            return "\n".join(lines)
        return f"{self.source}:\n" + "\n".join(f"  {line}" for line in lines)

    def under(self, prefix: str) -> "OptionsError":
        """The same problems with ``prefix`` in front of each path."""
        return OptionsError([Problem(join_path(prefix, p.path), p.message) for p in self.problems], self.source)


def parse_options(model_cls: type[BaseModel], raw: Any, where: str = "", *, also_valid: Iterable[str] = ()) -> BaseModel:
    """Validate ``raw`` (``None`` means empty) against ``model_cls``; raise :class:`OptionsError`.

    ``where`` is the path of ``raw`` in the user's file; ``also_valid`` names keys a caller
    strips before calling (e.g. ``family``, ``d_model`` in a model entry), so an unknown key's
    message lists every key that would have been accepted there."""
    try:
        return model_cls.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise OptionsError(describe(exc, model_cls, where, also_valid=also_valid)) from None


def describe(exc: ValidationError, model_cls: type[BaseModel], where: str = "", *,
             also_valid: Iterable[str] = ()) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with the valid fields after an unknown key."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = join_path(where, *loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = valid_fields(model_cls, loc)
            if valid is not None and len(loc) == 1:
                valid += [k for k in also_valid if k not in valid]
            message = "unknown field" + ("" if valid is None else f"; valid: {', '.join(valid)}" if valid
                                         else "; nothing is valid here (it takes no options)")
        elif kind == "missing":
            message = "required field missing"
        else:  # pydantic prefixes a validator's own words with "Value error, ": they speak for themselves
            message = f"{err['msg'].removeprefix('Value error, ')} (got {short_repr(err.get('input'))})"
        problems.append(Problem(path, message))
    return problems


def valid_fields(model_cls: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names valid at ``loc`` (the location of an unknown key) inside ``model_cls``;
    None when the type there is not known (a free-form dict)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or not _is_model(cls):
            continue  # a list index or a dict key keeps the element type found so far
        info = cls.model_fields.get(str(part))
        if info is None:
            return None
        cls = _model_in(info.annotation)
        if cls is None:
            return None
    return list(cls.model_fields) if _is_model(cls) else None


def _is_model(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
