"""The inference server's connections to vLLM: a kept-alive connection that vLLM drops just as a request goes out
costs the client nothing.

vLLM's API server closes a connection idle for 5 s. A request sent on it at that moment meets "Connection reset
by peer" (1 request in 50 sent about 5 s apart, with aiohttp's default keep-alive of 15 s), and the client used
to get a 503. The stand-in vLLM server here drops every connection on its second answer, as that race does, so the
test does not depend on timing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path
from typing import Any

from serving_app.engine.registry import ServedModel
from serving_app.engine.server import _forward
from serving_app.engine.vllm_server import BASE_NAME, VllmSettings, VllmSupervisor


class DroppingVllm:
    """A stand-in vLLM server on loopback: ``/health``, ``/v1/models`` and a one-word chat answer; the second chat
    request on a connection is met with a reset, as a connection closed as idle under the request is."""

    def __init__(self) -> None:
        self.chats = 0  # chat requests received, dropped ones included
        self.dropped = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chats_here = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                request_line, *header_lines = head.decode().split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
                await reader.readexactly(int(headers.get("Content-Length", headers.get("content-length", "0"))))
                body: dict[str, Any] = {}
                if path == "/v1/models":
                    body = {"data": [{"id": BASE_NAME, "parent": None}]}
                elif method == "POST" and path == "/v1/chat/completions":
                    self.chats += 1
                    chats_here += 1
                    if chats_here > 1:
                        self.dropped += 1
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()  # a reset, not an orderly close
                        return
                    body = {"object": "chat.completion", "model": BASE_NAME,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                                         "finish_reason": "stop"}]}  # fmt: skip
                data = json.dumps(body, separators=(",", ":")).encode()  # compact, as vLLM writes it
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(data), data)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_connection_vllm_drops_under_a_request_is_replaced_and_the_answer_comes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    served = ServedModel(name="starter", base=str(base), adapter=None)
    request = {"model": "starter", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

    async def scenario() -> tuple[list[int], list[str], DroppingVllm]:
        vllm = DroppingVllm()
        listener = await asyncio.start_server(vllm.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        supervisor = VllmSupervisor(VllmSettings(python=None, log_dir=tmp_path / "logs", external={str(base): url}))
        try:
            server = await supervisor.server(str(base))
            for _ in range(100):
                if server.state == "ready":
                    break
                await asyncio.sleep(0.05)
            session = await supervisor.relay_session()
            answers = [await _forward(session, server, served, "/v1/chat/completions", request, 64) for _ in range(3)]
        finally:
            await supervisor.close()
            listener.close()
        return [a.status_code for a in answers], [json.loads(bytes(a.body))["model"] for a in answers], vllm

    statuses, models, vllm = asyncio.run(scenario())

    assert statuses == [200, 200, 200]
    assert models == ["starter"] * 3  # vLLM's name for the base, renamed to the one the client asked for
    assert vllm.dropped == 2  # the second and the third request each met a dropped connection first
    assert vllm.chats == 5
