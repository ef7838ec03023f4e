"""Operator admin: register a model folder on the server as a base model for every team (or one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from training_app import services
from training_app.engine.inspection import UnsafeModel, inspect_model
from training_app.models import BaseModel


class BaseModelForm(forms.ModelForm):
    class Meta:
        model = BaseModel
        fields = ("name", "team", "path", "description")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("path"):
            folder = Path(data["path"])
            if not folder.is_dir():
                raise ValidationError({"path": f"{folder} is not a folder on this server."})
            try:
                inspect_model(folder)
            except (UnsafeModel, OSError, ValueError) as error:
                raise ValidationError({"path": str(error)}) from error
        return data


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    form = BaseModelForm
    list_display = ("name", "team", "source", "architecture", "parameter_count", "context_length")
    readonly_fields = ("architecture", "parameter_count", "context_length", "vocab_size", "license", "details")

    def save_model(self, request: HttpRequest, obj: BaseModel, form: Any, change: bool) -> None:
        """Inspect the folder (safetensors only, no custom code) and record what it holds."""
        model = services.register_model_folder(
            path=Path(obj.path), name=obj.name, source=BaseModel.Source.SERVER_PATH, team=obj.team, actor=request.user
        )
        obj.pk = model.pk
