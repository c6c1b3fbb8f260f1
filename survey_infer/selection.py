"""A safe expression language for selecting catalog rows (``survey-infer run --where EXPR``).

The expression is parsed with Python's :mod:`ast` module and *interpreted* node by node over numpy arrays; it is
never compiled or passed to ``eval``. Only these nodes are accepted (anything else is refused with a one-line
error naming the construct and its column in the expression):

* column names (per-object catalog variables, e.g. ``z``, ``zwarn``, ``quality``) and ``True``/``False``;
* numbers (int, float) and quoted strings (for string columns);
* comparisons ``== != < <= > >=``, chained as in Python (``0.9 < z < 1.2``);
* element-wise logic: ``&  |  ~  ^`` and ``and  or  not`` (both spellings act row by row);
* arithmetic ``+ - * / // % **`` and unary ``-``/``+``;
* calls of a few numpy functions by name, optionally prefixed ``np.``: :data:`FUNCTIONS`.

Attributes (other than ``np.<function>``), subscripts, lambdas, comprehensions, keyword arguments, containers and
every other construct are refused, so ``().__class__.__base__.__subclasses__()`` cannot reach Python's
internals. The result must be boolean (or integer: non-zero selects, so ``zwarn & 512`` works) with one value per
row.

Precedence is Python's: ``&`` and ``|`` bind tighter than comparisons, so write ``(z > 1) & (zwarn == 0)`` or
``z > 1 and zwarn == 0``.
"""
from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

import numpy as np
from .errors import SelectionError  # noqa: F401  (defined in survey_infer.errors)

__all__ = ["SelectionError", "FUNCTIONS", "parse", "column_names", "select", "select_rows"]

MAX_LENGTH = 2000  # characters
MAX_NODES = 500
MAX_EXPONENT = 64

FUNCTIONS: dict[str, Callable] = {
    "abs": np.abs, "isnan": np.isnan, "isfinite": np.isfinite, "log10": np.log10, "log": np.log, "exp": np.exp,
    "sqrt": np.sqrt, "floor": np.floor, "ceil": np.ceil, "minimum": np.minimum, "maximum": np.maximum,
}
_NARGS = {"minimum": 2, "maximum": 2}

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_BINARY = {ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.Add: operator.add,
           ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_SYMBOL = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
           ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}


