"""Base models from the Hugging Face Hub: the download task against a local stand-in for the Hub.

The studio's machines have no internet, so a small HTTP server in this process plays the Hub's part with
its real protocol (``/api/models/<repo>/revision/<rev>`` for the file list, ``/<repo>/resolve/<rev>/<file>``
for the files, ``X-Error-Code`` headers for missing and gated repositories); ``huggingface_hub`` itself
does the talking (``HF_ENDPOINT``). It serves the studio's starter model as ``atelier/starter`` and a few
repositories the studio must refuse.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import AuditEvent
from accounts.permissions import resolve_access
from training_app import hub
from training_app.models import BaseModel

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "vocab_size": 300}


def repositories(starter: Path) -> dict[str, dict[str, bytes]]:
    """Repository → file name → contents."""
    weights = (starter / "model.safetensors").read_bytes()
    config = json.dumps(CONFIG).encode()
    return {
        "atelier/starter": {
            path.name: path.read_bytes()
            for path in starter.iterdir()
            if path.is_file() and not path.name.startswith(".")
        },
        "atelier/pickles": {"config.json": config, "pytorch_model.bin": b"\x80\x04pickle"},
        "atelier/custom-code": {"config.json": config, "model.safetensors": weights, "modeling_custom.py": b"x = 1"},
        "atelier/auto-map": {
            "config.json": json.dumps({**CONFIG, "auto_map": {"AutoModel": "modeling.Custom"}}).encode(),
            "model.safetensors": weights,
        },
    }


@pytest.fixture
def fake_hub(starter_model_path: Path) -> Iterator[str]:
    repos = repositories(starter_model_path)

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"error": code}).encode())

        def _route(self, body: bool) -> None:
            path = self.path.split("?")[0]
            if path.startswith("/api/models/"):
                repo = "/".join(path.removeprefix("/api/models/").split("/")[:2])
                if repo == "atelier/gated":
                    return self._error(403, "GatedRepo")
                if repo not in repos:
                    return self._error(404, "RepoNotFound")
                siblings = [{"rfilename": name, "size": len(data)} for name, data in repos[repo].items()]
                payload = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}).encode()
                return self._send(payload, body, "application/json")
            owner, name, marker, _revision, *rest = path.strip("/").split("/")
            repo, filename = f"{owner}/{name}", "/".join(rest)
            if marker != "resolve" or filename not in repos.get(repo, {}):
                return self._error(404, "EntryNotFound")
            return self._send(repos[repo][filename], body, "application/octet-stream")

        def _send(self, payload: bytes, body: bool, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def hub_settings(settings: Any, fake_hub: str, tmp_path: Path) -> None:
    settings.HF_ENDPOINT = fake_hub
    settings.MODELS_DIR = tmp_path / "models"


def add(user: Any, repo_id: str) -> BaseModel:
    model = hub.request_download(access=resolve_access(user, "acme"), repo_id=repo_id)
    hub.download(model.pk)
    model.refresh_from_db()
    return model


def test_a_hub_model_downloads_is_inspected_and_becomes_trainable(alice: Any, hub_settings: None) -> None:
    model = add(alice, "atelier/starter")

    assert (model.status, model.progress, model.error) == ("ready", 1.0, "")
    assert model.source == "hub" and model.team is not None
    assert model.architecture == "LlamaForCausalLM" and model.parameter_count == 3_950_848
    assert "<|start_header_id|>" in model.chat_template
    assert Path(model.path, "model.safetensors").is_file()
    assert not list(Path(model.path).parent.glob(".*partial"))
    actions = list(AuditEvent.objects.for_team(model.team).values_list("action", flat=True))
    assert "model.download_requested" in actions


@pytest.mark.parametrize(
    ("repo_id", "expected"),
    [
        ("atelier/missing", "does not exist on the Hub, or it is private"),
        ("atelier/gated", "is gated: accept its license on the Hub"),
        ("atelier/pickles", "has no safetensors weights (it has pytorch_model.bin)"),
        ("atelier/custom-code", "ships its own Python code (modeling_custom.py)"),
        ("atelier/auto-map", "asks for its own Python code (auto_map)"),
    ],
)
def test_a_repository_the_studio_cannot_use_fails_with_the_reason(
    repo_id: str, expected: str, alice: Any, hub_settings: None
) -> None:
    model = add(alice, repo_id)

    assert model.status == "failed"
    assert expected in model.error
    assert not Path(model.path).exists()
    assert not BaseModel.objects.available_to(model.team).ready().filter(pk=model.pk).exists()


def test_no_network_says_how_to_work_offline(alice: Any, settings: Any, tmp_path: Path) -> None:
    settings.HF_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port
    settings.MODELS_DIR = tmp_path / "models"
    model = add(alice, "atelier/starter")

    assert model.status == "failed"
    assert "could not reach the Hub" in model.error and "register it as a server path" in model.error


def test_the_page_and_the_api_start_a_download_and_validate_the_repo_id(
    alice: Any, login: Any, bearer: Any, hub_settings: None
) -> None:
    page = login(alice).post("/t/acme/models/hub/", {"repo_id": "not a repo"})
    assert page.status_code == 400
    assert "owner/name form" in page.content.decode()

    page = login(alice).post("/t/acme/models/hub/", {"repo_id": "atelier/starter"})
    assert page.status_code == 302
    model = BaseModel.objects.get(name="atelier/starter")
    assert model.status == "downloading"
    detail = login(alice).get(f"/t/acme/models/{model.pk}/?part=status")
    assert "Downloading atelier/starter" in detail.content.decode()

    api: Client = bearer(alice)
    answer = api.post("/api/v1/teams/acme/base-models", {"repo_id": "atelier/starter"}, content_type="application/json")
    assert answer.status_code == 400 and "already one of this team" in answer.json()["detail"]
    answer = api.post("/api/v1/teams/acme/base-models", {"repo_id": "atelier/pickles"}, content_type="application/json")
    assert answer.status_code == 202 and answer.json()["status"] == "downloading"


def test_a_viewer_cannot_add_a_model(user_in_role: Any, login: Any) -> None:
    viewer = user_in_role("viewer")
    assert login(viewer).post("/t/acme/models/hub/", {"repo_id": "atelier/starter"}).status_code == 403
    assert not BaseModel.objects.filter(name="atelier/starter").exists()


# --- a failed download: what the pages show, retry, delete ------------------------------------------


def failed_download(user: Any, settings: Any, tmp_path: Path, repo_id: str = "atelier/starter") -> BaseModel:
    """A Hub model whose download failed: no network (nothing listens on the discard port)."""
    settings.HF_ENDPOINT = "http://127.0.0.1:9"
    settings.MODELS_DIR = tmp_path / "models"
    return add(user, repo_id)


def test_a_failed_download_shows_only_the_failure_and_what_to_do(
    bob: Any, login: Any, settings: Any, tmp_path: Path
) -> None:
    settings.HF_ENDPOINT = "http://127.0.0.1:9"
    settings.MODELS_DIR = tmp_path / "models"
    client = login(bob)
    added = client.post("/t/acme/models/hub/", {"repo_id": "atelier/starter"})
    hub.download(BaseModel.objects.get(name="atelier/starter").pk)  # the worker fails before the page is opened

    page = client.get(added.url).content.decode()

    assert "The download of atelier/starter failed." in page and "could not reach the Hub" in page
    assert "Retry the download" in page and "Delete…" in page
    assert "Downloading" not in page
    assert "Parameters" not in page and "continued pretraining" not in page


def test_the_model_list_shows_no_facts_for_a_failed_download(
    bob: Any, login: Any, settings: Any, tmp_path: Path
) -> None:
    failed_download(bob, settings, tmp_path)

    page = login(bob).get("/t/acme/models/").content.decode()

    assert "download failed: open it to retry or delete it" in page
    assert "0 tokens" not in page


def test_a_member_retries_a_failed_download_and_it_completes(
    bob: Any, login: Any, settings: Any, tmp_path: Path, fake_hub: str, django_capture_on_commit_callbacks: Any
) -> None:
    model = failed_download(bob, settings, tmp_path)
    settings.HF_ENDPOINT = fake_hub  # the network is back

    with django_capture_on_commit_callbacks() as enqueued:
        response = login(bob).post(f"/t/acme/models/{model.pk}/retry")
    assert response.status_code == 302 and len(enqueued) == 1
    assert "Downloading atelier/starter" in login(bob).get(f"/t/acme/models/{model.pk}/").content.decode()
    hub.download(model.pk)  # what the enqueued task does

    model.refresh_from_db()
    assert (model.status, model.error) == ("ready", "")
    event = AuditEvent.objects.for_team(model.team).get(action="model.download_retried")
    assert event.actor == bob and event.details["repo_id"] == "atelier/starter"


def test_retrying_a_download_that_did_not_fail_is_refused(alice: Any, bearer: Any, hub_settings: None) -> None:
    model = add(alice, "atelier/starter")

    response = bearer(alice).post(f"/api/v1/teams/acme/base-models/{model.pk}/retry")

    assert response.status_code == 400
    assert response.json()["detail"] == "atelier/starter is ready: only a failed download can be retried"


def test_deleting_a_failed_download_removes_it_and_its_partial_files(
    bob: Any, login: Any, settings: Any, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    model = failed_download(bob, settings, tmp_path)
    partial = Path(model.path).with_name(f".{Path(model.path).name}.partial")
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}", encoding="utf-8")
    client = login(bob)

    assert "Delete base model “atelier/starter”?" in client.get(f"/t/acme/models/{model.pk}/delete").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/t/acme/models/{model.pk}/delete", follow=True)

    assert "Base model “atelier/starter” and its files were deleted." in response.content.decode()
    assert not BaseModel.objects.filter(pk=model.pk).exists()
    assert not partial.exists()
    event = AuditEvent.objects.for_team(model.team).get(action="model.deleted")
    assert (event.details["name"], event.details["status"]) == ("atelier/starter", "failed")


def test_a_base_model_jobs_were_made_from_cannot_be_deleted(alice: Any, bearer: Any, hub_settings: None) -> None:
    from tests.factories import finished_job, sample_version

    model = add(alice, "atelier/starter")
    finished_job(model.team, alice, model, sample_version(model.team, alice, "chat"))

    response = bearer(alice).delete(f"/api/v1/teams/acme/base-models/{model.pk}")

    assert response.status_code == 400
    assert response.json()["detail"] == (
        "1 training job and 1 model version of this team were made from atelier/starter: delete them first, "
        "then the base model"
    )
    assert BaseModel.objects.filter(pk=model.pk).exists()


def test_an_operators_base_model_cannot_be_deleted_by_a_team(alice: Any, bearer: Any, base_model_row: Any) -> None:
    response = bearer(alice).delete(f"/api/v1/teams/acme/base-models/{base_model_row.pk}")

    assert response.status_code == 403
    assert "provided to every team by the studio's operators" in response.json()["detail"]
    assert BaseModel.objects.filter(pk=base_model_row.pk).exists()
