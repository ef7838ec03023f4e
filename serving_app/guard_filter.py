"""Guardrails on text: what a deployment's guard policy does to a prompt, and to an answer as it streams.

No Django here: ``serving_app.guardrails`` turns a stored policy into ``Rules`` and records the ``Event``\\ s.

- **Prompts** (``check_prompt``): personal data in the user's messages is replaced by typed placeholders
  (``[EMAIL]``, the datasets app's detectors) before the model sees it; a blocked topic, or the guard model's
  "unsafe", refuses the request before any generation.
- **Answers** (``AnswerGuard``): text is released to the client only after it has been checked. The guard holds
  back the last ``window`` characters (a phone number or a blocked term may still be growing there), redacts
  personal data in what it releases, stops at a blocked topic or the length cap, and, with a guard model on
  answers, releases only text the model has called safe (asked again every ``classify_every`` characters and at
  the end). A blocked answer ends with the policy's refusal: no unchecked character reaches the client.
- **Failures** (a guard model that errs or answers neither safe nor unsafe, a pattern that runs too long):
  ``fail_closed`` refuses, as if the check had found something; otherwise the text passes and the failure is
  still reported.

Topic patterns are the team's regular expressions: they run under the ``regex`` module's timeout, so a
catastrophic pattern fails its check instead of stalling the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import regex

from datasets_app.engine.pii import PLACEHOLDERS, Finding, find_pii

Stage = Literal["input", "output"]

WINDOW: Final = 128
"""Characters held back from the end of a streamed answer: longer than any personal-data value the detectors
find and any blocked term a team is likely to write (``guard_filter`` refuses longer terms)."""
MAX_TERM_CHARS: Final = 100
PATTERN_TIMEOUT_S: Final = 0.05
CLASSIFY_EVERY: Final = 400


class GuardError(Exception):
    """A check could not run (a guard model that failed, a pattern that ran too long)."""


@dataclass(frozen=True)
class Verdict:
    """The guard model's decision on one text: safe or not, and the category it named (``S2``, ``weapons``)."""

    safe: bool
    category: str = ""


Classifier = Callable[[Stage, str], Awaitable[Verdict]]
"""Asks the guard model about a prompt (``input``) or an answer so far (``output``); raises ``GuardError``."""


@dataclass(frozen=True)
class Topic:
    """A blocked topic: its name (the category reported) and the terms and patterns that reveal it."""

    name: str
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def compiled(self) -> regex.Pattern[str] | None:
        """One case-insensitive pattern for all of it: terms as whole words, patterns as written."""
        parts = [rf"(?<!\w){regex.escape(term.strip())}(?!\w)" for term in self.terms if term.strip()]
        parts += [f"(?:{pattern})" for pattern in self.patterns if pattern.strip()]
        return regex.compile("|".join(parts), regex.IGNORECASE | regex.V0) if parts else None


def check_topics(topics: Iterable[Topic]) -> list[str]:
    """What is wrong with ``topics`` as a team wrote them, one message each (empty: nothing)."""
    problems = []
    for number, topic in enumerate(topics, start=1):
        label = f"Topic {number} ({topic.name or 'unnamed'})"
        if not topic.name.strip():
            problems.append(f"Topic {number}: give it a name (it is the category reported when it blocks).")
        if not any(term.strip() for term in topic.terms) and not any(p.strip() for p in topic.patterns):
            problems.append(f"{label}: add at least one term or pattern.")
        for term in topic.terms:
            if len(term) > MAX_TERM_CHARS:
                problems.append(f"{label}: the term “{term[:30]}…” is longer than {MAX_TERM_CHARS} characters.")
        for pattern in topic.patterns:
            try:
                regex.compile(pattern)
            except regex.error as error:
                problems.append(f"{label}: the pattern “{pattern}” is not a valid regular expression ({error}).")
    return problems


@dataclass(frozen=True)
class Rules:
    """A guard policy as the filter applies it."""

    redact_input_pii: bool = True
    redact_output_pii: bool = True
    topics: tuple[Topic, ...] = ()
    max_answer_chars: int | None = None
    refusal: str = "I can't help with that."
    fail_closed: bool = True
    classify_input: bool = False
    classify_output: bool = False
    window: int = WINDOW
    classify_every: int = CLASSIFY_EVERY


@dataclass(frozen=True)
class Event:
    """One thing the policy did: what is audited (never the text itself)."""

    action: Literal["blocked", "redacted", "check_failed", "truncated"]
    stage: Stage
    category: str  # the PII kind, the topic's name, the guard model's category, "length"
    rule: str  # "pii", "topic", "guard_model", "max_answer_chars"
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "stage": self.stage, "category": self.category, "rule": self.rule,
                "count": self.count}  # fmt: skip


