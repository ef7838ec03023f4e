"""The tool-calling sample dataset (``datasets_app/samples/tools.jsonl``) and the held-out prompts that test it.

Three simple tools, declared per row as OpenAI function schemas: ``get_weather(city, unit?)``,
``convert_currency(amount, from_currency, to_currency)`` and ``add_calendar_event(title, date)``. A row is a
normalized chat row (``datasets_app/engine/rows.py``): the tools, an optional system turn, a user request, an
assistant turn that only calls a tool (``content`` empty, ``arguments`` a JSON object), the tool's result and
the assistant's answer; about one row in six needs no tool and is answered directly. Everything is generated
from the word lists below with a seeded random generator: the same seed gives the same rows.

``held_out_cases`` draws new requests with another seed (never written to the file, and never in the starter
model's corpus: ``corpus.HELD_OUT_SAMPLES``) with the call each one expects, so a tuned model can be scored
against the base model on requests it has not seen. Regenerate the file with
``python -m training_app.engine.tool_samples``.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_PATH = Path(__file__).resolve().parents[2] / "datasets_app" / "samples" / "tools.jsonl"
SAMPLE_SEED = 7
SAMPLE_ROWS = 300
HELD_OUT_SEED = 2024

CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Quito", "Tunis", "Perth", "Hanoi", "Zagreb",
    "Montreal", "Cairo", "Bergen", "Seville", "Denver", "Krakow", "Santiago", "Manila", "Helsinki",
)  # fmt: skip
CONDITIONS = ("sunny", "cloudy", "light rain", "heavy rain", "windy", "foggy", "snowing", "clear")
CURRENCIES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86, "JPY": 162.0, "CHF": 0.95, "CAD": 1.47, "AUD": 1.65}
EVENTS = (
    "Dentist appointment", "Team lunch", "Piano lesson", "Call the bank", "Car service", "Book club",
    "Project review", "Flight to Rome", "Yoga class", "Parents evening", "Water the garden", "Pay the rent",
)  # fmt: skip
SYSTEM_PROMPTS = (
    "You are a helpful assistant with access to tools. Call a tool when it helps.",
    "You are a concise assistant. Use the tools for weather, money and the calendar.",
)

WEATHER_REQUESTS = (
    "What's the weather like in {city}?",
    "Is it raining in {city} right now?",
    "How warm is it in {city} today?",
    "Can you check the weather in {city}?",
    "Tell me the current weather for {city}.",
)
WEATHER_UNIT_REQUESTS = (
    "What's the weather in {city} in {unit}?",
    "How hot is it in {city}? Give me the temperature in {unit}.",
    "Check the weather in {city} for me, in {unit} please.",
)
CURRENCY_REQUESTS = (
    "How much is {amount} {source} in {target}?",
    "Convert {amount} {source} to {target}.",
    "What do I get for {amount} {source} in {target}?",
    "Please change {amount} {source} into {target}.",
)
CALENDAR_REQUESTS = (
    "Add '{title}' to my calendar on {date}.",
    "Put {title} in my calendar for {date}.",
    "Create a calendar event called {title} on {date}.",
    "Schedule {title} on {date}, please.",
)
DIRECT_ANSWERS = (
    ("What can you help me with?", "I can check the weather in a city, convert money between currencies and "
     "add events to your calendar. Just ask."),
    ("Thanks, that's all for now.", "You're welcome. Have a good day!"),
    ("How do I say thank you in Spanish?", "You say gracias."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Can you tell me a short joke?", "Why did the calendar feel popular? Because it had a lot of dates."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("Hello!", "Hello! How can I help you today?"),
    ("How many days are in a leap year?", "A leap year has 366 days."),
)  # fmt: skip


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = (
    _function(
        "get_weather", "Get the current weather in a city.",
        {"city": {"type": "string"},
         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city"],
    ),
    _function(
        "convert_currency", "Convert an amount of money from one currency to another.",
        {"amount": {"type": "number"}, "from_currency": {"type": "string", "description": "ISO code"},
         "to_currency": {"type": "string", "description": "ISO code"}},
        ["amount", "from_currency", "to_currency"],
    ),
    _function(
        "add_calendar_event", "Add an event to the user's calendar.",
        {"title": {"type": "string"}, "date": {"type": "string", "description": "The day, as YYYY-MM-DD."}},
        ["title", "date"],
    ),
)  # fmt: skip
TOOL_NAMES = tuple(tool["function"]["name"] for tool in TOOLS)


@dataclass(frozen=True)
class Request:
    """One generated request: what the user says and the call it needs (None: answered directly)."""

    text: str
    name: str | None
    arguments: dict[str, Any]
    answer: str


@dataclass(frozen=True)
class HeldOutCase:
    """A request the sample rows do not contain: the tools offered, the prompt, and the call it expects."""

    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    name: str
    arguments: dict[str, Any]


def sample_rows(seed: int = SAMPLE_SEED, count: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """``count`` normalized chat rows: tools, request, call, result, answer (or a direct answer)."""
    rng = random.Random(seed)
    return [_row(rng, index) for index in range(count)]


def held_out_cases(seed: int = HELD_OUT_SEED, count: int = 24) -> list[HeldOutCase]:
    """Requests that need a tool, drawn with another seed; those that also appear, word for word, in the
    sample rows are skipped."""
    seen = {row["messages"][-4]["content"] for row in sample_rows() if len(row["messages"]) >= 4}
    rng = random.Random(seed)
    cases: list[HeldOutCase] = []
    while len(cases) < count:
        request = _tool_request(rng)
        if request.text in seen or request.name is None:
            continue
        seen.add(request.text)
        tools = _tools_for(rng, request.name)
        cases.append(HeldOutCase(tools, [{"role": "user", "content": request.text}], request.name, request.arguments))
    return cases


def parse_tool_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The first ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` in generated text, or None when
    there is none or it is not valid JSON of that shape."""
    start = text.find("<tool_call>")
    end = text.find("</tool_call>", start)
    if start < 0 or end < 0:
        return None
    try:
        call = json.loads(text[start + len("<tool_call>") : end])
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    if not isinstance(call.get("arguments"), dict):
        return None
    return call["name"], call["arguments"]


