"""Read a rule file (YAML) and report every problem with its line number.

YAML is composed into nodes first so each value's line is known; pydantic's
error locations are then mapped back to the nearest line. Nothing is applied
unless the whole file is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alerts.rules import Loc, Receiver, Rule, RuleFile, cross_check


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    where: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.where}: {self.message}" if self.where else \
            f"line {self.line}: {self.message}"


class RuleFileError(ValueError):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


def _lines(node: yaml.Node, path: Loc, out: dict[Loc, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            out[(*path, name)] = key.start_mark.line + 1
            _lines(value, (*path, name), out)
            out[(*path, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def _line_of(lines: dict[Loc, int], loc: Loc) -> int:
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _where(data: Any, loc: Loc) -> str:
    """``rules[3] (bridge-crack)`` style prefix plus the field path."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
            if i == 1 and loc[0] == "rules" and isinstance(data, dict):
                rules = data.get("rules")
                if isinstance(rules, list) and part < len(rules) and isinstance(rules[part], dict):
                    rid = rules[part].get("id")
                    if rid:
                        parts.append(f" ({rid})")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def _errors(exc: ValidationError, prefix: Loc) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for err in exc.errors():
        # pydantic puts the union member's tag (e.g. 'threshold') in the location: drop it
        loc = tuple(p for p in err["loc"] if not (p in _CONDITION_TAGS and "condition" in err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        field, _, rest = msg.partition(": ")
        if not loc and field in _RULE_LEVEL:  # a whole-rule check names the field at fault
            loc, msg = _RULE_LEVEL[field], rest
        out.append(((*prefix, *loc), msg))
    return out


def parse(text: str, source: str = "<rules>") -> RuleFile:
    """A validated rule file, or :class:`RuleFileError` listing every problem."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RuleFileError(source, [Problem(mark.line + 1 if mark else 1, "", str(exc))]) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _lines(node, (), lines)
    data = {} if data is None else data
    problems: list[tuple[Loc, str]] = []
    receivers: list[Receiver] = []
    rules: list[tuple[int, Rule]] = []
    if not isinstance(data, dict):
        problems.append(((), "a rule file is a mapping with 'receivers' and 'rules'"))
        data = {}
    problems += [((key,), "unknown section (expected 'receivers' and 'rules')")
                 for key in data if key not in ("receivers", "rules")]
    for section in ("receivers", "rules"):
        if not isinstance(data.get(section, []), list):
            problems.append(((section,), "must be a list"))
    for i, item in enumerate(data.get("receivers") or [] if isinstance(data.get("receivers"), list) else []):
        try:
            receivers.append(Receiver.model_validate(item))
        except ValidationError as exc:
            problems += _errors(exc, ("receivers", i))
    for i, item in enumerate(data.get("rules") or [] if isinstance(data.get("rules"), list) else []):
        try:
            rules.append((i, Rule.model_validate(item)))
        except ValidationError as exc:
            problems += _errors(exc, ("rules", i))
    problems += cross_check(rules, receivers)
    if problems:
        found = [Problem(_line_of(lines, loc), _where(data, loc), msg) for loc, msg in problems]
        raise RuleFileError(source, sorted(found, key=lambda p: p.line))
    return RuleFile(receivers=receivers, rules=[r for _, r in rules])


def load(path: str | Path) -> RuleFile:
    p = Path(path)
    return parse(p.read_text(encoding="utf-8"), str(p))


_CONDITION_TAGS = {"threshold", "rate", "aggregate", "state_duration", "health", "silence"}
_RULE_LEVEL: dict[str, Loc] = {"grades": ("grades",), "clear": ("clear",), "metric": ("condition", "metric")}
