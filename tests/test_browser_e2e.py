"""End to end in headless Chromium against the real ASGI app: sign up, make a team, invite, join, promote,
read the audit trail; and the login lockout.

Everything is checked the way a user would notice it: the address bar, the visible text, the status.
The ``browser`` fixture is per test and requested after the data fixtures, so Django's ORM (factories
before, the database flush after) never runs while Playwright's event loop is live in this thread.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Where the screenshots are copied so a person can look at them after the run.
SHARED_SCREENS = Path("/tmp/atelier-screens")
STRONG_PASSWORD = "violet-otter-harbour-93"


def new_page(browser: Browser, base_url: str) -> tuple[BrowserContext, Page]:
    """A fresh context (its own cookies) and a page in it; relative URLs resolve against the server."""
    context = browser.new_context(base_url=base_url)
    return context, context.new_page()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path``, copied to SHARED_SCREENS."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHARED_SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHARED_SCREENS / path.name)
    return path


def fill_signup_form(page: Page, username: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.locator("[name=password1]").fill(STRONG_PASSWORD)
    page.locator("[name=password2]").fill(STRONG_PASSWORD)
    page.get_by_role("button", name="Sign up").click()


def member_row(page: Page, username: str) -> Any:
    return page.locator(f"#members tr[data-username='{username}']")


def audit_row(page: Page, action: str) -> Any:
    return page.locator("#audit-events tbody tr").filter(has=page.locator("code", has_text=re.compile(f"^{action}$")))


def test_owner_invites_a_colleague_who_signs_up_joins_and_is_promoted(
    studio_server: str, browser: Browser, tmp_path: Path
) -> None:
    ada_context, ada = new_page(browser, studio_server)
    grace_context, grace = new_page(browser, studio_server)

    # 1. Ada signs up and lands signed in, on the page that offers to create a team.
    response = ada.goto("/accounts/signup/")
    assert response is not None and response.status == 200
    expect(ada.get_by_role("heading", name="Create your account")).to_be_visible()
    fill_signup_form(ada, "ada")
    expect(ada).to_have_url(f"{studio_server}/")
    expect(ada.get_by_text("Welcome, ada.")).to_be_visible()
    expect(ada.locator("#user-menu summary")).to_contain_text("ada")

    # 2. She creates the team "Research" from the home page's button and lands on its page as Owner.
    ada.get_by_role("link", name="Create a team").click()
    expect(ada).to_have_url(f"{studio_server}/teams/new/")
    ada.get_by_label("Name").fill("Research")
    ada.get_by_label("Address").fill("research")
    ada.get_by_role("button", name="Create team").click()
    expect(ada).to_have_url(f"{studio_server}/t/research/")
    expect(ada.get_by_role("heading", level=1)).to_contain_text("Research")
    expect(ada.get_by_text("Team “Research” created.")).to_be_visible()
    expect(ada.locator("#steps li").first).to_contain_text("Bring a dataset")  # the team's home: what to do next
    ada.get_by_role("navigation", name="Team").get_by_role("link", name="Members").click()
    expect(ada).to_have_url(f"{studio_server}/t/research/members/")
    expect(member_row(ada, "ada")).to_contain_text("(you)")
    expect(member_row(ada, "ada").locator(".pill")).to_have_text("Owner")
    screenshot(ada, tmp_path, "02-team-created")

    # 3. She makes a single-use invitation link for a Member; the page shows it once.
    ada.get_by_label("Role").select_option(label="Member")
    ada.get_by_role("button", name="Create invitation link").click()
    expect(ada).to_have_url(f"{studio_server}/t/research/members/")
    link_element = ada.locator("#invitation-link")
    expect(link_element).to_have_text(re.compile(rf"^{re.escape(studio_server)}/invite/\S+/$"))
    invitation_link = link_element.inner_text().strip()
    expect(ada.locator("#invitations tbody tr")).to_have_count(1)
    expect(ada.locator("#invitations tbody tr")).to_contain_text("pending")

    # 4. Grace, signed out in her own browser, opens the link: it says who invites her to what.
    response = grace.goto(invitation_link)
    assert response is not None and response.status == 200
    expect(grace.get_by_role("heading", name="Join Research")).to_be_visible()
    expect(grace.locator("main")).to_contain_text("ada invites you to join Research as Member.")
    grace.get_by_role("link", name="Create an account").click()
    expect(grace).to_have_url(re.compile(r"/accounts/signup/\?next=/invite/"))
    fill_signup_form(grace, "grace")
    # The signup form keeps ?next=, so she comes back to the invitation, now signed in.
    expect(grace).to_have_url(invitation_link)
    expect(grace.get_by_text("Welcome, grace.")).to_be_visible()
    grace.get_by_role("button", name="Join as grace").click()
    expect(grace).to_have_url(f"{studio_server}/t/research/")
    expect(grace.get_by_text("You joined Research as Member.")).to_be_visible()
    grace.get_by_role("navigation", name="Team").get_by_role("link", name="Members").click()
    expect(member_row(grace, "grace")).to_contain_text("(you)")
    expect(member_row(grace, "ada")).to_be_visible()

    # 5. Ada reloads her team page, sees Grace, and makes her an Admin.
    ada.reload()
    expect(member_row(ada, "grace")).to_be_visible()
    expect(ada.locator("#invitations tbody tr")).to_contain_text("accepted")
    role_of_grace = ada.get_by_label("Role of grace")
    expect(role_of_grace).to_have_value("member")
    role_of_grace.select_option(label="Admin")
    member_row(ada, "grace").get_by_role("button", name="Change").click()
    expect(ada).to_have_url(f"{studio_server}/t/research/members/")
    expect(ada.locator(".messages")).to_contain_text("grace is now Admin.")
    expect(ada.get_by_label("Role of grace")).to_have_value("admin")
    expect(ada.get_by_label("Role of grace").locator("option:checked")).to_have_text("Admin")
    screenshot(ada, tmp_path, "05-grace-promoted")

    # 6. The "Audit trail" tab lists every step, each with who did it.
    ada.get_by_role("navigation", name="Team").get_by_role("link", name="Audit trail").click()
    expect(ada).to_have_url(f"{studio_server}/t/research/audit/")
    expect(ada.get_by_role("heading", name="Audit trail")).to_be_visible()
    expected_actors = {
        "team.created": "ada",
        "invitation.created": "ada",
        "member.joined": "grace",
        "member.role_changed": "ada",
    }
    for action, actor in expected_actors.items():
        row = audit_row(ada, action)
        expect(row).to_have_count(1)
        expect(row.locator("td").nth(1)).to_have_text(actor)
    expect(audit_row(ada, "member.role_changed")).to_contain_text("new_role=admin")
    screenshot(ada, tmp_path, "06-audit-trail")

    # 7. The link worked once: opening it again says so with a 400, not a server error.
    response = grace.goto(invitation_link)
    assert response is not None and response.status == 400
    expect(grace.get_by_role("alert")).to_contain_text("already been used")
    expect(grace.get_by_role("button", name=re.compile("^Join as"))).to_have_count(0)

    grace_context.close()
    ada_context.close()


def test_five_wrong_passwords_lock_that_username_but_not_another_user(
    alice: Any, bob: Any, studio_server: str, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server)

    def log_in(username: str, password: str) -> int:
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Log in").click()
        response = navigation.value
        assert response is not None
        return response.status

    # Four wrong passwords: each time the ordinary "try again" form.
    for _ in range(4):
        assert log_in("bob", "not-his-password") == 200
        expect(page.get_by_role("alert")).to_contain_text("Please enter a correct username and password")

    # The fifth reaches AXES_FAILURE_LIMIT: the lockout page, with 429 Too Many Requests.
    assert log_in("bob", "not-his-password") == 429
    expect(page.get_by_role("heading", name="Too many failed logins")).to_be_visible()

    # From now on even bob's right password is refused from this address.
    assert log_in("bob", PASSWORD) == 429
    expect(page.get_by_role("heading", name="Too many failed logins")).to_be_visible()

    # The lockout is keyed on username + IP: alice, in the same browser, still gets in.
    assert log_in("alice", PASSWORD) == 200
    expect(page).to_have_url(f"{studio_server}/t/acme/")
    expect(page.locator("#user-menu summary")).to_contain_text("alice")

    context.close()