# --- topics and personal data on one text ---------------------------------------------------------------------


@dataclass
class _Scanner:
    rules: Rules
    _patterns: list[tuple[str, regex.Pattern[str]]] = field(init=False)

    def __post_init__(self) -> None:
        self._patterns = [(topic.name, p) for topic in self.rules.topics if (p := topic.compiled()) is not None]

    def topic_in(self, text: str) -> tuple[str, int] | None:
        """The first blocked topic found in ``text`` and where its match ends; ``GuardError`` on a pattern's
        timeout."""
        found: tuple[str, int, int] | None = None
        for name, pattern in self._patterns:
            try:
                match = pattern.search(text, timeout=PATTERN_TIMEOUT_S)
            except TimeoutError as error:
                raise GuardError(f"the pattern of topic “{name}” ran too long") from error
            if match is not None and (found is None or match.start() < found[1]):
                found = (name, match.start(), match.end())
        return (found[0], found[2]) if found else None


def _redact(text: str, findings: list[Finding]) -> str:
    pieces, position = [], 0
    for finding in findings:
        pieces += [text[position : finding.start], PLACEHOLDERS[finding.kind]]
        position = finding.end
    return "".join([*pieces, text[position:]])


def _counted(findings: Iterable[Finding], stage: Stage) -> list[Event]:
    kinds: dict[str, int] = {}
    for finding in findings:
        kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
    return [Event("redacted", stage, kind, "pii", count) for kind, count in sorted(kinds.items())]


# --- prompts -------------------------------------------------------------------------------------------------


@dataclass
class PromptCheck:
    """A prompt after the policy: the messages to send (redacted), what was done, and the block if any."""

    messages: list[dict[str, Any]]
    events: list[Event] = field(default_factory=list)
    blocked: Event | None = None


def _texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return []


