"""Safe YAML for user files: UTF-8 only, duplicate keys refused, alias expansion bounded.

PyYAML's ``safe_load`` lets the last of two equal keys win silently, and shares aliased nodes,
so a 12-line "billion laughs" file expands to gigabytes as soon as anything walks it
(validation, hashing, an error message). This loader counts the nodes the document would
have once every alias is expanded, before constructing anything, and refuses past
:data:`MAX_NODES`.
"""

from __future__ import annotations

import yaml

from ..errors import BadInputError

MAX_NODES = 100_000  # a real grid file has a few hundred nodes


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, naming both lines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding a key is the point of merge keys
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except Exception:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        self.key, self.first, self.second = key, first, second


def expanded_size(node, memo: dict | None = None) -> int:
    """Nodes in the document once every alias is expanded (linear time: shared nodes memoised)."""
    memo = {} if memo is None else memo
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def load_yaml_text(raw: bytes, source: str):
    """Parse the bytes of a user's YAML file; every problem is a BadInputError naming ``source``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInputError(
            f"{source}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); save the file as UTF-8"
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size > MAX_NODES:
            raise BadInputError(
                f"{source}: the YAML expands to more than {MAX_NODES:,} values once its aliases (*name) are "
                f"resolved; a grid file needs far fewer (is it an alias bomb?)"
            )
        return loader.construct_document(node)
    except _DuplicateKey as dup:
        key = str(dup.key)[:60]
        raise BadInputError(
            f"{source}: duplicate key {key!r} at lines {dup.first} and {dup.second}; keep one "
            "(YAML would silently use the last)"
        ) from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInputError(f"{source}: malformed YAML{where}: {str(problem)[:200]}") from None
    finally:
        loader.dispose()
