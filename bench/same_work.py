"""The service's Redis work without the service: the store's own Lua scripts, run with the
keys and arguments the store runs them with. The baseline the service is measured against
(`bench/baseline_app.py`) serves requests with it, `bench/run.py` loads the baseline's
records with it, and `bench/capacity.py` measures Redis's own cost per script with it.

Everything else in bench/ uses the service as its users do (HTTP, or `create_app` and its
vault); this module alone reaches below that, through the store's public seam for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The baseline must do exactly the service's Redis work, so it runs the store's scripts
# with the store's batch sizes: `script_source` and these constants are public for that.
from sessionsvc.store import ID_BLOCK, OWNER_CACHE_SIZE, PRUNE_BATCH, format_id, script_source

__all__ = ["ID_BLOCK", "OWNER_CACHE_SIZE", "PRUNE_BATCH", "SameWork", "format_id", "preview"]

# The event stream's default bound (SESSIONSVC_EVENTS_MAXLEN): the same XADD as the service.
EVENTS_MAXLEN = 100_000

SCRIPTS = ("create", "refresh", "get", "owner", "current", "page")


def preview(token: str) -> str:
    """The service's preview of a token of 24 characters or more (every bench token)."""
    return f"{token[:8]}...{token[-4:]}"


class SameWork:
    """One store's scripts (under `key_prefix`) registered on a redis-py client."""

    def __init__(self, client: Any, key_prefix: str, retention_seconds: int = 86400):
        self.client = client
        self.root = "{" + key_prefix + "}"
        self.keys = [self.root + ":gen", self.root + ":slot-guard"]  # what every store script declares
        self.retention_ms = retention_seconds * 1000
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    def create_args(self, number: int, user_id: str, token: str, expires_at: int) -> list:
        """The create script's ARGV for a record without an idempotency key (no per-user
        limit, the default event stream bound)."""
        return [self.root, number, user_id, token, preview(token), expires_at, self.retention_ms, PRUNE_BATCH,
                "", "", 1, 0, "evict_oldest", EVENTS_MAXLEN]

    def refresh_args(self, number: int, user_id: str, token: str, expires_at: int) -> list:
        """The refresh script's ARGV for an unconditional refresh."""
        return [self.root, number, user_id, token, preview(token), expires_at, self.retention_ms, PRUNE_BATCH, "*",
                EVENTS_MAXLEN]

    def load(self, entries: Sequence[tuple[str, str, int]], batch: int = 1000) -> None:
        """(user id, token, expires_at) records, tokens stored as they are given, with
        numbers from the store's counter: the create script, pipelined in batches."""
        first = self.client.incrby(self.root + ":ids", len(entries)) - len(entries) + 1
        with self.client.pipeline(transaction=False) as pipe:
            for index, (user_id, token, expires_at) in enumerate(entries):
                self.scripts["create"](keys=self.keys, args=self.create_args(first + index, user_id, token, expires_at),
                                       client=pipe)
                if (index + 1) % batch == 0:
                    pipe.execute()
            pipe.execute()
