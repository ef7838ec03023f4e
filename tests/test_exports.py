"""Exports of model versions: merged safetensors, GGUF (our converter, read back with gguf's reader), the Ollama
Modelfile, the documents bundle, the Hub push (to a local stand-in speaking the Hub's upload protocol), the
permissions, and the Celery job with its progress on the version's page.

llama-cpp-python does not build here in reasonable time (it compiles llama.cpp from source: more than 10 minutes on
this machine), so the GGUF file is checked tensor by tensor with ``gguf.GGUFReader`` rather than run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.permissions import TeamAccess
from accounts.roles import Role
from exports_app import hub, services
from exports_app.engine import gguf_export, merge, ollama
from exports_app.models import ExportSettings, ModelExport
from tests.factories import adapter_model_version, member
from training_app.models import BaseModel, ModelVersion

TOKEN = "hf_exportTestToken1234567890"


# --- the engine -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_folder(starter_model_path: Path, lora_adapters: list[Path], tmp_path_factory: Any) -> Path:
    """The starter model with the first test adapter folded in, as the export engine writes it."""
    return merge.merge_adapter(starter_model_path, lora_adapters[0], tmp_path_factory.mktemp("merged") / "merged")


def greedy(model: Any, tokenizer: Any, prompt: str) -> str:
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))


def test_merged_safetensors_answer_as_base_plus_adapter(
    merged_folder: Path, starter_model_path: Path, lora_adapters: list[Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_folder))
    base = AutoModelForCausalLM.from_pretrained(str(starter_model_path), use_safetensors=True)
    tuned = PeftModel.from_pretrained(base, str(lora_adapters[0]))
    merged = AutoModelForCausalLM.from_pretrained(str(merged_folder), use_safetensors=True)
    plain = AutoModelForCausalLM.from_pretrained(str(starter_model_path), use_safetensors=True)

    prompt = "Where is my parcel?"
    assert greedy(merged, tokenizer, prompt) == greedy(tuned, tokenizer, prompt)
    assert greedy(merged, tokenizer, prompt) != greedy(plain, tokenizer, prompt)  # the adapter changed something
    assert sorted(path.suffix for path in merged_folder.iterdir() if path.suffix in (".bin", ".pt", ".py")) == []


def unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary layout back to Hugging Face's halves (written independently of the engine)."""
    rows = weights.shape[0]
    half = rows // heads // 2
    out = np.empty_like(weights)
    for head in range(heads):
        block = weights[head * 2 * half : (head + 1) * 2 * half]
        out[head * 2 * half : head * 2 * half + half] = block[0::2]
        out[head * 2 * half + half : (head + 1) * 2 * half] = block[1::2]
    return out


def hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def gguf_files(merged_folder: Path, tmp_path_factory: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {
        quantization: gguf_export.write_gguf(
            merged_folder, root / f"{quantization}.gguf", quantization=quantization, name="support v1"
        )
        for quantization in ("f16", "q8_0")
    }


def read_back(path: Path) -> dict[str, Any]:
    import gguf

    return {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}


def test_gguf_f16_tensors_equal_the_fp16_cast_of_the_merged_weights(
    gguf_files: dict[str, Path], merged_folder: Path
) -> None:
    config = json.loads((merged_folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    weights, tensors = hf_tensors(merged_folder), read_back(gguf_files["f16"])

    layers = config["num_hidden_layers"]
    assert len(tensors) == 2 + 9 * layers  # tied output: token_embd serves as the output layer
    np.testing.assert_array_equal(
        np.asarray(tensors["token_embd.weight"].data), weights["model.embed_tokens.weight"].astype(np.float16)
    )
    for layer in range(layers):
        q = np.asarray(tensors[f"blk.{layer}.attn_q.weight"].data)
        k = np.asarray(tensors[f"blk.{layer}.attn_k.weight"].data)
        prefix = f"model.layers.{layer}"
        np.testing.assert_array_equal(
            unpermute(q, heads), weights[f"{prefix}.self_attn.q_proj.weight"].astype(np.float16)
        )
        np.testing.assert_array_equal(
            unpermute(k, kv_heads), weights[f"{prefix}.self_attn.k_proj.weight"].astype(np.float16)
        )
        np.testing.assert_array_equal(
            np.asarray(tensors[f"blk.{layer}.ffn_down.weight"].data),
            weights[f"{prefix}.mlp.down_proj.weight"].astype(np.float16),
        )
        norm = np.asarray(tensors[f"blk.{layer}.attn_norm.weight"].data)
        assert norm.dtype == np.float32
        np.testing.assert_array_equal(norm, weights[f"{prefix}.input_layernorm.weight"])


def test_gguf_q8_0_tensors_dequantize_close_to_the_merged_weights(
    gguf_files: dict[str, Path], merged_folder: Path
) -> None:
    import gguf

    weights, tensors = hf_tensors(merged_folder), read_back(gguf_files["q8_0"])
    tensor = tensors["blk.1.ffn_up.weight"]
    expected = weights["model.layers.1.mlp.up_proj.weight"]

    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
    restored = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(expected.shape)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert np.all(np.abs(restored - expected) <= scale / 127 + 1e-6)  # Q8_0: 8-bit steps of each block's max


def test_gguf_metadata_holds_the_hyperparameters_tokenizer_and_chat_template(
    gguf_files: dict[str, Path], merged_folder: Path
) -> None:
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(str(gguf_files["f16"]))
    tokenizer = AutoTokenizer.from_pretrained(str(merged_folder))

    def value(key: str) -> Any:
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "llama-bpe"
    tokens = value("tokenizer.ggml.tokens")
    assert tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert value("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert value("tokenizer.chat_template") == tokenizer.chat_template
    assert len(value("tokenizer.ggml.merges")) > 1000


def test_ollama_modelfile_reproduces_the_chat_template_and_stops_at_the_end_of_turn(merged_folder: Path) -> None:
    text = ollama.modelfile_for(merged_folder, "support-q8_0.gguf")

    assert text.startswith("FROM ./support-q8_0.gguf\n")
    assert 'eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>' in text
    assert 'PARAMETER stop "<|eot_id|>"' in text
    assert "<|begin_of_text|>" not in text  # Ollama adds BOS itself (the GGUF says add_bos_token)


def test_a_model_that_is_not_llama_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))

    with pytest.raises(merge.ExportError, match=r"convert_hf_to_gguf\.py"):
        gguf_export.write_gguf(tmp_path, tmp_path / "x.gguf", quantization="f16", name="x")


# --- the local Hub stand-in -------------------------------------------------------------------------------------


class FakeHub:
    """What the stand-in received: repositories created, files committed, the Authorization headers seen."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, bytes]] = {}
        self.uploads: dict[str, bytes] = {}
        self.authorizations: set[str] = set()


@pytest.fixture
def fake_upload_hub(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A local Hub answering the upload protocol huggingface_hub speaks: create repo, preupload, the LFS batch API with
    the basic transfer (weights), commit (small files inline as base64). Xet storage is off: the stand-in speaks LFS."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    state = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, payload: Any, status: int = 200) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            state.authorizations.add(self.headers.get("Authorization", ""))
            path, body = self.path.split("?")[0], self._body()
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if path == "/api/repos/create":
                request = json.loads(body)
                state.created.append(request)
                return self._reply({"url": f"{base}/{request['organization'] or 'me'}/{request['name']}"})
            if path == "/api/validate-yaml":  # the README's metadata block, checked before the commit
                return self._reply({})
            if "/preupload/" in path:
                files = json.loads(body)["files"]
                return self._reply({"files": [
                    {"path": f["path"], "shouldIgnore": False,
                     "uploadMode": "lfs" if f["path"].endswith((".gguf", ".safetensors", ".zip")) else "regular"}
                    for f in files
                ]})  # fmt: skip
            if path.endswith(".git/info/lfs/objects/batch"):
                objects = json.loads(body)["objects"]
                return self._reply({"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{base}/lfs/{o['oid']}"}}}
                    for o in objects
                ]})  # fmt: skip
            if "/commit/" in path:
                repo = path.removeprefix("/api/models/").split("/commit/")[0]
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        content = base64.b64decode(item["value"]["content"])
                        state.files.setdefault(repo, {})[item["value"]["path"]] = content
                    elif item["key"] == "lfsFile":
                        content = state.uploads[item["value"]["oid"]]
                        state.files.setdefault(repo, {})[item["value"]["path"]] = content
                return self._reply({"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
            return self._reply({"error": "not found"}, 404)

        def do_PUT(self) -> None:
            oid = self.path.rsplit("/", 1)[-1]
            state.uploads[oid] = self._body()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    settings.HF_ENDPOINT = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


# --- the service and the job, in this process -------------------------------------------------------------------


@pytest.fixture
def tuned_version(acme: Any, alice: Any, starter_model: BaseModel, lora_adapters: list[Path]) -> ModelVersion:
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support")


def make_now(access: TeamAccess, version: ModelVersion, **request: Any) -> ModelExport:
    """Start an export and run its job here (the Celery worker's part), as a second delivery would find it."""
    export = services.start_export(access=access, version=version, **request)
    services.run(export.pk)
    return ModelExport.objects.for_team(access.team).get(pk=export.pk)


def test_hub_push_sends_the_gguf_card_and_license_with_the_teams_token(
    owner: TeamAccess, tuned_version: ModelVersion, fake_upload_hub: FakeHub
) -> None:
    services.set_hub_token(access=owner, token=TOKEN)

    export = make_now(owner, tuned_version, format="gguf", quantization="q8_0", hub_repo="acme/support-gguf")

    assert export.status == "succeeded", export.error
    files = fake_upload_hub.files["acme/support-gguf"]
    assert sorted(files) == ["LICENSE.txt", "README.md", "support-v1-q8_0.gguf"]
    assert hashlib.sha256(files["support-v1-q8_0.gguf"]).hexdigest() == export.sha256
    assert (
        fake_upload_hub.created[0]["name"] == "support-gguf" and fake_upload_hub.created[0]["visibility"] == "private"
    )
    assert f"Bearer {TOKEN}" in fake_upload_hub.authorizations


def test_the_hub_token_is_stored_encrypted_and_never_shown_or_audited(
    owner: TeamAccess, acme: Any, alice: Any, login: Callable[[Any], Client]
) -> None:
    client = login(alice)
    client.post(reverse("exports:settings", args=["acme"]), {"token": TOKEN})

    stored = bytes(ExportSettings.objects.for_team(acme).get().hub_token or b"")
    assert stored and TOKEN.encode() not in stored
    page = client.get(reverse("exports:settings", args=["acme"]))
    assert b"A token is saved" in page.content and TOKEN.encode() not in page.content
    events = AuditEvent.objects.for_team(acme).filter(action="exports.hub_token_set")
    assert events.count() == 1 and TOKEN not in json.dumps(events.get().details)


def test_a_push_the_hub_refuses_fails_with_what_to_do_and_no_token(
    owner: TeamAccess, tuned_version: ModelVersion, settings: Any
) -> None:
    services.set_hub_token(access=owner, token=TOKEN)
    settings.HF_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port

    export = make_now(owner, tuned_version, format="bundle", hub_repo="acme/docs")

    assert export.status == "failed"
    assert "could not reach the Hub" in export.error and TOKEN not in export.error


def test_bundle_holds_the_card_eval_report_guard_policy_and_license(
    owner: TeamAccess, tuned_version: ModelVersion
) -> None:
    export = make_now(owner, tuned_version, format="bundle")

    with zipfile.ZipFile(export.file_path) as archive:
        names = sorted(archive.namelist())
        license_text = archive.read("LICENSE.txt").decode()
        report = json.loads(archive.read("eval-report.json"))
    assert names == ["LICENSE.txt", "README.md", "eval-report.json", "guard-policy.json"]
    assert "Apache-2.0" in license_text and report["model"] == "support v1"
    assert export.size_bytes == Path(export.file_path).stat().st_size


def test_bundle_carries_the_guard_policy_of_each_deployment_serving_the_version(
    owner: TeamAccess, tuned_version: ModelVersion
) -> None:
    from serving_app import deployments, guardrails

    deployment = deployments.create_deployment(access=owner, name="support-bot", version=tuned_version)
    topics = [{"name": "lock picking", "terms": ["bump key"], "patterns": []}]
    guardrails.save_policy(access=owner, deployment=deployment, settings={"blocked_topics": topics})

    export = make_now(owner, tuned_version, format="bundle")

    with zipfile.ZipFile(export.file_path) as archive:
        policy = json.loads(archive.read("guard-policy.json"))
    assert policy["deployments"]["support-bot"]["revision"] == 1
    assert policy["deployments"]["support-bot"]["blocked_topics"] == topics


def test_safetensors_export_is_a_zip_of_the_merged_model_without_pickles(
    owner: TeamAccess, tuned_version: ModelVersion
) -> None:
    export = make_now(owner, tuned_version, format="safetensors")

    with zipfile.ZipFile(export.file_path) as archive:
        names = set(archive.namelist())
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "LICENSE.txt"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pkl", ".py"))]


# --- permissions and bad requests -------------------------------------------------------------------------------


@pytest.fixture
def version_row(model_version: ModelVersion) -> ModelVersion:
    """A version row (no weights): enough for permissions and validation, which refuse before any job."""
    return model_version


def test_viewer_gets_403_creating_an_export(
    acme: Any, version_row: ModelVersion, bearer: Callable[[Any], Client]
) -> None:
    viewer = member(acme, Role.VIEWER, "vera")
    url = f"/api/v1/teams/acme/model-versions/{version_row.pk}/exports"

    response = bearer(viewer).post(url, {"format": "bundle"}, content_type="application/json")

    assert response.status_code == 403
    assert not ModelExport.objects.for_team(acme).exists()


def test_viewer_gets_403_on_the_export_form(
    acme: Any, version_row: ModelVersion, login: Callable[[Any], Client]
) -> None:
    viewer = member(acme, Role.VIEWER, "vera")

    response = login(viewer).post(reverse("exports:create", args=["acme", version_row.pk]), {"format": "bundle"})

    assert response.status_code == 403


def test_member_without_use_of_a_restricted_version_gets_404(
    acme: Any, bob: Any, version_row: ModelVersion, bearer: Callable[[Any], Client]
) -> None:
    ModelVersion.objects.for_team(acme).filter(pk=version_row.pk).update(restricted=True)

    response = bearer(bob).post(f"/api/v1/teams/acme/model-versions/{version_row.pk}/exports", {"format": "bundle"},
                                content_type="application/json")  # fmt: skip

    assert response.status_code == 404


def test_outsider_gets_404(charlie: Any, version_row: ModelVersion, bearer: Callable[[Any], Client]) -> None:
    response = bearer(charlie).post(f"/api/v1/teams/acme/model-versions/{version_row.pk}/exports",
                                    {"format": "bundle"}, content_type="application/json")  # fmt: skip

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"format": "pickle"}, "format"),
        ({"format": "gguf"}, "quantization"),
        ({"format": "safetensors", "quantization": "q8_0"}, "quantization"),
        ({"format": "bundle", "hub_repo": "not a repo"}, "hub_repo"),
        ({"format": "bundle", "hub_repo": "acme/docs"}, "hub_repo"),  # no team token yet
    ],
)
def test_a_bad_request_gets_400_naming_the_field(
    body: dict[str, Any], field: str, alice: Any, version_row: ModelVersion, bearer: Callable[[Any], Client]
) -> None:
    response = bearer(alice).post(f"/api/v1/teams/acme/model-versions/{version_row.pk}/exports", body,
                                  content_type="application/json")  # fmt: skip

    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_an_unfinished_export_cannot_be_downloaded(
    owner: TeamAccess, alice: Any, version_row: ModelVersion, bearer: Callable[[Any], Client]
) -> None:
    export = services.start_export(access=owner, version=version_row, format="bundle")

    response = bearer(alice).get(f"/api/v1/teams/acme/exports/{export.pk}/download")

    assert response.status_code == 400
    assert "queued" in response.json()["errors"]["export"][0]


