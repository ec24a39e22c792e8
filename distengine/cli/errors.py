"""One-line messages for jsonargparse's (multi-line) parsing errors.

jsonargparse explains a bad value with the whole union of types it tried; a user needs the
key, what it accepts and what was given. :func:`one_line` returns that, e.g.::

    unknown key '--trainer.max_epochz' (did you mean '--trainer.max_epochs'?); ...
    --trainer.max_epochs expects int or null, got 'abc'; fix it on the command line or in the config
"""
from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import re
import types
import typing
from typing import Any

_FIX = "fix it on the command line or in the config file"


def one_line(message: str, parser: Any, prog: str) -> str:
    """The error ``message`` of ``parser`` (the subcommand's parser when there is one) as one
    line that names the key, what it accepts, and what to do."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return f"invalid arguments; run '{prog} --help'"
    first = lines[0]
    m = re.match(r"unrecognized arguments: (.*)", first)
    if m:
        words = m.group(1).split()
        bad = next((w for w in words if w.startswith("-")), words[0] if words else "?").split("=", 1)[0]
        if not bad.startswith("-"):
            return f"unexpected argument {bad!r}; run '{prog} --help' for the usage"
        return _unknown(bad.lstrip("-"), parser, prog, dashes=True)
    m = re.match(r"Subcommand '[^']*' does not accept (?:option|nested key) '([^']+)'", first) \
        or re.match(r"(?:Key|Option|Nested key) '([^']+)' is not (?:expected|accepted)", first)
    if m:
        return _unknown(m.group(1), parser, prog, dashes=False)
    m = re.match(r'Parser key "([^"]+)":\s*(.*)', first)
    if m:
        return _bad_value(m.group(1), [m.group(2), *lines[1:]], parser)
    m = re.match(r"argument (\S+): expected one argument", first)
    if m:
        return f"{m.group(1)} needs a value, e.g. '{m.group(1)} VALUE'"
    m = re.match(r'expected "subcommand" to be one of \{(.*)\}', first)
    if m:
        return f"give a subcommand: {m.group(1).replace(',', ', ')} (e.g. '{prog} fit --config config.yaml')"
    m = re.match(r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)", first)
    if m:
        return f"unknown subcommand {m.group(1)!r}; choose from {m.group(2)}"
    if first.startswith("Problems parsing config"):
        return f"could not read the config: {' '.join(lines[1:3]) or first}"
    return " ".join(lines)


def known_keys(parser: Any) -> list[str]:
    """The dotted keys ``parser`` accepts (``trainer.max_epochs``, ``model.hidden_dim``, ...)."""
    keys = []
    for action in getattr(parser, "_actions", []):
        if action.dest and action.dest not in ("help", "config", "print_config") and action.option_strings:
            keys.append(action.dest)
    return keys


def _unknown(key: str, parser: Any, prog: str, dashes: bool) -> str:
    dash = "--" if dashes else ""
    close = difflib.get_close_matches(key, known_keys(parser), n=1, cutoff=0.6)
    hint = f" (did you mean '{dash}{close[0]}'?)" if close else ""
    return f"unknown key '{dash}{key}'{hint}; run '{prog} --help' to list the keys"


def _bad_value(key: str, details: list[str], parser: Any) -> str:
    given = _given(details)
    text = " ".join(details)
    if key == "config":
        return f"--config: {details[0]}; check the path and the file's YAML"
    action = getattr(parser, "_option_string_actions", {}).get(f"--{key}")
    hint = getattr(action, "_typehint", None)
    m = re.search(r"Problem with given class_path '([^']+)':\s*(.*?)(?:\s+- Not a valid|\s+- Expected|"
                  r"\s+Given value|$)", text)
    if m:
        problem = _class_problem(m.group(1), m.group(2))
        if "has no attribute" in problem or "No module named" in problem:
            problem += _did_you_mean(m.group(1).rpartition(".")[2], subclass_names(hint))
        return f"--{key}: class_path '{m.group(1)}': {problem}"
    expected = type_text(hint) if hint is not None else _expected(action, details)
    if expected:
        named = re.findall(r"'class_path': '([^']+)'", given) or [given.strip("'\"")]
        hint_text = _did_you_mean(named[0].rpartition(".")[2], subclass_names(hint)) if given else ""
        return f"--{key} expects {expected}, got {given}{hint_text}; {_FIX}" if given \
            else f"--{key} expects {expected}; {_FIX}"
    return f"--{key}: {details[0] or text}; {_FIX}"


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def subclass_names(hint: Any) -> list[str]:
    """Names of the classes (and their imported subclasses) that ``hint`` accepts."""
    names: list[str] = []
    for arg in _flatten(hint):
        if isinstance(arg, type) and arg.__module__ != "builtins":
            todo = [arg]
            while todo:
                cls = todo.pop()
                names.append(cls.__name__)
                todo.extend(cls.__subclasses__())
    return list(dict.fromkeys(names))


def _flatten(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    if not args or typing.get_origin(hint) is typing.Literal:
        return [hint]
    return [leaf for arg in args for leaf in _flatten(arg)]


def _given(details: list[str]) -> str:
    for line in reversed(details):
        m = re.search(r"(?:Given value|Got value):\s*(.*)$", line)
        if m:
            return repr(m.group(1))
    return ""


def _class_problem(class_path: str, problem: str) -> str:
    problem = problem.strip().rstrip(".")
    m = re.match(r"(?:Option|Key) '([^']+)' is not accepted", problem)
    if m:  # name the init arguments the class does take
        try:
            module, _, name = class_path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        except (ImportError, AttributeError, ValueError, TypeError):
            params = []
        close = difflib.get_close_matches(m.group(1), params, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"it takes {', '.join(params)}" if params else ""
        return f"init_args has unknown key '{m.group(1)}'" + (f"; {hint}" if hint else "")
    return problem


def _expected(action: Any, details: list[str]) -> str:
    if action is not None and getattr(action, "choices", None):
        return "one of " + ", ".join(map(str, action.choices))
    found = re.findall(r"Expected a <class '([^']+)'>", " ".join(details))
    return " or ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in found))


def type_text(hint: Any, plural: bool = False) -> str:
    """``Optional[int]`` -> ``int or null``; ``Literal['a', 'b']`` -> ``one of 'a', 'b'``;
    ``Union[bool, Logger, List[Logger]]`` -> ``bool, a Logger class path or a list of Logger
    class paths``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(type_text(a, plural) for a in typing.get_args(hint)))
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, set, collections.abc.Sequence, collections.abc.Iterable):
        args = typing.get_args(hint)
        return f"a list of {type_text(args[0], plural=True)}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if hint is typing.Any:
        return "any value"
    if isinstance(hint, type):
        if hint.__module__ == "builtins":
            return hint.__name__ + ("s" if plural else "")
        if plural:
            return f"{hint.__name__} class paths"
        return f"{'an' if hint.__name__[0] in 'AEIOU' else 'a'} {hint.__name__} class path"
    return str(hint).replace("typing.", "")
