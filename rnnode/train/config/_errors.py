"""The errors of a config: `ConfigError` (one line per problem, naming the
dotted key) and the formatting of pydantic's validation errors as such lines."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """An invalid config: `errors` holds one line per problem (`path: message`)."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _PathError(ValueError):
    """A validation error for a key below the model being validated."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"@{path}@ {message}")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def show_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "null"
    return repr(v)


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def format_errors(
    exc: ValidationError, prefix: str = "", *, root: type[BaseModel]
) -> list[str]:
    """One line per pydantic error of a model `root` (whose keys an unknown
    key's suggestion names): `dotted.path: message`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        typ = err["type"]
        ctx = err.get("ctx") or {}
        inp = err.get("input")
        msg = err["msg"]
        if typ == "value_error":
            msg = str(ctx.get("error", msg))
            msg = re.sub(r"^Value error, ", "", msg)
            m = re.match(r"^@([^@]+)@ (.*)$", msg, re.S)
            if m:
                loc = loc + m.group(1).split(".")
                msg = m.group(2)
        elif typ == "extra_forbidden":
            msg = "unknown key" + _suggest(root, loc)
        elif typ == "missing":
            msg = "required key is missing"
        elif typ == "greater_than":
            msg = f"must be > {_num(ctx['gt'])}, got {show_value(inp)}"
        elif typ == "greater_than_equal":
            msg = f"must be >= {_num(ctx['ge'])}, got {show_value(inp)}"
        elif typ == "less_than":
            msg = f"must be < {_num(ctx['lt'])}, got {show_value(inp)}"
        elif typ == "less_than_equal":
            msg = f"must be <= {_num(ctx['le'])}, got {show_value(inp)}"
        elif typ == "finite_number":
            msg = f"must be a finite number, got {show_value(inp)}"
        elif typ == "literal_error":
            msg = f"must be one of {ctx['expected']}, got {show_value(inp)}"
        elif typ in _TYPE_WORDS:
            msg = f"must be {_TYPE_WORDS[typ]}, got {show_value(inp)}"
        else:
            msg = f"{msg}, got {show_value(inp)}"
        # a whole-model check (no location) reports under the prefix itself;
        # its message names the key (`task.options: num_steps: ...`)
        path = (prefix + ".".join(loc)).rstrip(".")
        lines.append(f"{path}: {msg}" if path else msg)
    # a union (e.g. `int | 'all'`) reports one error per member: keep the first
    seen, out = set(), []
    for line in lines:
        key = line.split(": ", 1)[0]
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


def _is_union_tag(p) -> bool:
    return isinstance(p, str) and (
        p in ("int", "float", "str", "bool", "none")
        or p.startswith(("literal[", "function-", "constrained-"))
        or p.endswith("Config")
    )


def _suggest(model: Any, loc: list[str]) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        ann = field.annotation
        model = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            return ""
    keys = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], keys, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{hint}; keys here: {', '.join(keys)}"


# ------------------------------------------------------------- YAML loading
