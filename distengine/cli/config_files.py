"""Config files checked before jsonargparse reads them: one line naming the file and the reason.

jsonargparse reads ``--config`` files itself; a file that is not UTF-8 then ends in a long
``UnicodeDecodeError`` traceback, and a YAML error (a ``!!python/object`` tag, bad syntax)
names neither the file nor, for a tag, the reason. :func:`check_config_files` reads each file
named by ``--config``/``-c`` first and returns one line for the first problem, e.g.::

    config.yaml: not UTF-8 text (byte 0xff at offset 12); save it as UTF-8
    config.yaml line 3: tag !!python/object:os.system is not allowed (configs are plain YAML data)

A value of ``--config`` that is not an existing file (jsonargparse also takes a YAML string)
is left to jsonargparse.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import yaml

_YAML_TAG = "tag:yaml.org,2002:"


def config_paths(args: Sequence[str]) -> Iterator[str]:
    """The values of ``--config``/``-c`` in ``args`` (``--config x``, ``--config=x``, ``-c x``)."""
    it = iter(args)
    for arg in it:
        if arg in ("--config", "-c"):
            value = next(it, None)
            if value is not None:
                yield value
        elif arg.startswith("--config="):
            yield arg.partition("=")[2]


def check_config_files(args: Sequence[str]) -> str | None:
    """One line describing the first unreadable config file among ``args``, else ``None``."""
    for path in config_paths(args):
        if os.path.isfile(path):
            problem = check_config_file(path)
            if problem:
                return problem
    return None


def check_config_file(path: str) -> str | None:
    """``None`` when ``path`` is UTF-8 text holding plain YAML data; else one line saying why not."""
    name = os.path.basename(path) if os.path.dirname(path) == "" else path
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        return f"{name}: cannot read it ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"{name}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                "save the file as UTF-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"{name}{where}: not valid YAML ({problem})"
    for bad in _nodes(node):
        if bad.tag not in yaml.SafeLoader.yaml_constructors:
            tag = "!!" + bad.tag[len(_YAML_TAG):] if bad.tag.startswith(_YAML_TAG) else bad.tag
            return (f"{name} line {bad.start_mark.line + 1}: tag {tag} is not allowed "
                    "(configs are plain YAML data)")
    return None


def _nodes(node: yaml.Node | None) -> Iterator[yaml.Node]:
    seen: set[int] = set()
    todo = [node] if node is not None else []
    while todo:
        n = todo.pop()
        if id(n) in seen:  # anchors and aliases share nodes
            continue
        seen.add(id(n))
        yield n
        if isinstance(n, yaml.SequenceNode):
            todo.extend(reversed(n.value))
        elif isinstance(n, yaml.MappingNode):
            for key, value in reversed(n.value):
                todo.extend((value, key))
