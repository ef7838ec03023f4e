"""Which models a person may chat with, the inference server's registry file, and prompt retention."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone
from guardian.shortcuts import assign_perm

from accounts.models import AuditEvent
from accounts.permissions import resolve_access
from serving_app import catalog
from serving_app.inference import purge_prompt_logs
from serving_app.models import Deployment, PromptLog
from tests.factories import finished_job, member, sample_version
from training_app.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(acme: Any, alice: Any, base_model_row: Any) -> Any:
    return finished_job(acme, alice, base_model_row, sample_version(acme, alice))[1]


def test_member_may_use_the_teams_base_models_and_versions(
    acme: Any, bob: Any, base_model_row: Any, version: Any
) -> None:
    keys = [model.key for model in catalog.usable_models(resolve_access(bob, "acme"))]
    assert keys == [f"base:{base_model_row.pk}", f"version:{version.pk}"]


def test_viewer_may_use_no_model(acme: Any, base_model_row: Any, version: Any) -> None:
    viewer = resolve_access(member(acme, "viewer"), "acme")
    assert catalog.usable_models(viewer) == []
    with pytest.raises(PermissionDenied):
        catalog.resolve_model(viewer, f"base:{base_model_row.pk}")


def test_restricted_version_needs_a_share(acme: Any, bob: Any, version: Any) -> None:
    version.restricted = True
    version.save()
    access = resolve_access(bob, "acme")
    assert f"version:{version.pk}" not in [model.key for model in catalog.usable_models(access)]
    with pytest.raises(Http404):
        catalog.resolve_model(access, f"version:{version.pk}")
    assign_perm("use_modelversion", bob, version)
    assert catalog.resolve_model(access, f"version:{version.pk}").label == str(version)


def test_another_teams_version_and_junk_keys_are_404(
    acme: Any, globex: Any, alice: Any, charlie: Any, base_model_row: Any
) -> None:
    _, theirs = finished_job(globex, charlie, base_model_row, sample_version(globex, charlie))
    access = resolve_access(alice, "acme")
    for key in (f"version:{theirs.pk}", "version:999999", "base:abc", "starter", "file:/etc/passwd", ""):
        with pytest.raises(Http404):
            catalog.resolve_model(access, key)


def test_adapter_version_is_served_on_its_base_models_folder(version: Any, base_model_row: Any) -> None:
    served = catalog.servable_version(version)
    assert (served.base_path, served.adapter_path) == (base_model_row.path, version.path)
    assert served.served_name == f"version-{version.pk}"


def test_publish_adds_entries_and_drops_models_whose_folders_are_gone(tmp_path: Path, version: Any) -> None:
    registry = tmp_path / "models.json"
    gone = tmp_path / "deleted-model"
    gone.mkdir()
    stale = catalog.Servable("base:0", "old", "base-0", str(gone), None)
    catalog.publish([stale], registry)
    gone.rmdir()
    catalog.publish([catalog.servable_version(version)], registry)
    entries = json.loads(registry.read_text())
    assert entries == {f"version-{version.pk}": {"base": version.base_model.path, "adapter": version.path}}


def test_publish_leaves_an_unchanged_registry_untouched(tmp_path: Path, version: Any) -> None:
    registry = tmp_path / "models.json"
    catalog.publish([catalog.servable_version(version)], registry)
    before = registry.stat().st_mtime_ns
    catalog.publish([catalog.servable_version(version)], registry)
    assert registry.stat().st_mtime_ns == before


def test_publish_reads_a_registry_rewritten_elsewhere_again(tmp_path: Path, version: Any) -> None:
    # Publishing skips a registry file it has checked while the file is unchanged; one rewritten by another
    # process (or removed) is read again, so the entry is put back.
    registry = tmp_path / "models.json"
    served = catalog.servable_version(version)
    catalog.publish([served], registry)
    registry.write_text(json.dumps({"other": {"base": str(tmp_path), "adapter": None}}))

    catalog.publish([served], registry)

    assert set(json.loads(registry.read_text())) == {"other", served.served_name}


def test_prompts_are_kept_for_the_retention_period_only(acme: Any, globex: Any, alice: Any) -> None:
    acme.prompt_retention_days = 7
    acme.save()
    now = timezone.now()
    for team, age in ((acme, 2), (acme, 9), (globex, 1)):
        PromptLog.objects.create(
            team=team,
            source="playground",
            model_label="m",
            messages=[],
            answer="a",
            created_at=now - timedelta(days=age),
        )
    assert purge_prompt_logs(now) == 2  # acme's 9-day-old one, and globex's (retention off)
    assert list(PromptLog.objects.for_team(acme).values_list("created_at", flat=True)) == [now - timedelta(days=2)]
    assert not PromptLog.objects.for_team(globex).exists()


def test_owner_turns_prompt_retention_on_in_team_settings_and_it_is_audited(acme: Any, alice: Any, login: Any) -> None:
    client = login(alice)
    response = client.post(
        "/t/acme/settings/", {"name": "Acme", "currency": "USD", "prompt_retention_days": "14"}, follow=True
    )
    assert "Team settings saved." in response.content.decode()
    acme.refresh_from_db()
    assert acme.prompt_retention_days == 14
    event = AuditEvent.objects.for_team(acme).get(action="team.prompt_retention_changed")
    assert event.details == {"old": None, "new": 14}
    client.post("/t/acme/settings/", {"name": "Acme", "currency": "USD", "prompt_retention_days": ""})
    acme.refresh_from_db()
    assert acme.prompt_retention_days is None


def test_a_published_model_version_cannot_be_deleted_until_its_deployment_is(
    acme: Any, alice: Any, version: Any, login: Any
) -> None:
    Deployment.objects.create(team=acme, name="support-bot", model_version=version)
    client = login(alice)
    confirm = client.get(f"/t/acme/models/versions/{version.pk}/delete").content.decode()
    assert "published as support-bot" in confirm
    response = client.post(f"/t/acme/models/versions/{version.pk}/delete", follow=True)
    assert "delete the deployment first" in response.content.decode()
    assert ModelVersion.objects.for_team(acme).filter(pk=version.pk).exists()
    api = client.delete(f"/api/v1/teams/acme/model-versions/{version.pk}")
    assert api.status_code == 400
    assert "support-bot" in api.json()["detail"]
