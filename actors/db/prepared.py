"""Hot statements compiled once per database and run on the driver's own connection.

SQLAlchemy compiles (or looks up its cache key for) a statement and processes its parameters and rows on every
call: tens of µs each, more than the query itself on the cluster-read and heartbeat paths. A Prepared statement
is compiled once per database (its dialect) into driver SQL and a recipe for its positional arguments; a
call then only fills the arguments in. An expanding `IN` takes lists of any length: a list is padded with
its last item to the next power of two (a repeated item changes no `IN` or `NOT IN`), so a statement has a
few compiled forms, not one per length. Rows come back as the driver gives them, as Database's other reads
(every column type passes through unchanged: actors.db.column_types).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")
# What a read makes of the driver's rows (tuples, or asyncpg's Records), given the columns' names.
DriverShape = Callable[[list[str], Sequence[Any]], T]
# A few positional arguments in a row of a compiled form, from the call's parameters.
_Segment = Callable[[Mapping[str, Any]], Sequence[Any]]


class Prepared:
    """A statement (SQLAlchemy Core) the Database runs on its fast path: fetch_all, fetch_one, fetch_column,
    write and write_many take it where they take a statement. Its parameters are bindparam()s by name, without
    a value; an expanding one (`.in_(sa.bindparam("ids", expanding=True))`) takes a list."""

    def __init__(self, statement: sa.ClauseElement):
        self.statement = statement
        binds = _compile(statement, None).binds
        # What a call passes: the parameters without a value of their own (the statement's constants, an
        # `.in_((...))` of them included, are bound parameters too, with their values).
        self.keys = tuple(sorted(key for key, bind in binds.items() if bind.required))
        self.lists = tuple(key for key in self.keys if binds[key].expanding)


def prepared(statement: sa.ClauseElement) -> Prepared:
    """statement, to be run on the fast path."""
    return Prepared(statement)


def _compile(statement: sa.ClauseElement, dialect: sa.Dialect | None) -> SQLCompiler:
    compiled = statement.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler):
        raise TypeError(f"not a statement with parameters: {statement}")
    return compiled


def padded_length(n: int) -> int:
    """The length a list of n items is padded to: 0, or the next power of two."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()


class _Slot:
    """Stands for one parameter (one item of a list) while a statement compiles: where it lands among the
    positional arguments says which argument it is."""

    __slots__ = ("key", "index")

    def __init__(self, key: str, index: int | None = None):
        self.key, self.index = key, index


def _segments(
    values: list[Any], processors: list[Callable[[Any], Any] | None], lengths: Mapping[str, int]
) -> list[_Segment]:
    """How to fill in positional arguments (compiled values: constants, or _Slots), as segments of a few
    arguments in a row: a constant, a parameter, a whole list padded to its length, or one item of a list."""
    segments: list[_Segment] = []
    at = 0
    while at < len(values):
        value, processor = values[at], processors[at]
        if isinstance(value, _Slot) and value.index == 0:
            length = lengths[value.key]
            run = values[at : at + length]
            if len(run) == length and all(
                isinstance(v, _Slot) and v.key == value.key and v.index == i and processors[at + i] is processor
                for i, v in enumerate(run)
            ):  # the whole list, in order (as SQLAlchemy renders it): one segment
                segments.append(_padded(value.key, length, processor))
                at += length
                continue
        segments.append(_single(value, processor))
        at += 1
    return segments


def _single(value: Any, processor: Callable[[Any], Any] | None) -> _Segment:
    """One argument: a value of the statement itself, a parameter, or one item of a list."""
    if not isinstance(value, _Slot):
        constant = (processor(value) if processor is not None else value,)
        return lambda params: constant
    key, index = value.key, value.index

    def one(params: Mapping[str, Any]) -> Sequence[Any]:
        found = params[key]
        if index is not None:
            found = found[index] if index < len(found) else found[-1]
        return (processor(found) if processor is not None else found,)

    return one


def _padded(key: str, length: int, processor: Callable[[Any], Any] | None) -> _Segment:
    """A list's items, padded with its last one to length (a repeated item changes no IN or NOT IN)."""

    def items(params: Mapping[str, Any]) -> Sequence[Any]:
        found = list(params[key])
        found += [found[-1]] * (length - len(found))
        return found if processor is None else [processor(i) for i in found]

    return items


class Form:
    """One compiled form of a statement: the driver's SQL and how to fill in its positional arguments."""

    def __init__(self, sql: str, segments: list[_Segment]):
        self.sql = sql
        self._segments = segments

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        arguments: list[Any] = []
        try:
            for segment in self._segments:
                arguments += segment(params)
        except KeyError as exc:
            raise ValueError(f"no value for the statement's parameter {exc.args[0]!r}:\n{self.sql}") from None
        return tuple(arguments)


def compile_form(prepared: Prepared, dialect: sa.Dialect, lengths: Mapping[str, int]) -> Form:
    """prepared's statement in dialect's SQL, its lists (by name) that many items long."""
    compiled = _compile(prepared.statement, dialect)
    slots: dict[str, Any] = {key: _Slot(key) for key in prepared.keys}
    for key in prepared.lists:
        slots[key] = [_Slot(key, i) for i in range(lengths[key])]
    expanded = compiled.construct_expanded_state(slots)
    if expanded.positiontup is None:
        raise ValueError(f"{dialect.name}: prepared statements need a positional paramstyle")
    names = expanded.positiontup
    return Form(
        expanded.statement,
        _segments(list(expanded.positional_parameters), [expanded.processors.get(name) for name in names], lengths),
    )


def _items(params: Mapping[str, Any], key: str) -> Sequence[Any]:
    items = params.get(key)
    if not isinstance(items, list | tuple):  # a string would be a list of its characters
        raise ValueError(f"the statement's parameter {key!r} takes a list or tuple, not {items!r}")
    return items


class Forms:
    """The compiled forms of the Prepared statements one database runs, made on first use."""

    def __init__(self, dialect: sa.Dialect):
        self._dialect = dialect
        self._forms: dict[tuple[Prepared, tuple[int, ...]], Form] = {}

    def form(self, prepared: Prepared, params: Mapping[str, Any]) -> Form:
        lengths = tuple(padded_length(len(_items(params, key))) for key in prepared.lists) if prepared.lists else ()
        found = self._forms.get((prepared, lengths))
        if found is None:
            found = compile_form(prepared, self._dialect, dict(zip(prepared.lists, lengths, strict=True)))
            self._forms[(prepared, lengths)] = found
        return found

    def bind(self, prepared: Prepared, params: Mapping[str, Any] | None) -> tuple[str, tuple[Any, ...]]:
        """The driver's SQL and positional arguments for one call."""
        params = params or {}
        form = self.form(prepared, params)
        return form.sql, form.arguments(params)
