"""Studio tools at run time: the loop that lets a deployment's model call its granted tools (/v1, the playground).

    model → tool call → policy (``tools_app.policy.decide``) → the tools worker (``tools_app.dispatch``) → the
    result back to the model → … until it answers without a studio tool call, or ``MAX_STEPS`` generations.

The request's own ``tools`` (client-side tools, the OpenAI standard) are offered next to the granted ones; a call
of one of them ends the run and goes back to the client, which executes it. Every attempt is audited against the
tool (``tool.call_requested``, ``tool.call_denied``, ``tool.call_executed``, ``tool.call_failed``; approvals as in
``tools_app.services``), its arguments with the tool's secret values redacted, and ``source``: ``model`` for a
call made in this request, ``conversation`` for one the client sent back (resuming).

The answer is a ``chat.completion`` with one studio field, ``atelier``::

    "atelier": {
      "status": "completed" | "approval_required" | "client_tools" | "step_limit",
      "tool_calls": [{"id", "tool", "arguments", "risk", "outcome": "executed" | "failed" | "denied" |
                      "awaiting_approval", "reason"?, "status"?, "latency_ms"?}],
      "messages": [...],      # what the studio added to the conversation before the answer's message
      "tool_results": [...],  # tool messages answering studio calls of the answer's message
      "approvals": [{"id", "tool", "arguments", "expires_at"}]      # approval_required only
    }

The playground runs the same loop for a member (the grants' roles apply instead of their keys) and, rather than
answer ``approval_required``, holds the run until a person decides: an approved call runs (its record says who
approved it), a rejected or expired one is answered to the model as refused (outcome ``rejected`` / ``expired``).

Through /v1, a call that needs approval pauses the run (``approval_required``): the answer's message holds the
call. Once a member with ``tools.approve`` has approved it (the Approvals inbox), the client resumes by sending the
conversation back — its messages, then ``atelier.messages``, the answer's message and ``atelier.tool_results`` —
with ``"atelier": {"approvals": ["<id>"]}`` (``extra_body`` in the ``openai`` client). The approval is bound to the
tool, the deployment, the exact arguments and a hash of the conversation before the call, and is used once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts import audit, plain_sql
from accounts.models import AuditEvent
from accounts.permissions import TeamAccess
from serving_app.models import Deployment
from serving_app.openai_api import EXTENSION, OpenAIError
from serving_app.studio_tools import ToolRun
from tools_app import dispatch, policy, secrets, services
from tools_app.models import Tool, ToolApproval, ToolGrant
from tools_app.sandbox.execute import REDACTED, redactor, secret_values

# Generations in one run: each tool result costs one more.
MAX_STEPS = 6
# How often a run held for approval (the playground) looks whether a person has decided.
APPROVAL_POLL_SECONDS = 1.0
# What an audit event keeps of an argument value.
AUDIT_VALUE_LIMIT = 2_000
SECRET_ARGUMENT = re.compile(r"pass(word)?|secret|token|api[_-]?key|authori[sz]ation", re.IGNORECASE)


@dataclass(frozen=True)
class Granted:
    """A tool granted to the deployment, with the grant's rules as the policy takes them."""

    tool: Tool
    grant: ToolGrant
    terms: policy.GrantTerms


@dataclass
class Context:
    """What a run reads once from the database: the caller and the deployment's granted tools by name."""

    access: TeamAccess
    deployment: Deployment
    tools: dict[str, Granted]
    ip: str | None


class Runner:
    """The tools app's side of /v1 and the playground (``serving_app.studio_tools.StudioTools``)."""

    def granted(self, deployment: Deployment) -> bool:
        # Every /v1 request asks: SQL written out (``accounts.plain_sql``).
        return plain_sql.exists(ToolGrant, '"deployment_id" = %s', [deployment.pk], team_id=deployment.team_id)

    async def run(self, run: ToolRun) -> dict[str, Any]:
        context = await sync_to_async(_context)(run)
        return await _Loop(run, context).run()


