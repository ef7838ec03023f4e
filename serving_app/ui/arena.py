"""Placeholder: replaced by the arena view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr


def build_arena(team: gr.State) -> Callable[[Any], None]:
    gr.Markdown("Coming soon.")
    return lambda loaded: None
