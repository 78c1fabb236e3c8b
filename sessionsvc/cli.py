"""Operator commands: `flask --app wsgi <command>`. Each prints what it found or did and
exits non-zero when it failed (or, for check-index, when the index needs repair)."""

from __future__ import annotations

import secrets

import click
from flask import Flask, current_app

from .crypto import KeyFormatError, generate_key
from .store import StoreUnavailable
from .vault import TokenVault


def _vault() -> TokenVault:
    return current_app.extensions["sessionsvc"]


def _unavailable(error: StoreUnavailable, consequence: str) -> click.ClickException:
    return click.ClickException(f"Redis unavailable ({error.kind}); {consequence}")


def register(app: Flask) -> None:
    @app.cli.command("generate-key")
    @click.option("--key-id", default="", help="Key id (1-16 of a-z 0-9 _ -); random when omitted.")
    def generate_key_command(key_id: str) -> None:
        """Print a new encryption key for SESSIONSVC_ENCRYPTION_KEYS."""
        try:
            click.echo(generate_key(key_id))
        except KeyFormatError as error:
            raise click.ClickException(str(error)) from None

    @app.cli.command("generate-api-key")
    def generate_api_key_command() -> None:
        """Print a new bearer key for SESSIONSVC_API_KEYS or SESSIONSVC_METRICS_KEYS
        (32 random bytes, URL-safe base64: 43 characters)."""
        click.echo(secrets.token_urlsafe(32))

    @app.cli.command("rotate-keys")
    def rotate_keys_command() -> None:
        """Re-encrypt every stored record under the first configured key."""
        try:
            report = _vault().rotate_keys()
        except StoreUnavailable as error:
            raise _unavailable(error, "nothing changed") from None
        click.echo(f"encrypting key: {report.key_id}")
        for key_id in sorted(set(report.before) | set(report.after) | set(report.key_ids)):
            before, after = report.before.get(key_id, 0), report.after.get(key_id, 0)
            click.echo(f"  {key_id}: {before} records before, {after} after")
        click.echo(f"re-encrypted {report.resealed} records")
        if report.unreadable:
            click.echo(
                f"{len(report.unreadable)} records do not decrypt with any configured key and were left "
                f"as they are: {', '.join(report.unreadable)}"
            )
        leftover = sum(count for key_id, count in report.after.items() if key_id != report.key_id)
        leftover -= len(report.unreadable)
        if leftover > 0:
            raise click.ClickException(f"{leftover} records are still under older keys; run again")
        if report.unreadable:
            raise click.ClickException("some records are unreadable; see above (no key material is shown)")

    @app.cli.command("stats")
    @click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
                  help="How many users with the most records to list.")
    def stats_command(top: int) -> None:
        """Count records: in all, per user (the top N) and per encryption key id."""
        try:
            stats = _vault().stats()
        except StoreUnavailable as error:
            raise _unavailable(error, "no statistics") from None
        click.echo(f"records: {stats.records}")
        click.echo(f"users: {len(stats.by_user)}")
        click.echo(f"top {top} users by records:")
        for user_id, count in stats.by_user.most_common(top):
            click.echo(f"  {user_id}: {count}")
        click.echo("records per key id:")
        for key_id, count in sorted(stats.by_key_id.items()):
            click.echo(f"  {key_id}: {count}")

    @app.cli.command("purge-user")
    @click.argument("user_id")
    def purge_user_command(user_id: str) -> None:
        """Delete every record of one user."""
        try:
            count = _vault().clear(user_id)
        except StoreUnavailable as error:
            raise _unavailable(error, "nothing was purged, or only part: run again") from None
        click.echo(f"purged {count} records of user {user_id}")

    @app.cli.command("reshard")
    @click.option("--to", "shards", required=True, type=click.IntRange(min=1), help="The number of shards wanted.")
    def reshard_command(shards: int) -> None:
        """Change the number of shards of the store: not supported (says why, changes nothing)."""
        configured = current_app.config["SESSIONSVC"].shards
        raise click.ClickException(
            f"changing the number of shards ({configured} to {shards}) is not supported, and nothing was changed. "
            "A record's id names its shard (its number mod S) and its token is sealed bound to that id, while a "
            "user's records all live in the shard a hash of the user id picks (mod S): with another S most "
            "users' records would have to move and take new ids, which their clients hold. To change S, start "
            "a new store (another SESSIONSVC_KEY_PREFIX) with the new SESSIONSVC_SHARDS and let clients save "
            "their tokens there; the old store's records expire."
        )

    @app.cli.command("check-index")
    @click.option("--repair", is_flag=True, help="Fix what is found instead of only reporting it.")
    def check_index_command(repair: bool) -> None:
        """Find index entries without a record, records missing from an index, and records
        without a TTL (exit status 1 when any is found and not repaired)."""
        vault = _vault()
        try:
            report = vault.check_index(repair=repair)
            remaining = vault.check_index() if repair else report
        except StoreUnavailable as error:
            raise _unavailable(error, "check incomplete") from None
        click.echo(f"expired entries pruned (routine): {report.pruned}")
        click.echo(f"index entries without a record: {report.dangling_entries}")
        click.echo(f"records missing from an index: {report.unindexed_records}")
        click.echo(f"records without a TTL: {report.records_without_ttl}")
        click.echo(f"records of an abandoned generation: {report.stale_records}")
        if repair:
            click.echo(f"repaired {report.problems} problems; {remaining.problems} remain")
        if remaining.problems:
            hint = "" if repair else "; run with --repair to fix"
            raise click.ClickException(f"index has {remaining.problems} problems{hint}")
        click.echo("index OK")