def _where(node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    return f" (at character {col + 1})" if col is not None else ""


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    if isinstance(node, ast.Call):
        return "this function call"
    if isinstance(node, ast.Subscript):
        return "indexing with [...]"
    if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
        return f"a {type(node).__name__.lower()} literal"
    if isinstance(node, ast.Lambda):
        return "lambda"
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return "a comprehension"
    if isinstance(node, ast.Compare):
        return "'in'/'is' comparisons"
    if isinstance(node, ast.IfExp):
        return "conditional expressions (x if c else y)"
    return f"{type(node).__name__} expressions"


def _function_name(func: ast.AST) -> str | None:
    """``isnan`` for ``isnan`` and ``np.isnan`` / ``numpy.isnan``; None for anything else."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("np", "numpy"):
        return func.attr
    return None


def parse(expr: str) -> ast.Expression:
    """Parse ``expr`` and check every node against the whitelist.

    Returns
    -------
    The checked :class:`ast.Expression`.

    Raises
    ------
    SelectionError
        Not an expression, too long, or a construct outside the language (the message names it).
    """
    if not isinstance(expr, str) or not expr.strip():
        raise SelectionError("empty expression")
    if len(expr) > MAX_LENGTH:
        raise SelectionError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        at = f" at character {exc.offset}" if exc.offset else ""
        raise SelectionError(f"syntax error{at}: {exc.msg}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise SelectionError(f"expression too complex (more than {MAX_NODES} parts)")
    for node in nodes:
        _check(node)
    return tree


def _check(node: ast.AST) -> None:
    ok = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Invert, ast.USub, ast.UAdd,
          ast.Load, *_COMPARE, *_BINARY)
    if isinstance(node, ok):
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
        inner = node.comparators[:-1]
        if any(isinstance(c, ast.BinOp) and isinstance(c.op, (ast.BitAnd, ast.BitOr, ast.BitXor)) for c in inner):
            raise SelectionError(f"ambiguous{_where(node)}: & | ^ bind tighter than comparisons, so "
                                 f"'{ast.unparse(node)}' chains comparisons; write (a > 1) & (b == 0) or "
                                 f"a > 1 and b == 0")
        return
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise SelectionError(f"name {node.id!r} is not allowed{_where(node)}")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)) and not isinstance(node.value, complex):
            return
        raise SelectionError(f"constant {node.value!r} is not allowed{_where(node)}")
    if isinstance(node, ast.Call):
        name = _function_name(node.func)
        if name not in FUNCTIONS:
            shown = name or ast.unparse(node.func)
            raise SelectionError(f"function {shown!r} is not allowed{_where(node)}; allowed: "
                                 f"{', '.join(sorted(FUNCTIONS))}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise SelectionError(f"{name}(): keyword or * arguments are not allowed{_where(node)}")
        if len(node.args) != _NARGS.get(name, 1):
            raise SelectionError(f"{name}() takes {_NARGS.get(name, 1)} argument(s), got {len(node.args)}"
                                 f"{_where(node)}")
        return
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy") \
            and node.attr in FUNCTIONS:
        return  # np.<function>, checked as the callee of its Call (a bare one fails at evaluation)
    raise SelectionError(f"{_describe(node)} not allowed{_where(node)}; use column names, numbers, "
                         f"comparisons, & | ~, and/or/not, parentheses and {', '.join(sorted(FUNCTIONS))}()")


def column_names(tree: ast.Expression) -> list[str]:
    """The column names an expression reads (function names and ``True``/``False`` excluded), in order."""
    skip = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    skip |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # the np of np.isnan
    out: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and id(n) not in skip and n.id not in out:
            out.append(n.id)
    return out


def _logical(values: list, fn) -> np.ndarray:
    out = np.asarray(values[0]).astype(bool)
    for v in values[1:]:
        out = fn(out, np.asarray(v).astype(bool))
    return out


def _eval(node: ast.AST, cols: Mapping[str, np.ndarray]):
    if isinstance(node, ast.Expression):
        return _eval(node.body, cols)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return cols[node.id]
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, cols) for v in node.values]
        return _logical(vals, np.logical_and if isinstance(node.op, ast.And) else np.logical_or)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, cols)
        if isinstance(node.op, ast.Not):
            return np.logical_not(np.asarray(v).astype(bool))
        if isinstance(node.op, ast.Invert):
            a = np.asarray(v)
            if a.dtype.kind not in "biu":
                raise SelectionError(f"~ needs a boolean or integer operand, got {a.dtype}{_where(node)}")
            return ~a
        return -np.asarray(v) if isinstance(node.op, ast.USub) else +np.asarray(v)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, cols), _eval(node.right, cols)
        if isinstance(a, str) or isinstance(b, str):
            raise SelectionError(f"arithmetic on a quoted string is not allowed{_where(node)}")
        if isinstance(node.op, ast.Pow) and np.any(np.abs(np.asarray(b, dtype=float)) > MAX_EXPONENT):
            raise SelectionError(f"exponent larger than {MAX_EXPONENT}{_where(node)}")
        if isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
            for v in (a, b):
                if np.asarray(v).dtype.kind not in "biu":
                    raise SelectionError(f"{_SYMBOL[type(node.op)]} needs boolean or integer operands, got "
                                         f"{np.asarray(v).dtype}{_where(node)}: put comparisons in parentheses, "
                                         f"e.g. (z > 1) & (zwarn == 0), or use and/or")
        with np.errstate(all="ignore"):
            return _BINARY[type(node.op)](np.asarray(a) if not np.isscalar(a) else a, b)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, cols)
        out = None
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, cols)
            with np.errstate(all="ignore"):
                r = np.asarray(_COMPARE[type(op)](np.asarray(left), right)).astype(bool)
            out = r if out is None else out & r
            left = right
        return out
    if isinstance(node, ast.Call):
        fn = FUNCTIONS[_function_name(node.func)]
        with np.errstate(all="ignore"):
            return fn(*[np.asarray(_eval(a, cols)) for a in node.args])
    raise SelectionError(f"{_describe(node)} not allowed{_where(node)}")  # pragma: no cover - parse() refuses


def select(expr: str, columns: Mapping[str, object], n_rows: int) -> np.ndarray:
    """Evaluate ``expr`` on ``columns`` and return the boolean row mask.

    Parameters
    ----------
    expr : the expression (see the module docstring).
    columns : name -> 1-D array-like of length ``n_rows`` (e.g. lazy xarray variables: only the columns the
        expression names are read, each once).
    n_rows : number of rows.

    Returns
    -------
    (n_rows,) bool.

    Raises
    ------
    SelectionError
        Invalid expression, unknown column, a result that is not one boolean/integer value per row, or a
        numpy error during evaluation (the message is one line).
    """
    tree = parse(expr)
    names = column_names(tree)
    unknown = [c for c in names if c not in columns]
    if unknown:
        known = ", ".join(sorted(columns))
        raise SelectionError(f"unknown column {unknown[0]!r}; the per-object columns are: {known}")
    cols = {}
    for c in names:
        a = np.asarray(columns[c])
        if a.shape != (n_rows,):
            raise SelectionError(f"column {c!r} has shape {a.shape}, not one value per row ({n_rows} rows)")
        cols[c] = a
    try:
        res = np.asarray(_eval(tree, cols))
    except SelectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy type errors etc., reported on one line
        raise SelectionError(f"cannot evaluate: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                             ) from None
    if res.dtype.kind not in "biu":
        raise SelectionError(f"the expression gives {res.dtype} values, not a selection; compare them, "
                             f"e.g. 'z > 1.5'")
    if res.ndim == 0:
        res = np.broadcast_to(res, (n_rows,))
    if res.shape != (n_rows,):
        raise SelectionError(f"the expression gives shape {res.shape}, not one value per row ({n_rows} rows)")
    return res.astype(bool)


def select_rows(expr: str, columns: Mapping[str, object], n_rows: int) -> np.ndarray:
    """Row indices (int64, ascending) selected by ``expr``; see :func:`select`."""
    return np.flatnonzero(select(expr, columns, n_rows)).astype(np.int64)
