"""``manage.py check`` for qmail: every spool a qmail backend would write to must exist, be a
directory and be writable by this process.

The spools checked: ``settings.QMAIL_SPOOL`` when ``EMAIL_BACKEND`` is qmail's, the ``spool``
OPTION of every ``MAILERS`` entry whose ``BACKEND`` is qmail's, else the process default (the
``QMAIL_SPOOL`` environment variable). Messages:

- ``qmail.E001``: the spool directory does not exist.
- ``qmail.E002``: it (or its ``tmp/``, where submits are written) is not a writable directory.
- ``qmail.E003``: the setting is not a usable path (relative, padded with spaces, empty).
- ``qmail.W001``: a qmail backend is configured but no spool is, anywhere.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from django import conf
from django.core import checks

from .. import QmailError, Spool

BACKEND = "qmail.django.EmailBackend"


def _configured() -> list[tuple[str, Any]]:
    """(where, setting value) of every qmail spool setting in force."""
    settings = conf.settings
    found: list[tuple[str, Any]] = []
    mailers = getattr(settings, "MAILERS", None)
    if isinstance(mailers, dict):
        for alias, config in mailers.items():
            if isinstance(config, dict) and config.get("BACKEND") == BACKEND:
                options = config.get("OPTIONS") or {}
                found.append((f"MAILERS[{alias!r}]['OPTIONS']['spool']", options.get("spool", getattr(settings, "QMAIL_SPOOL", None))))
        return found
    # EMAIL_BACKEND is deprecated from Django 6.1 on (reading it warns): only without MAILERS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        backend = getattr(settings, "EMAIL_BACKEND", None)
    if backend == BACKEND:
        found.append(("QMAIL_SPOOL", getattr(settings, "QMAIL_SPOOL", None)))
    return found


def _directories(value: Any) -> list[str]:
    if isinstance(value, Spool):
        return [os.fspath(p) for p in value.paths]
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return text.split(os.pathsep) if isinstance(text, str) else [os.fsdecode(text)]
    return [os.fspath(p) for p in value]


def _check_dir(where: str, directory: str) -> list[checks.CheckMessage]:
    if not directory or directory.strip() != directory or not os.path.isabs(directory):
        return [checks.Error(f"{where}: spool path {directory!r} is not an absolute directory without surrounding spaces", id="qmail.E003")]
    if not os.path.exists(directory):
        return [
            checks.Error(
                f"{where}: the spool {directory} does not exist",
                hint=f"create it with `qmail-dispatcher spool init {directory}` (or fix the setting)",
                id="qmail.E001",
            )
        ]
    tmp = os.path.join(directory, "tmp")
    target = tmp if os.path.isdir(tmp) else directory
    if not os.path.isdir(directory) or not os.access(target, os.W_OK | os.X_OK):
        return [
            checks.Error(
                f"{where}: the spool {target} is not a directory this process (uid {os.geteuid()}) can write",
                hint="add the web server's user to the spool's submit group, or fix the mode (docs/spool-format.md)",
                id="qmail.E002",
            )
        ]
    return []


@checks.register(checks.Tags.compatibility)  # type: ignore[untyped-decorator,misc]
def check_spools(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The qmail spool checks (see the module docs)."""
    errors: list[checks.CheckMessage] = []
    configured = _configured()
    if not configured:
        return errors
    for where, value in configured:
        if value is None:
            env = os.environ.get("QMAIL_SPOOL")
            if not env:
                errors.append(
                    checks.Warning(
                        f"{where}: no spool is configured (nor the QMAIL_SPOOL environment variable)",
                        hint="set QMAIL_SPOOL in settings, or call qmail.set_default_spool() at startup",
                        id="qmail.W001",
                    )
                )
                continue
            where, value = "QMAIL_SPOOL (environment)", env
        try:
            directories = _directories(value)
        except (TypeError, QmailError) as e:
            errors.append(checks.Error(f"{where}: {e}", id="qmail.E003"))
            continue
        for d in directories:
            errors.extend(_check_dir(where, d))
    return errors
