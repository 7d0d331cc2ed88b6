"""The Django app of qmail: ``INSTALLED_APPS = [..., "qmail.django"]`` registers the system
checks of :mod:`qmail.django.checks` (run by ``manage.py check`` and at ``runserver``)."""

from __future__ import annotations

from django.apps import AppConfig


class QmailConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    """qmail's app config (label ``qmail``)."""

    name = "qmail.django"
    label = "qmail"
    verbose_name = "qmail"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
