"""A safe parser and evaluator for ``where=`` row conditions (no ``eval``, no PyTables, no numexpr).

The grammar is the part of ``pd.read_hdf(where=...)`` / PyTables conditions people write::

    expr    := or
    or      := and ("|" and)*            also the word "or"
    and     := not ("&" not)*            also the word "and"
    not     := "~" not | "not" not | cmp
    cmp     := operand (("==" | "=" | "!=" | "<" | "<=" | ">" | ">=") operand)+   chained: a < x < b
             | operand ("in" | "not in") list
             | "(" expr ")"
    operand := column | literal | list
    literal := number | 'text' | "text" | True | False | Timestamp('...') | datetime('...')
             | Timedelta('...') | NaT
    list    := "[" literal ("," literal)* "]"       (``col == [...]`` means ``in``, as in pandas)

A column is a name (dots allowed: ``parent.child``), or any text in backquotes.
Everything is checked when the condition is parsed; a mistake raises
:class:`ValueError` quoting the condition with a caret under the bad term.

>>> p = parse("(label == 2) & (x > 0.5)")
>>> sorted(p.columns)
['label', 'x']
>>> import pandas as pd
>>> p.mask(pd.DataFrame({"label": [2, 2, 1], "x": [0.1, 0.9, 0.9]})).tolist()
[False, True, False]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from daskh5.errors import WhereError

__all__ = ["Condition", "parse"]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<bq>`[^`]*`)
    | (?P<name>[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*)
    | (?P<op>==|!=|<=|>=|<|>|=|&|\||~|\(|\)|\[|\]|,)
    )""",
    re.VERBOSE,
)
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_CALLS = {"Timestamp", "datetime", "Timedelta", "timedelta", "pd.Timestamp", "pd.Timedelta"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _error(text: str, pos: int, why: str) -> WhereError:
    return WhereError(f"where={text!r}: {why} at position {pos}:\n    {text}\n    {' ' * pos}^")


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise _error(text, bad, f"unexpected character {text[bad]!r}")
        kind = m.lastgroup
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


# -- the tree ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    value: object
    pos: int


@dataclass(frozen=True)
class Col:
    name: str
    pos: int


@dataclass(frozen=True)
class Cmp:
    column: Col
    op: str  # ==, !=, <, <=, >, >=, in, not in
    value: object  # a literal value, or a tuple for in / not in
    pos: int


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or, not
    args: tuple


class _Parser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, why: str) -> WhereError:
        return _error(self.text, tok.pos, why)

    def word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text in words

    def parse(self):
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "an empty condition")
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), f"unexpected {self.peek().text!r}")
        return node

    def or_(self):
        args = [self.and_()]
        while self.peek().text == "|" or self.word("or"):
            self.take()
            args.append(self.and_())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_(self):
        args = [self.not_()]
        while self.peek().text == "&" or self.word("and"):
            self.take()
            args.append(self.not_())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_(self):
        if self.peek().text == "~" or self.word("not"):
            self.take()
            return BoolOp("not", (self.not_(),))
        return self.comparison()

    def comparison(self):
        tok = self.peek()
        if tok.text == "(":
            self.take()
            node = self.or_()
            if self.peek().text != ")":
                raise self.fail(self.peek(), "expected ')'")
            self.take()
            return node
        left = self.operand()
        if self.word("in") or (self.word("not") and self.toks[self.i + 1].text == "in"):
            negate = self.take().text == "not"
            if negate:
                self.take()
            if not isinstance(left, Col):
                raise self.fail(tok, "'in' needs a column on its left")
            values = self.operand()
            if not isinstance(values, tuple):
                raise self.fail(self.toks[self.i - 1], "'in' needs a list like [1, 2]")
            return Cmp(left, "not in" if negate else "in", values, tok.pos)
        terms = []
        while self.peek().kind == "op" and self.peek().text in ("==", "=", "!=", "<", "<=", ">", ">="):
            op = self.take().text
            right = self.operand()
            terms.append(self._compare(left, "==" if op == "=" else op, right, tok))
            left = right
        if not terms:
            raise self.fail(self.peek(), "expected a comparison (==, !=, <, <=, >, >=, in)")
        return terms[0] if len(terms) == 1 else BoolOp("and", tuple(terms))

    def _compare(self, left, op: str, right, tok: _Tok) -> Cmp:
        if isinstance(left, Col) and isinstance(right, Col):
            raise self.fail(tok, "compare a column with a value, not with another column")
        if not isinstance(left, Col) and not isinstance(right, Col):
            raise self.fail(tok, "a comparison needs a column on one side")
        if not isinstance(left, Col):
            left, right, op = right, left, _FLIP[op]
        if isinstance(right, tuple):
            if op not in ("==", "!="):
                raise self.fail(tok, f"a list can only be compared with == or != (got {op})")
            return Cmp(left, "in" if op == "==" else "not in", right, tok.pos)
        return Cmp(left, op, right, tok.pos)

    def operand(self):
        tok = self.take()
        if tok.kind == "num":
            return Lit(float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text), tok.pos)
        if tok.kind == "str":
            return Lit(_unquote(tok.text), tok.pos)
        if tok.kind == "bq":
            return Col(tok.text[1:-1], tok.pos)
        if tok.text == "[":
            values = []
            while True:
                item = self.operand()
                if not isinstance(item, Lit):
                    raise self.fail(self.toks[self.i - 1], "a list holds values only")
                values.append(item)
                if self.peek().text == ",":
                    self.take()
                    if self.peek().text == "]":
                        break
                    continue
                break
            if self.take().text != "]":
                raise self.fail(self.toks[self.i - 1], "expected ']' or ','")
            return tuple(values)
        if tok.kind == "name":
            if tok.text in ("True", "False", "true", "false"):
                return Lit(tok.text in ("True", "true"), tok.pos)
            if tok.text in ("NaT", "None", "nan", "NaN") and self.peek().text != "(":
                return Lit(None, tok.pos)
            if tok.text in _CALLS:
                return self.call(tok)
            if self.peek().text == "(":
                raise self.fail(tok, f"unknown function {tok.text!r} (only Timestamp, Timedelta, datetime)")
            return Col(tok.text, tok.pos)
        raise self.fail(tok, f"expected a column or a value, got {tok.text or 'the end'!r}")

    def call(self, name: _Tok) -> Lit:
        import pandas as pd

        if self.take().text != "(":
            raise self.fail(name, f"{name.text} needs an argument: {name.text}('2020-01-01')")
        arg = self.take()
        if arg.kind not in ("str", "num") or self.take().text != ")":
            raise self.fail(arg, f"{name.text}(...) takes one string or number")
        value = _unquote(arg.text) if arg.kind == "str" else float(arg.text)
        try:
            out = pd.Timedelta(value) if "delta" in name.text.lower() else pd.Timestamp(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(arg, f"{name.text}({arg.text}) is not a valid time: {exc}") from None
        return Lit(out, name.pos)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


# -- checking against the columns, evaluating ----------------------------------------------------
class Condition:
    """A parsed ``where=`` condition: the columns it needs, a row mask, and a chunk filter."""

    def __init__(self, text: str, tree):
        self.text, self.tree = text, tree
        self.columns = sorted({c.column.name for c in _cmps(tree)})

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def __dask_tokenize__(self):
        return ("daskh5.Condition", self.text)

    def check(self, kinds: dict) -> None:
        """Refuse unknown columns and literals of the wrong type; ``kinds``: ``{name: pandas dtype}``."""
        import difflib

        for c in _cmps(self.tree):
            name = c.column.name
            if name not in kinds:
                near = difflib.get_close_matches(name, list(kinds), n=3, cutoff=0.5)
                hint = (
                    f"; did you mean {', '.join(map(repr, near))}?" if near else f"; columns: {list(kinds)}"
                )
                raise _error(self.text, c.column.pos, f"no column {name!r}{hint}")
            values = c.value if isinstance(c.value, tuple) else (c.value,)
            for lit in values:
                problem = _mismatch(kinds[name], lit.value)
                if problem:
                    raise _error(self.text, lit.pos, f"column {name!r} is {kinds[name]}: {problem}")

    def mask(self, frame) -> np.ndarray:
        """The boolean mask of the rows of ``frame`` (its columns and index levels) that match."""
        return np.asarray(_evaluate(self.tree, frame), dtype=bool)

    def may_match(self, bounds: dict) -> np.ndarray | None:
        """Per chunk, whether any row can match, from ``{column: (min Series, max Series)}``; None: unknown."""
        out = _bounds(self.tree, bounds)
        return None if out is None else np.asarray(out, dtype=bool)


def parse(text: str) -> Condition:
    """Parse a ``where=`` condition (raises :class:`WhereError`, a ``ValueError``, pointing at the bad term)."""
    if not isinstance(text, str):
        raise WhereError(f'where= takes a condition string like "x > 0.5", got {type(text).__name__}')
    return Condition(text, _Parser(text).parse())


def _cmps(node):
    if isinstance(node, Cmp):
        yield node
    else:
        for a in node.args:
            yield from _cmps(a)


def _mismatch(dtype, value) -> str | None:
    import pandas as pd

    kind = getattr(dtype, "kind", "O")
    if isinstance(dtype, pd.CategoricalDtype):
        kind = dtype.categories.dtype.kind
    if isinstance(dtype, pd.DatetimeTZDtype):
        kind = "M"
    if value is None:
        return None
    if kind in "iufb" and not isinstance(value, (int, float, bool)):
        return f"{value!r} is not a number"
    if kind == "M":
        try:
            pd.Timestamp(value) if not isinstance(value, (int, float)) else None
        except (ValueError, TypeError):
            return f"{value!r} is not a date or time"
        if isinstance(value, (pd.Timedelta, bool)):
            return f"{value!r} is not a date or time"
    if kind == "m" and not isinstance(value, (pd.Timedelta, str, int)):
        return f"{value!r} is not a duration"
    if kind in "OTSU" and isinstance(value, (pd.Timestamp, pd.Timedelta, bool)):
        return f"{value!r} is not text"
    return None


def _literal(series, value):
    """``value`` in the type of ``series`` (dates for datetime columns, UTC for time-zone aware ones)."""
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if value is None:
        return None
    if isinstance(dtype, pd.DatetimeTZDtype):
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts
    if getattr(dtype, "kind", "") == "M":
        ts = pd.Timestamp(value)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    if getattr(dtype, "kind", "") == "m":
        return pd.Timedelta(value)
    if isinstance(value, str) and dtype == np.dtype(object) and _holds_bytes(series):
        return value.encode()
    return value


def _holds_bytes(series) -> bool:
    """Whether an object column holds bytes (PyTables string columns), so text literals compare as bytes."""
    first = series.dropna()[:1].tolist()
    return bool(first) and isinstance(first[0], bytes)


def _column(frame, name: str):
    import pandas as pd

    if name in frame.columns:
        return frame[name]
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        return pd.Series(index.get_level_values(name), index=index)
    return pd.Series(index, index=index)


def _compare(series, op: str, value):
    import operator

    import pandas as pd

    if op in ("in", "not in"):
        values = [_literal(series, lit.value) for lit in value]
        hit = series.isin([v for v in values if v is not None])
        if any(v is None for v in values):
            hit = hit | series.isna()
        return ~hit if op == "not in" else hit
    value = _literal(series, value.value)
    if value is None:
        return (
            series.isna()
            if op == "=="
            else series.notna()
            if op == "!="
            else pd.Series(False, index=series.index)
        )
    if isinstance(series.dtype, pd.CategoricalDtype):
        if op not in ("==", "!=") and not series.cat.ordered:
            series = series.astype(series.cat.categories.dtype)
    fn = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
          ">": operator.gt, ">=": operator.ge}[op]  # fmt: skip
    out = fn(series, value)
    return out.fillna(op == "!=") if out.dtype == object else out


