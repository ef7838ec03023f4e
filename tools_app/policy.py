"""Whether one tool call may run: the grant's rules applied to one caller and one set of arguments.

Pure: ``decide`` reads only what it is given (the grant's terms, the tool, the arguments, the caller) and touches
no database, so the runtime can call it anywhere and the tests can try every rule without one. The grant's terms
come from ``tools_app.services.grant_terms``; ``check_constraints`` is what the grant services check when a grant
is saved.

The rules, in order (the first that fails denies the call):
1. the deployment holds a grant of the tool;
2. the caller is allowed by it: a member's role is in the grant's roles (the playground), or an API key is among
   the grant's keys (/v1);
3. the arguments match the tool's JSON Schema;
4. each argument meets the grant's constraints (``enum``, ``pattern`` matched in full, ``minimum``/``maximum``);
   an argument the call leaves out is not checked (the schema says which are required).
An allowed call needs a person's approval when the grant says ``always``, or ``by_risk`` and the tool may write or
destroy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

CONSTRAINT_KINDS = ("enum", "pattern", "minimum", "maximum")
PATTERN_MAX_LENGTH = 200
APPROVAL_NEVER, APPROVAL_ALWAYS, APPROVAL_BY_RISK = "never", "always", "by_risk"
RISKS_NEEDING_APPROVAL = frozenset({"write", "destructive"})


class ToolLike(Protocol):
    """What the policy reads of a tool (a ``tools_app.models.Tool`` is one)."""

    name: str
    risk: str
    parameters: Any


@dataclass(frozen=True)
class GrantTerms:
    """A grant's rules as plain data: the roles and key ids that may trigger the tool, the argument constraints and
    the approval mode (``never``, ``always``, ``by_risk``)."""

    roles: frozenset[str]
    api_key_ids: frozenset[int]
    argument_constraints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    approval: str = APPROVAL_BY_RISK


@dataclass(frozen=True)
class Decision:
    """The answer for one call: allowed or not (``rule`` says which rule denied it) and, when allowed, whether a
    person must approve it first (``approval_reason`` says why, or why not)."""

    allowed: bool
    rule: str = ""
    needs_approval: bool = False
    approval_reason: str = ""

    @property
    def denied(self) -> bool:
        return not self.allowed


def decide(
    grant: GrantTerms | None,
    tool: ToolLike,
    *,
    arguments: Mapping[str, Any],
    role: str | None,
    api_key_id: int | None,
) -> Decision:
    """Apply the rules above to one call. ``grant`` is None when the deployment holds no grant of ``tool``.

    Exactly one of ``role`` (a member in the playground) and ``api_key_id`` (a key at /v1) names the caller;
    passing both or neither is a programming error (``ValueError``).
    """
    if (role is None) == (api_key_id is None):
        raise ValueError("Name the caller by exactly one of role and api_key_id.")
    if grant is None:
        return Decision(False, f"the deployment is not granted the tool “{tool.name}”")
    if role is not None and role not in grant.roles:
        allowed = ", ".join(sorted(grant.roles)) or "no role"
        return Decision(False, f"the role “{role}” may not trigger this tool (the grant allows: {allowed})")
    if api_key_id is not None and api_key_id not in grant.api_key_ids:
        return Decision(False, "the key is not granted this tool")
    schema_error = _schema_error(tool.parameters, arguments)
    if schema_error:
        return Decision(False, f"arguments do not match the tool's schema: {schema_error}")
    for name, constraints in grant.argument_constraints.items():
        if name in arguments:
            broken = _broken_constraint(name, arguments[name], constraints)
            if broken:
                return Decision(False, broken)
    return _approval(grant.approval, tool.risk)


def check_constraints(constraints: Any, parameters: Mapping[str, Any]) -> list[str]:
    """What is wrong with a grant's ``argument_constraints`` for a tool with the schema ``parameters``: each
    message names the argument and the fix; an empty list means they can be saved."""
    if not isinstance(constraints, Mapping):
        return ['Write an object keyed by argument name, e.g. {"amount": {"maximum": 1000}}.']
    properties = parameters.get("properties", {}) if isinstance(parameters, Mapping) else {}
    problems: list[str] = []
    for name, rules in constraints.items():
        if name not in properties:
            known = ", ".join(sorted(properties)) or "none: the tool takes no arguments"
            problems.append(f"“{name}” is not an argument of this tool (its arguments: {known}).")
            continue
        if not isinstance(rules, Mapping) or not rules:
            problems.append(f"“{name}”: give an object with any of {', '.join(CONSTRAINT_KINDS)}.")
            continue
        problems.extend(_rule_problems(name, rules))
    return problems


# --- helpers --------------------------------------------------------------------------------------


def _rule_problems(name: str, rules: Mapping[str, Any]) -> list[str]:
    problems = [
        f"“{name}”: unknown constraint “{kind}”; use {', '.join(CONSTRAINT_KINDS)}." for kind in rules
        if kind not in CONSTRAINT_KINDS
    ]  # fmt: skip
    if "enum" in rules and (not isinstance(rules["enum"], list) or not rules["enum"]):
        problems.append(f'“{name}”: enum is a non-empty list of the allowed values, e.g. ["EUR", "USD"].')
    if "pattern" in rules:
        problems.extend(_pattern_problems(name, rules["pattern"]))
    for bound in ("minimum", "maximum"):
        if bound in rules and not _is_number(rules[bound]):
            problems.append(f"“{name}”: {bound} is a number, e.g. 1000.")
    low, high = rules.get("minimum"), rules.get("maximum")
    if _is_number(low) and _is_number(high) and low > high:
        problems.append(f"“{name}”: the minimum {low} is above the maximum {high}.")
    return problems


def _pattern_problems(name: str, pattern: Any) -> list[str]:
    if not isinstance(pattern, str) or not pattern:
        return [f'“{name}”: pattern is a regular expression as a string, e.g. "A-[0-9]+".']
    if len(pattern) > PATTERN_MAX_LENGTH:
        return [f"“{name}”: keep the pattern under {PATTERN_MAX_LENGTH} characters (it has {len(pattern)})."]
    try:
        re.compile(pattern)
    except re.error as error:
        return [f"“{name}”: the pattern is not a valid regular expression ({error})."]
    return []


def _schema_error(parameters: Any, arguments: Mapping[str, Any]) -> str:
    if not isinstance(parameters, Mapping):
        return "the tool has no usable schema"
    validator = validator_for(parameters, default=Draft202012Validator)(parameters)
    error = best_match(validator.iter_errors(dict(arguments)))
    if error is None:
        return ""
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{error.message} (at “{where}”)" if where else error.message


def _broken_constraint(name: str, value: Any, rules: Mapping[str, Any]) -> str:
    """Why ``value`` breaks one of the argument's constraints, or an empty string."""
    shown = _shown(value)
    if "enum" in rules and value not in rules["enum"]:
        allowed = ", ".join(_shown(item) for item in rules["enum"])
        return f"argument '{name}' = {shown} is not one of the grant's allowed values ({allowed})"
    if "pattern" in rules and (not isinstance(value, str) or re.fullmatch(rules["pattern"], value) is None):
        return f"argument '{name}' = {shown} does not match the grant's pattern {rules['pattern']}"
    for bound, outside, word in (("minimum", _below, "below"), ("maximum", _above, "above")):
        if bound in rules:
            if not _is_number(value):
                return f"argument '{name}' = {shown} is not a number (the grant sets a {bound})"
            if outside(value, rules[bound]):
                return f"argument '{name}' = {shown} is {word} the grant's {bound} {_shown(rules[bound])}"
    return ""


def _approval(mode: str, risk: str) -> Decision:
    if mode == APPROVAL_ALWAYS:
        return Decision(True, needs_approval=True, approval_reason="the grant requires approval for every call")
    if mode == APPROVAL_BY_RISK and risk in RISKS_NEEDING_APPROVAL:
        return Decision(True, needs_approval=True, approval_reason=f"a {risk} tool's calls need approval")
    if mode == APPROVAL_BY_RISK:
        return Decision(True, approval_reason=f"a {risk} tool's calls run without approval")
    if mode == APPROVAL_NEVER:
        return Decision(True, approval_reason="the grant never asks for approval")
    # Fail safe: a mode this code does not know (a newer release's, a hand-edited row) asks a person.
    return Decision(True, needs_approval=True, approval_reason=f"the grant's approval mode “{mode}” is unknown")


def _below(value: float, bound: float) -> bool:
    return value < bound


def _above(value: float, bound: float) -> bool:
    return value > bound


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return f"“{value}”" if isinstance(value, str) else repr(value)
