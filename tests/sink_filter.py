"""A small evaluator for the subset of the Cloud Logging query language our sink filters use.

Why: the sinks' filters decide which audit entries ever reach the controller, and Google offers no
offline way to run one. This module parses a filter and evaluates it against a LogEntry as JSON, so the
tests can show that the filters in infra/logging.tf select exactly the intended sample entries.

Supported (and nothing else - anything outside raises FilterSyntaxError, so a filter that starts using
more of the language fails loudly instead of being half-understood):
- comparisons `FIELD = VALUE`, `FIELD != VALUE`, `FIELD : VALUE` (has), `FIELD:*` (present);
  FIELD is a dotted path (`protoPayload.methodName`), VALUE a double-quoted string or a bare word
  (`true`, `false`, a number, a word);
- `AND`, `OR`, `NOT` (or a leading `-`), parentheses, and implicit AND between adjacent terms;
  `NOT` binds tightest, then `OR`, then `AND`, as in Cloud Logging (where `a AND b OR c` means
  `a AND (b OR c)`).
Semantics follow the Logging documentation where it matters here: a comparison on a missing field is
false (so `NOT f=x` is true when `f` is absent), `=` compares strings exactly and booleans/numbers by
value, `:` is a case-insensitive substring test on strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Filter", "FilterSyntaxError", "matches", "parse"]


class FilterSyntaxError(ValueError):
    """The filter uses syntax this matcher does not implement, or is malformed."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<op>!=|=~|!~|>=|<=|[=:<>])
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<star>\*)
  | (?P<minus>-(?=[A-Za-z(]))
  | (?P<word>[A-Za-z0-9_@%./+-]+)
    """,
    re.VERBOSE,
)
_SUPPORTED_OPS = {"=", "!=", ":"}
_FIELD = re.compile(r"^[A-Za-z_@][A-Za-z0-9_@]*(\.[A-Za-z_@][A-Za-z0-9_@]*)*$")
_MISSING = object()


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterSyntaxError(f"unexpected character {text[pos]!r} at {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group()
            if kind == "word" and word in ("AND", "OR", "NOT"):
                kind = word
            out.append(_Tok(kind, word, pos))
        pos = m.end()
    return out


Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Filter:
    """A parsed filter; `matches(entry)` evaluates it against a LogEntry (a JSON mapping)."""

    text: str
    _pred: Predicate

    def matches(self, entry: Mapping[str, Any]) -> bool:
        return self._pred(entry)


def parse(text: str) -> Filter:
    """Parse `text`; raises FilterSyntaxError naming the position of the first problem."""
    tokens = _tokenize(text)
    if not tokens:
        raise FilterSyntaxError("empty filter")
    parser = _Parser(tokens)
    pred = parser.expression()
    if parser.peek() is not None:
        tok = parser.peek()
        assert tok is not None
        raise FilterSyntaxError(f"unexpected {tok.text!r} at {tok.pos}")
    return Filter(text, pred)


def matches(text: str, entry: Mapping[str, Any]) -> bool:
    return parse(text).matches(entry)


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterSyntaxError(f"unexpected end of filter (expected {kind or 'a term'})")
        if kind is not None and tok.kind != kind:
            raise FilterSyntaxError(f"expected {kind} at {tok.pos}, found {tok.text!r}")
        self.i += 1
        return tok

    # expression := conjunction ; conjunction := disjunction ((AND)? disjunction)*
    def expression(self) -> Predicate:
        terms = [self.disjunction()]
        while (tok := self.peek()) is not None and tok.kind != "rparen":
            if tok.kind == "AND":
                self.take("AND")
            terms.append(self.disjunction())
        if len(terms) == 1:
            return terms[0]
        return lambda e, ts=tuple(terms): all(t(e) for t in ts)

    # disjunction := negation (OR negation)*
    def disjunction(self) -> Predicate:
        terms = [self.negation()]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.take("OR")
            terms.append(self.negation())
        if len(terms) == 1:
            return terms[0]
        return lambda e, ts=tuple(terms): any(t(e) for t in ts)

    def negation(self) -> Predicate:
        tok = self.peek()
        if tok is not None and tok.kind in ("NOT", "minus"):
            self.take()
            inner = self.negation()
            return lambda e: not inner(e)
        return self.primary()

    def primary(self) -> Predicate:
        tok = self.take()
        if tok.kind == "lparen":
            inner = self.expression()
            self.take("rparen")
            return inner
        if tok.kind != "word" or not _FIELD.match(tok.text):
            raise FilterSyntaxError(f"expected a field name at {tok.pos}, found {tok.text!r} "
                                    "(bare global search terms are not supported)")
        path = tuple(tok.text.split("."))
        op = self.take("op")
        if op.text not in _SUPPORTED_OPS:
            raise FilterSyntaxError(f"operator {op.text!r} at {op.pos} is not supported by this matcher")
        value_tok = self.take()
        if value_tok.kind == "star":
            if op.text != ":":
                raise FilterSyntaxError(f"'*' at {value_tok.pos} is only valid after ':'")
            return lambda e: _lookup(e, path) is not _MISSING
        if value_tok.kind == "string":
            value: str = _unquote(value_tok.text)
            quoted = True
        elif value_tok.kind == "word":
            value, quoted = value_tok.text, False
        else:
            raise FilterSyntaxError(f"expected a value at {value_tok.pos}, found {value_tok.text!r}")
        return _comparison(path, op.text, value, quoted)


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _lookup(entry: Any, path: tuple[str, ...]) -> Any:
    cur = entry
    for part in path:
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _equal(actual: Any, value: str, quoted: bool) -> bool:
    if isinstance(actual, bool):
        return value.lower() == ("true" if actual else "false")
    if isinstance(actual, int | float):
        try:
            return float(value) == float(actual)
        except ValueError:
            return False
    if isinstance(actual, str):
        return actual == value
    return False  # objects and lists never equal a literal


def _has(actual: Any, value: str) -> bool:
    if isinstance(actual, list):
        return any(_has(item, value) for item in actual)
    if isinstance(actual, bool):
        return value.lower() == ("true" if actual else "false")
    if isinstance(actual, str | int | float):
        return value.lower() in str(actual).lower()
    return False


def _comparison(path: tuple[str, ...], op: str, value: str, quoted: bool) -> Predicate:
    def pred(entry: Mapping[str, Any]) -> bool:
        actual = _lookup(entry, path)
        if actual is _MISSING:
            return False
        if op == "=":
            return _equal(actual, value, quoted)
        if op == "!=":
            return not _equal(actual, value, quoted)
        return _has(actual, value)

    return pred