def _map_texts(message: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": change(content)}
    if isinstance(content, list):
        parts = [
            {**part, "text": change(part["text"])} if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]  # fmt: skip
        return {**message, "content": parts}
    return message


async def check_prompt(rules: Rules, messages: list[dict[str, Any]], classify: Classifier | None = None) -> PromptCheck:
    """Apply the policy to the user's messages (system and assistant turns are the deployment's and the
    model's own): block a topic, redact personal data, then ask the guard model about what remains."""
    check = PromptCheck(messages=list(messages))
    user = [text for message in messages if message.get("role") == "user" for text in _texts(message)]
    scanner = _Scanner(rules)
    try:
        for text in user:
            if (topic := scanner.topic_in(text)) is not None:
                check.blocked = Event("blocked", "input", topic[0], "topic")
                check.events.append(check.blocked)
                return check
    except GuardError:
        if _failed(check.events, rules, "input", "topic"):
            check.blocked = check.events[-1]
            return check
    if rules.redact_input_pii:
        found: list[Finding] = []

        def redact(text: str) -> str:
            findings = find_pii(text)
            found.extend(findings)
            return _redact(text, findings)

        check.messages = [_map_texts(m, redact) if m.get("role") == "user" else m for m in messages]
        check.events += _counted(found, "input")
    if rules.classify_input and classify is not None:
        asked = "\n\n".join(text for m in check.messages if m.get("role") == "user" for text in _texts(m))
        try:
            verdict = await classify("input", asked)
        except GuardError:
            if _failed(check.events, rules, "input", "guard_model"):
                check.blocked = check.events[-1]
            return check
        if not verdict.safe:
            check.blocked = Event("blocked", "input", verdict.category or "unsafe", "guard_model")
            check.events.append(check.blocked)
    return check


def _failed(events: list[Event], rules: Rules, stage: Stage, rule: str) -> bool:
    """Report a check that could not run; whether the policy then refuses (fail closed)."""
    events.append(Event("check_failed", stage, "error", rule))
    if rules.fail_closed:
        events.append(Event("blocked", stage, "check_failed", rule))
        return True
    return False


# --- answers, as they stream -----------------------------------------------------------------------------------


@dataclass
class AnswerGuard:
    """Checks one answer as its text arrives; ``feed`` and ``finish`` return what may be released now.

    Once ``stopped`` is set (blocked, or cut at the length cap) nothing more is released: the caller stops the
    generation and ends the answer with ``finish_reason`` = ``stopped_reason``.
    """

    rules: Rules
    classify: Classifier | None = None
    events: list[Event] = field(default_factory=list)
    stopped: Event | None = None
    seen: str = ""
    released: int = 0  # characters of ``seen`` already released (redacted) to the client
    checked: int = 0  # characters of ``seen`` the guard model has called safe
    _scanner: _Scanner = field(init=False)
    _pii_counted: set[tuple[int, str]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._scanner = _Scanner(self.rules)

    @property
    def stopped_reason(self) -> str:
        return "length" if self.stopped is not None and self.stopped.action == "truncated" else "content_filter"

    async def feed(self, delta: str) -> str:
        """Take the next piece of the answer; the checked text that may go to the client now."""
        if self.stopped is not None or not delta:
            return ""
        self.seen += delta
        return await self._release(final=False)

    async def finish(self) -> str:
        """The answer is complete: check and release the rest (or the refusal)."""
        if self.stopped is not None:
            return ""
        return await self._release(final=True)

    async def check_whole(self, text: str) -> str:
        """A whole (non-streamed) answer as the client gets it."""
        released = await self.feed(text)
        return released + await self.finish()

    async def _release(self, *, final: bool) -> str:
        cap = self.rules.max_answer_chars
        truncated = cap is not None and len(self.seen) > cap
        if truncated:
            assert cap is not None
            # Not through a personal-data value: a cut one would no longer be recognised, and half would leak.
            for finding in find_pii(self.seen) if self.rules.redact_output_pii else []:
                if finding.start < cap < finding.end:
                    cap = finding.start
            self.seen, final = self.seen[:cap], True
        try:
            topic = self._scanner.topic_in(self.seen)
        except GuardError:
            if _failed(self.events, self.rules, "output", "topic"):
                return self._stop(self.events[-1])
            topic = None
        if topic is not None:
            return self._stop(Event("blocked", "output", topic[0], "topic"))
        findings = find_pii(self.seen) if self.rules.redact_output_pii else []
        cut = len(self.seen) if final else max(self.released, len(self.seen) - self.rules.window)
        for finding in findings:  # never cut through a value: it is redacted whole or not yet released
            if finding.start < cut < finding.end:
                cut = finding.start
        if self.rules.classify_output and self.classify is not None and cut > self.checked:
            if not final and cut - self.checked < self.rules.classify_every:
                cut = self.checked
            else:
                try:
                    verdict = await self.classify(
                        "output", _redact(self.seen[:cut], [f for f in findings if f.end <= cut])
                    )
                except GuardError:
                    if _failed(self.events, self.rules, "output", "guard_model"):
                        return self._stop(self.events[-1])
                    verdict = Verdict(safe=True)
                if not verdict.safe:
                    return self._stop(Event("blocked", "output", verdict.category or "unsafe", "guard_model"))
                self.checked = cut
        released = self._take(cut, findings)
        if truncated:
            self.stopped = Event("truncated", "output", "length", "max_answer_chars")
            self.events.append(self.stopped)
        return released

    def _take(self, cut: int, findings: list[Finding]) -> str:
        """``seen[released:cut]`` with its personal data replaced, counted once per value."""
        if cut <= self.released:
            return ""
        inside = [f for f in findings if self.released <= f.start and f.end <= cut]
        fresh = [f for f in inside if (f.start, f.kind) not in self._pii_counted]
        self._pii_counted.update((f.start, f.kind) for f in fresh)
        self.events += _counted(fresh, "output")
        piece = self.seen[self.released : cut]
        shifted = [Finding(f.kind, f.start - self.released, f.end - self.released, f.value) for f in inside]
        self.released = cut
        return _redact(piece, shifted)

    def _stop(self, event: Event) -> str:
        """Block the answer: what was released stands, the refusal follows, nothing else."""
        if not self.events or self.events[-1] is not event:
            self.events.append(event)
        self.stopped = event
        separator = "\n\n" if self.released else ""
        return separator + self.rules.refusal


def parse_verdict(answer: str) -> Verdict:
    """A guard model's answer in the Llama Guard convention: ``safe``, or ``unsafe`` and the category on the next
    line (or after a colon); anything else is a failed check."""
    words = answer.strip().replace(":", "\n").split("\n")
    first = words[0].strip().lower().rstrip(".!")
    if first == "safe":
        return Verdict(safe=True)
    if first == "unsafe":
        category = next((line.strip() for line in words[1:] if line.strip()), "")
        return Verdict(safe=False, category=category[:60])
    raise GuardError(f"the guard model answered neither “safe” nor “unsafe” ({answer.strip()[:40]!r})")
