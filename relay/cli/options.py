"""Command-line flags generated from the settings, so every setting has a flag and every
flag's help names its environment variable (one source: relay/core/config.py's fields)."""

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic.fields import FieldInfo

from relay.core.config import Settings

# Read from the environment (or a file) only: a flag would put them in the process list.
SECRETS = frozenset({"stripe_api_key", "stripe_webhook_secret", "console_token"})
FLAG_NAMES = {"stripe_api_mode": "mode"}  # public flag names that differ from the field
HELP = {
    "stripe_api_mode": "v1: one call per event; v2-stream: up to 100 events per call",
    "stripe_api_key_file": "Read the Stripe key from this file",
    "batch_size": "Rows per claim",
    "poll_interval": "Seconds between polls",
    "poll_only": "No LISTEN (PgBouncer transaction mode)",
    "lease_seconds": "A claimed row's lease; another relay may take it after",
    "request_timeout": "Seconds before a Stripe call is given up (outcome unknown)",
    "max_attempts": "Attempts Stripe answered definitively before a row fails",
    "auth_probe_interval": "Seconds between key checks while sending is paused on 401/403",
    "shutdown_grace": "Seconds to finish calls in flight on SIGTERM",
    "retention_days": "prune: delete accepted/cancelled rows older than this",
    "http_host": "Webhook/metrics/console bind address",
    "http_port": "Webhook/metrics/console port",
    "relay_id": "This relay's name among replicas (default: host-pid)",
}


def env_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else f"OUTBOX_{name.upper()}"


def _click_type(annotation: Any) -> Any:
    kind = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        kind = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice(list(typing.get_args(kind)))
    return {Path: click.Path(dir_okay=False, path_type=Path)}.get(kind, kind)


def _option(name: str, info: FieldInfo) -> Callable[[Any], Any]:
    flag = FLAG_NAMES.get(name, name).replace("_", "-")
    text = HELP.get(name) or info.description or name.replace("_", " ")
    plain = info.default_factory is None and info.default not in (None, "")
    default = f"; default {info.default}" if plain else ""
    help_text = f"{text} (env {env_name(name, info)}{default})"
    if _click_type(info.annotation) is bool:
        return click.option(f"--{flag}/--no-{flag}", name, default=None, help=help_text)
    return click.option(f"--{flag}", name, type=_click_type(info.annotation), help=help_text)


def setting_options(*skip: str) -> Callable[[Any], Any]:
    """A decorator adding one flag per setting (except secrets and `skip`); a flag left out
    is None, so the environment's value (or the default) applies."""

    def decorate(command: Any) -> Any:
        fields = [
            (n, f) for n, f in Settings.model_fields.items() if n not in SECRETS and n not in skip
        ]
        for name, info in reversed(fields):
            command = _option(name, info)(command)
        return command

    return decorate


def secrets_help() -> str:
    """The env-only settings, for a command's help text."""
    names = [env_name(n, Settings.model_fields[n]) for n in sorted(SECRETS)]
    return "Secrets come from the environment only: " + ", ".join(names) + "."
