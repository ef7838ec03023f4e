"""Filters for showing normalized rows: tool arguments and schemas as indented JSON (escaped like any text)."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """``value`` as indented JSON text; the template escapes it, so user text in it stays text."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


@register.filter
def parameter_names(tool: dict[str, Any]) -> str:
    """The parameters a tool declaration takes, required ones first: "city, unit (optional)"."""
    schema = (tool.get("function") or {}).get("parameters") or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return "no parameters"
    required = set(schema.get("required") or [])
    names = sorted(properties, key=lambda name: (name not in required, name))
    return ", ".join(name if name in required else f"{name} (optional)" for name in names)