class _Loop:
    def __init__(self, run: ToolRun, context: Context) -> None:
        self.run_ = run
        self.context = context
        self.client_tools: list[dict[str, Any]] = list(run.client_tools)
        self.tool_choice = run.tool_choice
        self.messages = [_canonical(message) for message in run.messages]
        self.added: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.results: dict[str, str] = {}
        self.approvals: list[dict[str, Any]] = []
        self.open_message: dict[str, Any] = {}
        # Where the calls being run come from: the model in this request, or the conversation the client sent.
        self.source = "model"
        self._check_request(run.extension)

    def _check_request(self, extension: Any) -> None:
        clashes = sorted(
            {str((tool.get("function") or {}).get("name")) for tool in self.client_tools if isinstance(tool, dict)}
            & set(self.context.tools)
        )
        if clashes:
            raise OpenAIError(
                400, f"tools: {', '.join(clashes)} is the name of a studio tool granted to this deployment; rename "
                "your own tool.", param="tools", code="invalid_value",
            )  # fmt: skip
        if self.run_.choices > 1:
            raise OpenAIError(
                400, "n: a deployment with studio tools answers one choice per request (n = 1).", param="n",
                code="invalid_value",
            )  # fmt: skip
        approvals = extension.get("approvals", []) if isinstance(extension, dict) else None
        if extension is not None and (
            not isinstance(approvals, list) or not all(isinstance(item, str) for item in approvals)
            or set(extension) - {"approvals"}
        ):  # fmt: skip
            raise OpenAIError(
                400, f'{EXTENSION}: send {{"approvals": ["<approval id>", …]}} to resume approved tool calls.',
                param=EXTENSION, code="invalid_value",
            )  # fmt: skip
        self.approval_ids: list[str] = approvals or []

    async def run(self) -> dict[str, Any]:
        answer: dict[str, Any] | None = None
        status = await self._resume_open_calls()
        if status is not None:
            return self._answer_for_pending(status)
        resumed = len(self.added) > 0
        # A client's tool_choice applies to the first generation: asked again after the call, a forced call would
        # be made forever. A resumed run made that call already.
        choice = None if resumed else self.tool_choice
        for step in range(MAX_STEPS):
            tools = self.client_tools + [granted.tool.as_openai_tool() for granted in self.context.tools.values()]
            answer = await self.run_.step(self.messages, tools, choice if step == 0 else None)
            message = answer["choices"][0]["message"] if answer["choices"] else {}
            calls = message.get("tool_calls") or []
            studio_calls = [call for call in calls if call["function"]["name"] in self.context.tools]
            if not studio_calls:
                return self._finish(answer, "client_tools" if calls else "completed")
            assistant = _canonical(message)
            conversation = conversation_hash(self.messages)
            self.messages.append(assistant)
            self.source = "model"
            results, pending = await self._run_calls(studio_calls, conversation, approvals=[])
            if pending or len(studio_calls) < len(calls):
                return self._finish(answer, "approval_required" if pending else "client_tools", results)
            self.added.append(assistant)
            self.messages.extend(results)
            self.added.extend(results)
        assert answer is not None
        return self._finish(answer, "step_limit")

    async def _resume_open_calls(self) -> str | None:
        """Run the studio calls of the conversation's last assistant message that have no result yet (a run
        resumed after approval: that message, then the results of its calls that ran). Returns a status when
        the run must stop again, else None."""
        position = len(self.messages) - 1
        while position > 0 and self.messages[position]["role"] == "tool":
            position -= 1
        last = self.messages[position]
        answered = {message.get("tool_call_id") for message in self.messages[position + 1 :]}
        open_calls = [
            call for call in last.get("tool_calls") or []
            if call["function"]["name"] in self.context.tools and call["id"] not in answered
        ] if last["role"] == "assistant" else []  # fmt: skip
        if not open_calls:
            if self.approval_ids:
                raise OpenAIError(
                    400, f"{EXTENSION}.approvals: the conversation must end with the assistant message that made the "
                    "approved call (and the results of its other calls).", param=EXTENSION, code="invalid_value",
                )  # fmt: skip
            return None
        self.open_message = last
        conversation = conversation_hash(self.messages[:position])
        # Calls the client sent back: a model made them in an earlier request, as far as the studio can tell.
        self.source = "conversation"
        results, pending = await self._run_calls(open_calls, conversation, approvals=self.approval_ids)
        self.messages.extend(results)
        self.added.extend(results)
        return "approval_required" if pending else None

    async def _run_calls(
        self, calls: list[dict[str, Any]], conversation: str, *, approvals: list[str]
    ) -> tuple[list[dict[str, Any]], bool]:
        """Each studio call decided, then run or queued for approval; the tool messages of those that ended, and
        whether any waits for a person."""
        results: list[dict[str, Any]] = []
        pending = False
        for call in calls:
            decided = await sync_to_async(self._decide)(call, conversation, approvals)
            self._report()
            if isinstance(decided, ToolApproval):
                if not self.run_.wait_for_approval:
                    pending = True
                    continue
                decided = await self._wait_for_decision(decided, call, conversation)
            content = await self._execute(decided, call) if isinstance(decided, Tool) else decided
            self.results[call["id"]] = content
            self._report()
            results.append({"role": "tool", "tool_call_id": call["id"], "content": content})
        return results, pending

    def _report(self) -> None:
        if self.run_.report is not None:
            self.run_.report([dict(record) for record in self.calls], dict(self.results))

    def _decide(self, call: dict[str, Any], conversation: str, approvals: list[str]) -> str | Tool | ToolApproval:
        """On the database thread: the call's refusal as the model's tool message, the tool to run, or the
        approval it waits for."""
        granted = self.context.tools[call["function"]["name"]]
        tool, access = granted.tool, self.context.access
        arguments = _arguments(call["function"]["arguments"])
        shown = _redacted(arguments if arguments is not None else call["function"]["arguments"], tool)
        details = {
            "tool": tool.name, "deployment": self.context.deployment.name,
            "deployment_id": self.context.deployment.pk, "call_id": call["id"], "arguments": shown,
            "conversation": conversation, "via": self.run_.via, "source": self.source,
        }  # fmt: skip
        record = {"id": call["id"], "tool": tool.name, "arguments": shown, "risk": tool.risk}
        self.calls.append(record)
        audit.record("tool.call_requested", access=access, target=tool, ip=self.context.ip, **details)
        if arguments is None:
            decision = policy.Decision(False, "the arguments are not a JSON object")
        else:
            key_id = _key_id(access)
            role = str(access.role) if key_id is None else None
            decision = policy.decide(granted.terms, tool, arguments=arguments, role=role, api_key_id=key_id)
        if decision.allowed and _over_rate_limit(tool):
            decision = policy.Decision(False, f"the tool's rate limit ({tool.rate_limit_per_minute} calls a minute)")
        if decision.denied:
            # A rule may quote the argument it refuses: redacted like the arguments, wherever it goes.
            rule = _redacted_text(decision.rule, tool, arguments)
            audit.record("tool.call_denied", access=access, target=tool, ip=self.context.ip, rule=rule,
                         **details)  # fmt: skip
            record.update(outcome="denied", reason=rule)
            return json.dumps({"error": "denied", "reason": rule})
        assert arguments is not None
        if decision.needs_approval:
            approved = self._approved(tool, arguments, conversation, approvals)
            if approved is None:
                approval = services.request_approval(
                    access=access, tool=tool, deployment=self.context.deployment, conversation=conversation,
                    arguments=arguments, grant=granted.grant, ip=self.context.ip,
                )  # fmt: skip
                record.update(outcome="awaiting_approval", reason=decision.approval_reason,
                              approval=str(approval.public_id))  # fmt: skip
                self.approvals.append({
                    "id": str(approval.public_id), "tool": tool.name, "arguments": arguments,
                    "expires_at": approval.expires_at.isoformat(),
                })  # fmt: skip
                return approval
        record["arguments_json"] = arguments
        return tool

    async def _wait_for_decision(self, approval: ToolApproval, call: dict[str, Any], conversation: str) -> str | Tool:
        """Hold the run until a person approves or rejects ``approval`` (or it expires): the tool to run, used up,
        or the refusal the model is told."""
        record = self._record(call["id"])
        tool = self.context.tools[call["function"]["name"]].tool
        try:
            approval = await self._decision(approval)
        except asyncio.CancelledError:  # the playground's Stop, or the page closed: nobody need decide it now
            await sync_to_async(services.withdraw)(self.context.access, approval, ip=self.context.ip)
            raise
        if approval.status == ToolApproval.Status.APPROVED:
            try:
                await sync_to_async(services.consume)(
                    str(approval.public_id), team=self.context.access.team, tool=tool,
                    deployment=self.context.deployment, conversation=conversation, arguments=approval.arguments,
                    ip=self.context.ip, access=self.context.access,
                )  # fmt: skip
            except services.ApprovalRefused as error:
                record.update(outcome="denied", reason=str(error))
                return json.dumps({"error": "denied", "reason": str(error)})
            record.update(outcome="approved", approved_by=_username(approval.decided_by))
            record["arguments_json"] = approval.arguments
            self._report()
            return tool
        if approval.status == ToolApproval.Status.REJECTED:
            reason = f"rejected by {_username(approval.decided_by)}"
            reason += f": {approval.reason}" if approval.reason else ""
            record.update(outcome="rejected", reason=reason)
            return json.dumps({"error": "rejected", "reason": reason})
        record.update(outcome="expired", reason="nobody approved the call in time")
        return json.dumps({"error": "expired", "reason": "nobody approved the call in time"})

    async def _decision(self, approval: ToolApproval) -> ToolApproval:
        """``approval`` as it is once a person has decided it, or it has expired (looked up every
        ``APPROVAL_POLL_SECONDS``)."""
        while True:
            approval = (
                await ToolApproval.objects.for_team(self.context.access.team)
                .select_related("decided_by")
                .aget(pk=approval.pk)
            )
            if approval.status != ToolApproval.Status.PENDING or approval.is_expired():
                return approval
            await asyncio.sleep(APPROVAL_POLL_SECONDS)

    def _record(self, call_id: str) -> dict[str, Any]:
        return next(record for record in reversed(self.calls) if record["id"] == call_id)

    def _approved(self, tool: Tool, arguments: dict[str, Any], conversation: str, approvals: list[str]) -> bool | None:
        """True when one of the client's approval ids lets this exact call run (it is then used up); None when the
        client sent none. An id that matches no approved call of these values is refused (audited) with a 403."""
        if not approvals:
            return None
        refusal: services.ApprovalRefused | None = None
        for approval_id in approvals:
            try:
                services.consume(
                    approval_id, team=self.context.access.team, tool=tool, deployment=self.context.deployment,
                    conversation=conversation, arguments=arguments, ip=self.context.ip, access=self.context.access,
                )  # fmt: skip
            except services.ApprovalRefused as error:
                refusal = error
                continue
            approvals.remove(approval_id)
            return True
        assert refusal is not None
        code = "approval_pending" if refusal.rule == "not_approved" else "approval_refused"
        raise OpenAIError(409 if code == "approval_pending" else 403, f"{EXTENSION}.approvals: {refusal}",
                          param=EXTENSION, code=code)  # fmt: skip

    async def _execute(self, tool: Tool, call: dict[str, Any]) -> str:
        record = self._record(call["id"])
        arguments = record.pop("arguments_json")
        outcome = await sync_to_async(dispatch.run_call, thread_sensitive=False)(tool, arguments)
        await sync_to_async(self._audit_outcome)(tool, call, record, outcome)
        record.update(
            outcome="executed" if outcome.ok else "failed", status=outcome.status,
            latency_ms=round(outcome.latency_ms, 1),
        )  # fmt: skip
        if not outcome.ok:
            record["reason"] = outcome.text
            return json.dumps({"error": outcome.error, "message": outcome.text})
        return outcome.text

    def _audit_outcome(self, tool: Tool, call: dict[str, Any], record: dict[str, Any], outcome: Any) -> None:
        details = {
            "tool": tool.name, "deployment": self.context.deployment.name,
            "deployment_id": self.context.deployment.pk, "call_id": call["id"], "arguments": record["arguments"],
            "via": self.run_.via, "source": self.source, "status": outcome.status,
            "latency_ms": round(outcome.latency_ms, 1), "response_bytes": outcome.response_bytes,
        }  # fmt: skip
        if outcome.ok:
            event = audit.record(
                "tool.call_executed", access=self.context.access, target=tool, ip=self.context.ip, **details
            )
        else:
            event = audit.record("tool.call_failed", access=self.context.access, target=tool, ip=self.context.ip,
                                 error=outcome.error, message=outcome.text[:500], **details)  # fmt: skip
        services.keep_result(self.context.access.team, tool, event, outcome.text)

    def _answer_for_pending(self, status: str) -> dict[str, Any]:
        """The answer when a resumed run waits again before any generation: the message with the open calls, and
        the results of those that ran."""
        answer = {
            "id": "", "object": "chat.completion", "created": int(timezone.now().timestamp()),
            "model": self.context.deployment.name,
            "choices": [{"index": 0, "message": {"content": None, **self.open_message}, "logprobs": None,
                         "finish_reason": "tool_calls"}],
        }  # fmt: skip
        results, self.added = self.added, []
        return self._finish(answer, status, results)

    def _finish(
        self, answer: dict[str, Any], status: str, results: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        for record in self.calls:
            record.pop("arguments_json", None)
        answer[EXTENSION] = {
            "status": status, "tool_calls": self.calls, "messages": self.added, "tool_results": results or [],
        }  # fmt: skip
        if status == "approval_required":
            answer[EXTENSION]["approvals"] = self.approvals
        return answer


RUNNER = Runner()


def conversation_hash(messages: list[dict[str, Any]]) -> str:
    """The hex SHA-256 of a conversation's messages (canonical JSON): what an approval is bound to."""
    canonical = json.dumps([_canonical(message) for message in messages], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _context(run: ToolRun) -> Context:
    grants = ToolGrant.objects.for_team(run.access.team).filter(deployment=run.deployment).select_related("tool")
    tools = {grant.tool.name: Granted(grant.tool, grant, services.grant_terms(grant)) for grant in grants}
    return Context(access=run.access, deployment=run.deployment, tools=tools, ip=run.ip)


def _canonical(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the loop keeps it and hashes it: empty fields left out, tool calls in one shape."""
    canonical: dict[str, Any] = {"role": message["role"]}
    if message.get("content") not in (None, "", []):
        canonical["content"] = message["content"]
    for name in ("name", "tool_call_id"):
        if message.get(name):
            canonical[name] = message[name]
    if message.get("tool_calls"):
        canonical["tool_calls"] = [
            {"id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}
            for call in message["tool_calls"]
        ]  # fmt: skip
    return canonical


def _arguments(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _username(user: Any) -> str:
    return str(user.get_username()) if user is not None else "someone"


def _key_id(access: TeamAccess) -> int | None:
    return access.api_key.pk if access.api_key is not None else None


def _over_rate_limit(tool: Tool) -> bool:
    since = timezone.now() - timedelta(minutes=1)
    recent = AuditEvent.objects.for_team(tool.team).filter(
        action__in=["tool.call_executed", "tool.call_failed"], target_type="tool", target_id=str(tool.pk),
        created_at__gte=since,
    )  # fmt: skip
    return recent.count() >= tool.rate_limit_per_minute


def _redacted(value: Any, tool: Tool) -> Any:
    """``value`` for the audit trail: the tool's secret values, and arguments named like secrets, replaced."""
    redact = redactor(_tool_secret_values(tool))

    def clean(item: Any, name: str = "") -> Any:
        if name and SECRET_ARGUMENT.search(name):
            return REDACTED
        if isinstance(item, dict):
            return {key: clean(inner, str(key)) for key, inner in item.items()}
        if isinstance(item, list):
            return [clean(inner) for inner in item]
        if isinstance(item, str):
            return redact(item)[:AUDIT_VALUE_LIMIT]
        return item

    return clean(value)


def _redacted_text(text: str, tool: Tool, arguments: dict[str, Any] | None) -> str:
    """``text`` (a policy's reason, which may quote an argument) with the tool's secret values and the values of
    arguments named like secrets replaced, as ``_redacted`` does for the arguments themselves."""
    text = redactor(_tool_secret_values(tool))(text)
    for name, value in (arguments or {}).items():
        if SECRET_ARGUMENT.search(str(name)) and isinstance(value, str | int | float) and str(value):
            text = text.replace(str(value), REDACTED)
    return text


def _tool_secret_values(tool: Tool) -> list[str]:
    """What the tool's secret must never show as (the executor's rule: header values and their long words, the DSN
    and its password)."""
    if not tool.has_secret:
        return []
    try:
        return secret_values(secrets.decrypt_json(tool.secret))
    except (secrets.InvalidToken, ValueError):
        return []
