"""A JSON field that keeps what its author wrote, key order included.

PostgreSQL stores Django's ``JSONField`` as ``jsonb``, which sorts an object's keys (shorter keys first): a tool's
``{"type": …, "properties": {"title": …, "date": …}, "required": …}`` came back as ``{"type": …, "required": …,
"properties": {"date": …, "title": …}}``. A model is shown a tool's schema as text, and a model fine-tuned on tool
calls learned the schemas in their authors' order: on PostgreSQL it was shown another text than on SQLite, and
than in its training rows (the obedient test model then wrote a broken call). Kept as text, the schema reads the
same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class AuthoredJSONField(models.TextField):
    """JSON stored as text (``json.dumps`` of the value), read back with its keys in the order they were written.
    For values that are shown, not queried: it has none of ``JSONField``'s lookups."""

    # What django-stubs types the attribute as (as for JSONField): any JSON value, not the text it is stored as.
    _pyi_private_set_type: Any
    _pyi_private_get_type: Any

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        return None if value is None else json.loads(value)

    def to_python(self, value: Any) -> Any:
        return value

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)

    def value_to_string(self, obj: models.Model) -> Any:
        # The value itself, as JSONField gives it to the serializers (``dumpdata`` writes it as JSON, in order).
        return self.value_from_object(obj)

    def formfield(
        self,
        form_class: type[forms.Field] | None = None,
        choices_form_class: type[forms.ChoiceField] | None = None,
        **kwargs: Any,
    ) -> forms.Field | None:
        form_class = form_class or forms.JSONField
        return super().formfield(form_class=form_class, choices_form_class=choices_form_class, **kwargs)
