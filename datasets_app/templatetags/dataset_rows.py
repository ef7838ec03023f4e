"""Filters for showing normalized rows: tool arguments and schemas as indented JSON (escaped like any text),
and which tool each tool result answers."""

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


@register.filter
def answered_tools(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each turn with the name of the tool it answers ("" for turns that are not tool results).

    A tool turn names its tool itself (``name``), or answers a call by its id (OpenAI's ``tool_call_id``), or,
    as in ShareGPT's ``observation`` turns, answers the earliest call not answered yet.
    """
    names_by_id: dict[str, str] = {}
    waiting: list[str] = []  # ids (or names, for calls without one) of calls not answered yet, oldest first
    shown: list[tuple[dict[str, Any], str]] = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            name = call["function"]["name"]
            key = call.get("id") or f"#{len(names_by_id)}"
            names_by_id[key] = name
            waiting.append(key)
        answered = ""
        if message.get("role") == "tool":
            key = message.get("tool_call_id") or (waiting[0] if waiting else "")
            if key in waiting:
                waiting.remove(key)
            answered = message.get("name") or names_by_id.get(key, "")
        shown.append((message, answered))
    return shown