def arguments_fit(arguments: dict[str, Any], tool: dict[str, Any]) -> bool:
    """Whether call arguments fit a tool's declared parameters: every required one there, none it does not
    declare, strings where it says string (within its ``enum``), numbers where it says number."""
    parameters = tool["function"]["parameters"]
    properties: dict[str, Any] = parameters.get("properties", {})
    if not set(parameters.get("required", [])) <= set(arguments) <= set(properties):
        return False
    for name, value in arguments.items():
        declared = properties[name]
        if declared.get("type") == "string" and not (isinstance(value, str) and value.strip()):
            return False
        if declared.get("type") == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
            return False
        if "enum" in declared and value not in declared["enum"]:
            return False
    return True


def arguments_match(found: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether two argument objects say the same (strings compared without case, numbers by value)."""
    if set(found) != set(expected):
        return False
    for key, value in expected.items():
        other = found[key]
        if isinstance(value, str):
            if not isinstance(other, str) or other.strip().casefold() != value.casefold():
                return False
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not isinstance(other, int | float) or isinstance(other, bool) or abs(float(other) - value) > 1e-9:
                return False
        elif other != value:
            return False
    return True


def _row(rng: random.Random, index: int) -> dict[str, Any]:
    request = _direct_request(rng) if rng.random() < 0.17 else _tool_request(rng)
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    messages.append({"role": "user", "content": request.text})
    if request.name is not None:
        call_id = f"call_{index:03d}"
        call = {"type": "function", "id": call_id, "function": {"name": request.name, "arguments": request.arguments}}
        result = _result(rng, request.name, request.arguments)
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "name": request.name, "content": tool_result_text(result)},
            {"role": "assistant", "content": _answer(request.name, request.arguments, result)},
        ]
    else:
        messages.append({"role": "assistant", "content": request.answer})
    return {"messages": messages, "tools": _tools_for(rng, request.name)}


def _tools_for(rng: random.Random, needed: str | None) -> list[dict[str, Any]]:
    """All three tools in a random order, or now and then only the needed one and one other."""
    tools = list(TOOLS)
    if rng.random() < 0.25:
        others = [tool for tool in TOOLS if tool["function"]["name"] != needed]
        keep = [tool for tool in TOOLS if tool["function"]["name"] == needed]
        tools = keep + rng.sample(others, 2 - len(keep))
    rng.shuffle(tools)
    return tools


def _tool_request(rng: random.Random) -> Request:
    kind = rng.choice(TOOL_NAMES)
    if kind == "get_weather":
        city = rng.choice(CITIES)
        if rng.random() < 0.35:
            unit = rng.choice(("celsius", "fahrenheit"))
            text = rng.choice(WEATHER_UNIT_REQUESTS).format(city=city, unit=unit)
            return Request(text, kind, {"city": city, "unit": unit}, "")
        return Request(rng.choice(WEATHER_REQUESTS).format(city=city), kind, {"city": city}, "")
    if kind == "convert_currency":
        source, target = rng.sample(sorted(CURRENCIES), 2)
        amount: int | float = rng.choice((5, 10, 20, 25, 40, 50, 75, 100, 120, 150, 200, 250, 500, 1000))
        if rng.random() < 0.2:
            amount += 0.5
        text = rng.choice(CURRENCY_REQUESTS).format(amount=amount, source=source, target=target)
        return Request(text, kind, {"amount": amount, "from_currency": source, "to_currency": target}, "")
    title = rng.choice(EVENTS)
    date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    text = rng.choice(CALENDAR_REQUESTS).format(title=title, date=date)
    return Request(text, kind, {"title": title, "date": date}, "")


def _direct_request(rng: random.Random) -> Request:
    question, answer = rng.choice(DIRECT_ANSWERS)
    return Request(question, None, {}, answer)


def _result(rng: random.Random, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if name == "get_weather":
        unit = arguments.get("unit", "celsius")
        celsius = rng.randint(-5, 32)
        temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
        return {"city": arguments["city"], "temperature": temperature, "unit": unit,
                "conditions": rng.choice(CONDITIONS)}  # fmt: skip
    if name == "convert_currency":
        rate = CURRENCIES[arguments["to_currency"]] / CURRENCIES[arguments["from_currency"]]
        return {"amount": round(arguments["amount"] * rate, 2), "currency": arguments["to_currency"]}
    return {"created": True, "title": arguments["title"], "date": arguments["date"]}


def tool_result_text(result: dict[str, Any]) -> str:
    """A tool's JSON result as the studio's tools hand it to the model: compact JSON, no spaces
    (``tools_app.sandbox.execute``). A model tuned on this sample then reads at serving time the text it was
    trained on; with ``json.dumps``'s spaces instead, the tool-tuned test model called the tool again after 3
    of 6 results it was shown compact, and after none shown as it was trained."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


def _answer(name: str, arguments: dict[str, Any], result: dict[str, Any]) -> str:
    if name == "get_weather":
        degrees = "°C" if result["unit"] == "celsius" else "°F"
        return f"It is {result['temperature']}{degrees} and {result['conditions']} in {result['city']} right now."
    if name == "convert_currency":
        return f"{arguments['amount']} {arguments['from_currency']} is about {result['amount']} {result['currency']}."
    return f"Done: '{arguments['title']}' is in your calendar on {arguments['date']}."


def write_sample(path: Path = SAMPLE_PATH) -> int:
    """Write the sample rows as JSON Lines (one compact object per line); returns the row count."""
    rows = sample_rows()
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_PATH
    print(f"wrote {write_sample(target)} rows to {target}")
