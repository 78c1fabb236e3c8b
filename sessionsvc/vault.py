"""The token vault: what the API asks for, in terms of the store and the cipher.

Views call this and nothing below it. It seals tokens before they reach the store, opens
them only when a full token is to be returned, and computes the clear-text preview.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .crypto import Cipher
from .store import IdempotencyClaim, NotFound, Record, TokenStore, format_id, parse_id


def token_preview(token: str) -> str:
    """What a list may show of a token: never enough to use it."""
    if len(token) >= 24:
        return f"{token[:8]}...{token[-4:]}"
    if len(token) >= 12:
        return f"{token[:4]}..."
    return "..."


@dataclass(frozen=True, slots=True)
class Revealed:
    """A record together with its opened token."""

    record: Record
    token: str


@dataclass(frozen=True, slots=True)
class RotationReport:
    before: dict[str, int]
    after: dict[str, int]
    resealed: int


class TokenVault:
    def __init__(self, store: TokenStore, cipher: Cipher):
        self.store = store
        self.cipher = cipher

    def _number(self, record_id: str) -> int:
        number = parse_id(record_id)
        if number is None:
            raise NotFound(record_id)
        return number

    def _open(self, record: Record) -> Revealed:
        assert record.sealed_token is not None
        token = self.cipher.open(record.sealed_token, record.id, record.user_id)
        return Revealed(record, token)

    def save(
        self, user_id: str, token: str, expires_at: int, idempotency_key: str | None = None, client: str = ""
    ) -> Record:
        """Store a token. With an idempotency key (scoped to the calling `client`), a repeat
        of the same request answers the first one's record (``replayed``) instead."""
        number = self.store.reserve_number()
        sealed = self.cipher.seal(token, format_id(number), user_id)
        claim = None
        if idempotency_key is not None:
            digests = self.cipher.request_digests(user_id, token, str(expires_at))
            claim = IdempotencyClaim(f"{client}\x00{idempotency_key}", digests)
        return self.store.create(number, user_id, sealed, token_preview(token), expires_at, claim)

    def refresh(
        self,
        record_id: str,
        token: str,
        expires_at: int,
        expected_versions: Collection[int] | None = None,
    ) -> Record:
        number = self._number(record_id)
        user_id = self.store.owner(number)
        if user_id is None:
            raise NotFound(record_id)
        sealed = self.cipher.seal(token, record_id, user_id)
        return self.store.refresh(number, user_id, sealed, token_preview(token), expires_at, expected_versions)

    def reveal(self, record_id: str) -> Revealed:
        record = self.store.get(self._number(record_id), reveal=True)
        if record is None:
            raise NotFound(record_id)
        return self._open(record)

    def current(self, user_id: str | None = None) -> Revealed | None:
        record = self.store.current(user_id, reveal=True)
        return None if record is None else self._open(record)

    def validity(self, user_id: str | None = None) -> Record | None:
        return self.store.current(user_id)

    def page(self, page: int, limit: int, user_id: str | None = None) -> tuple[int, list[Record]]:
        return self.store.page((page - 1) * limit, limit, user_id)

    def delete(self, record_id: str) -> None:
        if not self.store.delete(self._number(record_id)):
            raise NotFound(record_id)

    def clear(self, user_id: str | None = None) -> int:
        return self.store.clear(user_id)

    def count_by_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, sealed in self.store.scan():
            key_id = self.cipher.key_id_of(sealed)
            counts[key_id] = counts.get(key_id, 0) + 1
        return counts

    def rotate_keys(self) -> RotationReport:
        """Re-seal every record not under the first key; repeats until none is left."""
        before = self.count_by_key()
        resealed = 0
        for _ in range(10):
            pending = 0
            for number, user_id, sealed in self.store.scan():
                if not self.cipher.needs_rotation(sealed):
                    continue
                pending += 1
                record_id = format_id(number)
                token = self.cipher.open(sealed, record_id, user_id)
                if self.store.reseal(number, sealed, self.cipher.seal(token, record_id, user_id)):
                    resealed += 1
            if pending == 0:
                break
        return RotationReport(before=before, after=self.count_by_key(), resealed=resealed)
