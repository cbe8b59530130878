"""Bounded, strict YAML reading for experiment files and ``--set`` values.

``yaml.safe_load`` never runs code, but a small file can still expand to gigabytes: an alias bomb (an anchor
referred to nine times, each of those nine times, ...) builds a structure whose printed or copied form grows
exponentially. Every document read here is composed first (linear in the text) and checked before any Python
object is built:

- the text is at most :data:`MAX_BYTES` bytes;
- the document, with every alias expanded, has at most :data:`MAX_NODES` nodes (recursive aliases are refused);
- nesting is at most :data:`MAX_DEPTH` levels;
- no mapping repeats a key (YAML would silently keep the last one).

A violation raises :class:`~mixcli.errors.MixcliError` naming the source (and the line when it is known).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import MixcliError

MAX_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64


class YAMLSyntaxError(MixcliError):
    """The text is not YAML at all (``--set`` then takes the value as a plain string)."""


def read_text(path: Path, what: str = "experiment file") -> str:
    """The text of a regular file of at most MAX_BYTES bytes (never opens a pipe, device or directory)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MixcliError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise MixcliError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MixcliError(f"{path}: is a directory, expected a YAML {what}")
    if not stat.S_ISREG(st.st_mode):
        raise MixcliError(f"{path}: not a regular file (a pipe, socket or device); expected a YAML {what}")
    if st.st_size > MAX_BYTES:
        raise MixcliError(f"{path}: the file has {st.st_size} bytes; a YAML {what} may have at most "
                          f"{MAX_BYTES}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        return raw.decode("utf-8")
    except OSError as exc:
        raise MixcliError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise MixcliError(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML {what}") from None


def compose(text: str, source: str) -> yaml.Node | None:
    """The checked node graph of ``text``; ``source`` prefixes every message (a path, or ``--set KEY``)."""
    if len(text) > MAX_BYTES:
        raise MixcliError(f"{source}: the text has {len(text)} characters; at most {MAX_BYTES} are read")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise YAMLSyntaxError(f"{source}{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"{source}: YAML syntax error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise MixcliError(f"{source}: the YAML is nested too deeply (at most {MAX_DEPTH} levels)") from None
    if node is not None:
        _check(node, source)
    return node


def _check(root: yaml.Node, source: str) -> None:
    """Bound the expanded size and depth; refuse recursive aliases and repeated keys (one pass, memoized)."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def where(node: yaml.Node) -> str:
        return f"{source}:{node.start_mark.line + 1}"

    def visit(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise MixcliError(f"{where(node)}: the YAML is nested too deeply (at most {MAX_DEPTH} levels)")
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            raise MixcliError(f"{where(node)}: an alias refers to a node that contains it (recursive YAML)")
        active.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    ident = (k.tag, k.value)
                    if ident in seen:
                        raise MixcliError(f"{where(k)}: key '{k.value}' is repeated (first on line "
                                          f"{seen[ident]}); YAML would silently keep only the last value, "
                                          "remove one of them")
                    seen[ident] = k.start_mark.line + 1
                n += visit(k, depth + 1) + visit(v, depth + 1)
                if n > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                n += visit(v, depth + 1)
                if n > MAX_NODES:
                    break
        if n > MAX_NODES:
            raise MixcliError(f"{where(node)}: the YAML expands to more than {MAX_NODES} values (anchors and "
                              "aliases included); an experiment file is far smaller, is this an alias bomb?")
        active.discard(key)
        size[key] = n
        return n

    visit(root, 0)


def construct(node: yaml.Node | None, source: str) -> Any:
    """Python objects (safe constructors only) from a node checked by :func:`compose`."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise MixcliError(f"{source}{line}: YAML error: {exc.problem or exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. an int of 5000 digits
        raise MixcliError(f"{source}: cannot read a value: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def load(text: str, source: str) -> Any:
    """``yaml.safe_load`` under the bounds above."""
    return construct(compose(text, source), source)
