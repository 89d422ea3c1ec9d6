"""YAML for operator files, read strictly: the bytes must be UTF-8, a key may appear once per
mapping, and the document must stay small and shallow.

PyYAML's SafeLoader lets a later duplicate key win silently, recurses without a bound (a deeply
nested file ends in RecursionError), and expands aliases into shared objects that a consumer then
walks again and again (a "billion laughs" file). Each of those is refused here as a one-line
``StrictYamlError`` naming where it happened, so the caller can turn it into a config error.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 32  # a cluster file nests 5 levels; 32 leaves room and stays far from recursion
MAX_NODES = 100_000  # scalars and collections after alias expansion


class StrictYamlError(ValueError):
    """``where`` is ``line N`` or a field path; the message is one line."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, and deep nesting while it
    composes (before Python's recursion limit is anywhere near)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise StrictYamlError(f"line {mark.line + 1}", f"nested deeper than {MAX_DEPTH}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it itself below
                break
            if duplicate:
                line = key_node.start_mark.line + 1
                raise StrictYamlError(f"line {line}", f"duplicate key {str(key)[:40]!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(data: bytes | str) -> Any:
    """The document in ``data``; raises ``StrictYamlError`` for anything it will not accept."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictYamlError("", f"not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except StrictYamlError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise StrictYamlError(where, f"not valid YAML: {problem}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # PyYAML's own constructors raise these for odd scalars (e.g. a huge timestamp)
        raise StrictYamlError("yaml", f"not valid YAML: {str(exc).splitlines()[0][:80]}") from None
    check_shape(raw)
    return raw


def check_shape(raw: Any) -> None:
    """Bound the expanded size and depth of a loaded document, and keep NUL out of strings
    (no argv, environment or key can carry one)."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    while stack:
        obj, where, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise StrictYamlError("", f"more than {MAX_NODES} values (aliases expanded)")
        if depth > MAX_DEPTH:
            raise StrictYamlError(where, f"nested deeper than {MAX_DEPTH}")
        if isinstance(obj, str):
            if "\x00" in obj:
                raise StrictYamlError(where, "contains a NUL character")
        elif isinstance(obj, dict):
            for key, value in obj.items():
                name = key if isinstance(key, str) else repr(key)
                if isinstance(key, str) and "\x00" in key:
                    raise StrictYamlError(where, "a key contains a NUL character")
                stack.append((value, f"{where}.{name}" if where else name, depth + 1))
        elif isinstance(obj, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj))
