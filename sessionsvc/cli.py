"""Operator commands: `flask --app wsgi <command>`."""

from __future__ import annotations

import click
from flask import Flask, current_app

from .crypto import KeyFormatError, generate_key
from .store import StoreUnavailable
from .vault import TokenVault


def _vault() -> TokenVault:
    return current_app.extensions["sessionsvc"]


def register(app: Flask) -> None:
    @app.cli.command("generate-key")
    @click.option("--key-id", default="", help="Key id (1-16 of a-z 0-9 _ -); random when omitted.")
    def generate_key_command(key_id: str) -> None:
        """Print a new encryption key for SESSIONSVC_ENCRYPTION_KEYS."""
        try:
            click.echo(generate_key(key_id))
        except KeyFormatError as error:
            raise click.ClickException(str(error)) from None

    @app.cli.command("rotate-keys")
    def rotate_keys_command() -> None:
        """Re-encrypt every stored record under the first configured key."""
        vault = _vault()
        try:
            report = vault.rotate_keys()
        except StoreUnavailable as error:
            raise click.ClickException(f"Redis unavailable ({error.kind}); nothing changed") from None
        click.echo(f"encrypting key: {vault.cipher.current_key_id}")
        for key_id in sorted(set(report.before) | set(report.after) | set(vault.cipher.key_ids)):
            before, after = report.before.get(key_id, 0), report.after.get(key_id, 0)
            click.echo(f"  {key_id}: {before} records before, {after} after")
        click.echo(f"re-encrypted {report.resealed} records")
        if report.unreadable:
            click.echo(
                f"{len(report.unreadable)} records do not decrypt with any configured key and were left "
                f"as they are: {', '.join(report.unreadable)}"
            )
        leftover = sum(count for key_id, count in report.after.items() if key_id != vault.cipher.current_key_id)
        leftover -= len(report.unreadable)
        if leftover > 0:
            raise click.ClickException(f"{leftover} records are still under older keys; run again")
        if report.unreadable:
            raise click.ClickException("some records are unreadable; see above (no key material is shown)")
