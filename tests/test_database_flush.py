"""The flush after each ``transactional_db`` test (``delete_rows_of_used_tables`` in tests/conftest.py): what a test
committed is gone for the next one, and the content types and permissions stay as the migrations made them."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command

from accounts.models import Membership, Team
from tests.factories import UserFactory

WRITTEN = (Team, Membership, UserFactory._meta.model)  # what ``owner`` and the user below commit

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_flush_empties_every_table_a_test_wrote_and_keeps_content_types_and_permissions(owner: Any) -> None:
    team_type = ContentType.objects.get_for_model(Team)
    permissions = set(Permission.objects.values_list("pk", "codename"))
    UserFactory(username="dora")
    assert all(model._base_manager.exists() for model in WRITTEN)

    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)

    assert [model.__name__ for model in WRITTEN if model._base_manager.exists()] == []
    assert ContentType.objects.get_for_model(Team) == team_type
    assert set(Permission.objects.values_list("pk", "codename")) == permissions
