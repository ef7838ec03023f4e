"""An Ollama ``Modelfile`` for an exported GGUF file: FROM the file, the chat template in Go's template syntax, stops.

Ollama's templates are Go templates, not Jinja: the model's own Jinja template is rendered with a marker as each
role's content, and what surrounds the marker becomes that role's text in the Go template (so the markers the model
was trained on are reproduced exactly). The leading BOS token is left out: Ollama adds it itself when the GGUF file
says so. Tool declarations are not translated (Ollama's tool syntax differs per model family).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exports_app.engine.merge import ExportError

MARKER = "\x00ATELIER-CONTENT\x00"
ROLES = ("system", "user", "assistant")


def go_template(render: Any, bos: str) -> str:
    """The Go template equivalent to ``render(messages, add_generation_prompt)`` (the Jinja template's output)."""
    parts = {}
    for role in ROLES:
        text = _strip_bos(render([{"role": role, "content": MARKER}], False), bos)
        if MARKER not in text:
            raise ExportError(f"The chat template does not render a {role} turn in a way Ollama's template can copy.")
        parts[role] = text.split(MARKER, 1)
    conversation = [{"role": "user", "content": MARKER}]
    generation = _strip_bos(render(conversation, True), bos)[len(_strip_bos(render(conversation, False), bos)) :]
    # One line, no whitespace trimming: every character outside the actions is the model's own text.
    branches = [
        f'{{{{ {"if" if index == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{_go(parts[role][0])}{{{{ .Content }}}}{_go(parts[role][1])}"
        for index, role in enumerate(ROLES)
    ]
    return f"{{{{ range .Messages }}}}{''.join(branches)}{{{{ end }}}}{{{{ end }}}}{_go(generation)}"


def modelfile(*, gguf_name: str, template: str, stops: list[str], parameters: dict[str, Any] | None = None) -> str:
    """The Modelfile text: ``FROM ./<gguf_name>``, the ``TEMPLATE`` and one ``PARAMETER stop`` per stop token."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    lines += [f"PARAMETER {name} {value}" for name, value in (parameters or {}).items()]
    return "\n".join(lines) + "\n"


def modelfile_for(folder: Path, gguf_name: str) -> str:
    """The Modelfile of the merged model in ``folder`` (its tokenizer's chat template and end-of-turn tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ExportError("The model has no chat template: Ollama would not know how to write a conversation.")

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))

    template = go_template(render, tokenizer.bos_token or "")
    return modelfile(gguf_name=gguf_name, template=template, stops=stop_tokens(folder, tokenizer))


def stop_tokens(folder: Path, tokenizer: Any) -> list[str]:
    """The tokens that end an answer: the generation config's end-of-sequence ids, else the tokenizer's EOS."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    ids = config.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids] if isinstance(ids, int) else []
    stops = [str(tokenizer.convert_ids_to_tokens(index)) for index in ids]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.insert(0, tokenizer.eos_token)
    return stops


def _strip_bos(text: str, bos: str) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text


def _go(text: str) -> str:
    """Literal text for a Go template: only ``{{`` needs escaping."""
    return text.replace("{{", '{{ "{{" }}')