def _evaluate(node, frame):
    if isinstance(node, Cmp):
        return np.asarray(_compare(_column(frame, node.column.name), node.op, node.value), dtype=bool)
    parts = [_evaluate(a, frame) for a in node.args]
    if node.op == "not":
        return ~parts[0]
    return np.logical_and.reduce(parts) if node.op == "and" else np.logical_or.reduce(parts)


def _bounds(node, bounds: dict):
    """Chunks that may hold a match (True where unsure); None when nothing is known."""
    if isinstance(node, BoolOp):
        if node.op == "not":
            return None
        parts = [_bounds(a, bounds) for a in node.args]
        if node.op == "and":
            known = [p for p in parts if p is not None]
            return np.logical_and.reduce(known) if known else None
        return None if any(p is None for p in parts) else np.logical_or.reduce(parts)
    if node.column.name not in bounds:
        return None
    lo, hi = bounds[node.column.name]
    try:
        if node.op in ("in", "not in"):
            if node.op == "not in":
                return None
            values = [_literal(lo, v.value) for v in node.value]
            if any(v is None for v in values):
                return None
            return np.logical_or.reduce([np.asarray((lo <= v) & (hi >= v)) for v in values])
        value = _literal(lo, node.value.value)
        if value is None:
            return None
        checks = {
            ">": lambda: hi > value, ">=": lambda: hi >= value, "<": lambda: lo < value,
            "<=": lambda: lo <= value, "==": lambda: (lo <= value) & (hi >= value),
            "!=": lambda: ~((lo == value) & (hi == value)),
        }  # fmt: skip
        return np.asarray(checks[node.op](), dtype=bool)
    except TypeError:
        return None