# --- the Celery job, end to end -----------------------------------------------------------------------------------


def eventually(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.django_db(transaction=True)
def test_an_export_runs_as_a_celery_job_and_its_page_shows_size_hash_and_download(
    celery_worker: None, acme: Any, alice: Any, starter_model: BaseModel, lora_adapters: list[Path],
    login: Callable[[Any], Client],
) -> None:  # fmt: skip
    version = adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support")
    client = login(alice)

    client.post(reverse("exports:create", args=["acme", version.pk]), {"format": "ollama", "quantization": "f16"})
    export = eventually(
        lambda: ModelExport.objects.for_team(acme).filter(status__in=["succeeded", "failed"]).first(),
        timeout=300,
        what="the export job",
    )

    assert export.status == "succeeded", export.error
    page = client.get(reverse("training:version", args=["acme", version.pk])).content.decode()
    assert export.sha256[:14] in page and "Ready" in page
    download = client.get(reverse("exports:download", args=["acme", export.pk]))
    body = b"".join(download.streaming_content)  # type: ignore[attr-defined]
    assert hashlib.sha256(body).hexdigest() == export.sha256
    with zipfile.ZipFile(Path(export.file_path)) as archive:
        assert sorted(archive.namelist()) == ["LICENSE.txt", "Modelfile", "README.md", "model-f16.gguf"]
        assert archive.read("Modelfile").decode().startswith("FROM ./model-f16.gguf\n")


def test_a_running_export_shows_its_progress_and_polls(
    owner: TeamAccess, alice: Any, version_row: ModelVersion, login: Callable[[Any], Client]
) -> None:
    export = services.start_export(access=owner, version=version_row, format="bundle")
    ModelExport.objects.for_team(owner.team).filter(pk=export.pk).update(status="running", progress=0.42,
                                                                           phase="converting")  # fmt: skip

    page = login(alice).get(reverse("exports:section", args=["acme", version_row.pk])).content.decode()

    assert 'aria-valuenow="42"' in page and "converting" in page and 'hx-trigger="every 2s"' in page


def test_token_check_uses_the_team_scope(owner: TeamAccess, globex: Any) -> None:
    services.set_hub_token(access=owner, token=TOKEN)

    assert hub.has_token(owner.team) and not hub.has_token(globex)
