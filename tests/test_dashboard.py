"""The team's home page: login lands there; it says what to do next and shows the team's recent work."""

from __future__ import annotations

import re
from typing import Any

from accounts.roles import Role
from tests.factories import PASSWORD, finished_job, member, ready_version

ROWS = [{"text": "A note."}]


def steps_of(page: str) -> list[tuple[str, str]]:
    """(class, title) of each step on the page, in order."""
    step = r'<li class="(\w*)">\s*<span class="step-mark"[^>]*>[^<]*</span>\s*<span class="step-title">([^<]+)</span>'
    return re.findall(step, page)


def test_login_lands_on_the_team_home(alice: Any, client: Any) -> None:
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}, follow=True)

    assert response.redirect_chain[-1][0] == "/t/acme/"
    assert "What to do next" in response.content.decode()


def test_a_new_team_is_told_to_bring_a_dataset_first(alice: Any, login: Any) -> None:
    page = login(alice).get("/t/acme/").content.decode()

    assert steps_of(page)[0] == ("current", "Bring a dataset")
    assert 'id="next-step" href="/t/acme/datasets/"' in page


def test_steps_are_marked_done_from_the_teams_work(alice: Any, acme: Any, base_model_row: Any, login: Any) -> None:
    finished_job(acme, alice, base_model_row, ready_version(acme, alice, ROWS))

    page = login(alice).get("/t/acme/").content.decode()

    assert [cls for cls, _ in steps_of(page)] == ["done", "done", "current", ""]


def test_recent_datasets_jobs_and_versions_are_listed(alice: Any, acme: Any, base_model_row: Any, login: Any) -> None:
    version = ready_version(acme, alice, ROWS)
    job, model_version = finished_job(acme, alice, base_model_row, version)

    page = login(alice).get("/t/acme/").content.decode()

    assert version.dataset.name in page
    assert f'href="/t/acme/training/{job.pk}/"' in page
    assert f'href="/t/acme/models/versions/{model_version.pk}/"' in page


def test_a_viewer_is_told_which_steps_need_another_role(acme: Any, login: Any) -> None:
    viewer = member(acme, Role.VIEWER, "vera")

    page = login(viewer).get("/t/acme/").content.decode()

    assert "your role cannot do this" in page
    assert 'id="next-step"' not in page


def test_members_moved_to_their_own_page(alice: Any, bob: Any, login: Any) -> None:
    page = login(alice).get("/t/acme/members/").content.decode()

    assert "bob" in page


def test_model_version_page_offers_deploy_and_playground(
    alice: Any, acme: Any, base_model_row: Any, login: Any
) -> None:
    _, model_version = finished_job(acme, alice, base_model_row, ready_version(acme, alice, ROWS))

    page = login(alice).get(f"/t/acme/models/versions/{model_version.pk}/").content.decode()

    assert f'href="/t/acme/playground/?model=version:{model_version.pk}"' in page
    assert f'href="/t/acme/deployments/?version={model_version.pk}#new-deployment"' in page


def test_a_viewer_gets_neither_deploy_nor_playground_button(
    alice: Any, acme: Any, base_model_row: Any, login: Any
) -> None:
    _, model_version = finished_job(acme, alice, base_model_row, ready_version(acme, alice, ROWS))
    viewer = member(acme, Role.VIEWER, "vera")

    page = login(viewer).get(f"/t/acme/models/versions/{model_version.pk}/").content.decode()

    assert 'id="deploy-version"' not in page and 'id="open-in-playground"' not in page


def test_deploy_button_chooses_the_version_in_the_deployment_form(
    alice: Any, acme: Any, base_model_row: Any, login: Any
) -> None:
    _, model_version = finished_job(acme, alice, base_model_row, ready_version(acme, alice, ROWS))

    page = login(alice).get(f"/t/acme/deployments/?version={model_version.pk}").content.decode()

    assert re.search(rf'<option value="{model_version.pk}" selected>', page)


def test_playground_page_passes_only_a_well_formed_model_key_to_the_frame(alice: Any, login: Any) -> None:
    client = login(alice)

    framed = client.get("/t/acme/playground/?model=version:7").content.decode()
    junk = client.get("/t/acme/playground/?model=version:7%22onload").content.decode()

    assert "model=version%3A7" in framed
    assert "model=" not in junk
