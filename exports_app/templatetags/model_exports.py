"""``{% load model_exports %}{% export_section version %}``: a model version's exports on its page. The training app's
template includes it without importing the exports app (the apps stack in layers, exports on top)."""

from __future__ import annotations

from typing import Any

from django import template

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from exports_app import services
from exports_app.forms import ExportForm
from training_app.models import ModelVersion

register = template.Library()


def section_context(access: TeamAccess, version: ModelVersion) -> dict[str, Any]:
    exports = list(services.exports_of(access, version)[:20])
    return {
        "access": access,
        "version": version,
        "exports": exports,
        "active": any(export.is_active for export in exports),
        "can_export": services.can_export(access, version),
        "can_approve": access.can(Perm.APPROVE_EXPORTS),
        "approval_required": services.approval_required(access.team),
        "form": ExportForm(),
    }


@register.inclusion_tag("exports/_section.html", takes_context=True)
def export_section(context: template.Context, version: ModelVersion) -> dict[str, Any]:
    """The version's exports (format, status, progress, size, SHA-256, download) and, for those who may, the form."""
    access = context.get("access")
    if access is None:
        return {"exports": [], "version": version}
    return {**section_context(access, version), "csrf_token": context.get("csrf_token")}
