"""Tenant scoping: every team-owned row is read through a queryset that starts from the team.

``TeamOwnedModel.objects`` refuses to run a query until ``for_team(team)`` (or, for operators'
maintenance code, ``unscoped()``) has been called, so a forgotten team filter is an error in tests
rather than a leak in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Self

from django.db import models

if TYPE_CHECKING:
    from accounts.models import Team


class TeamScopeError(RuntimeError):
    """A team-owned model was queried without naming the team."""


class TeamScopedQuerySet(models.QuerySet[Any]):
    _team_scoped = False

    def for_team(self, team: Team) -> Self:
        """The rows owned by ``team``; the only way views and services read tenant data."""
        queryset = self.filter(team=team)
        queryset._team_scoped = True
        return queryset

    def unscoped(self) -> Self:
        """Every team's rows: for operator tooling (admin, reaper, migrations), never for tenant requests."""
        queryset = self._clone()
        queryset._team_scoped = True
        return queryset

    def _clone(self) -> Self:
        clone: Self = super()._clone()  # type: ignore[misc]  # Django internal, absent from the stubs
        clone._team_scoped = self._team_scoped
        return clone

    def _require_scope(self) -> None:
        if not self._team_scoped:
            raise TeamScopeError(f"{self.model.__name__} is team-owned: start the query with .for_team(team).")

    def _require_scope_of(self, *others: Any) -> None:
        """A combined query (``|``, ``&``, ``^``, ``union``…) is scoped only if every part is."""
        self._require_scope()
        for other in others:
            if isinstance(other, TeamScopedQuerySet):
                other._require_scope()

    # Every way Django reads rows goes through one of these.
    def _fetch_all(self) -> None:
        self._require_scope()
        super()._fetch_all()

    def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
        self._require_scope()
        return super().iterator(chunk_size=chunk_size)

    def aiterator(self, chunk_size: int = 2000) -> AsyncIterator[Any]:
        self._require_scope()
        return super().aiterator(chunk_size=chunk_size)

    def __or__(self, other: Any) -> Self:
        self._require_scope_of(other)
        return super().__or__(other)

    def __and__(self, other: Any) -> Self:
        self._require_scope_of(other)
        return super().__and__(other)

    def __xor__(self, other: Any) -> Self:
        self._require_scope_of(other)
        return super().__xor__(other)  # type: ignore[misc]  # QuerySet.__xor__ (Django 4.2+) is missing from the stubs

    def _combinator_query(self, combinator: str, *other_qs: Any, all: bool = False) -> Self:
        self._require_scope_of(*other_qs)
        return super()._combinator_query(combinator, *other_qs, all=all)  # type: ignore[misc]

    def count(self) -> int:
        self._require_scope()
        return super().count()

    def exists(self) -> bool:
        self._require_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._require_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._require_scope()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._require_scope()
        return super().delete()


class TeamOwnedModel(models.Model):
    """Base of every tenant-owned model: a non-null team and a manager that insists on it."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        abstract = True
        # Django's own machinery (cascades, ``obj.team``-style relations) uses ``_base_manager``, a
        # plain manager, so it is unaffected by the scoping above.
