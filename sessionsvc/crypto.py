"""Encryption at rest: the only module that touches key material and ciphertext.

Tokens are sealed with AES-256-GCM. Each sealed blob is::

    <key id> b":" <12-byte random nonce> <ciphertext + 16-byte tag>

The associated data binds a blob to its record id and user id, so a blob copied to
another record (or a record whose user was altered) fails to open. Several keys can be
configured: the first seals, all open, so keys rotate without downtime.

A key is written ``<key id>:<url-safe base64 of 32 random bytes>``; the key id is 1-16
of ``a-z 0-9 _ -``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ID_PATTERN = re.compile(r"[a-z0-9_-]{1,16}\Z")
NONCE_BYTES = 12
FINGERPRINT_CHARS = 16


class KeyFormatError(ValueError):
    """An encryption key is malformed; the message never contains key material."""


class DecryptionError(Exception):
    """A blob could not be opened: tampered, moved to another record, or its key is gone.

    Carries the record id and the key id named in the blob (never key material, never
    ciphertext) for the log line.
    """

    def __init__(self, key_id: str, record_id: str):
        super().__init__(f"stored token of {record_id} could not be decrypted (key id {key_id!r})")
        self.key_id = key_id
        self.record_id = record_id


def generate_key(key_id: str = "") -> str:
    """A new key in the configured form; the id defaults to a short date-free random tag."""
    key_id = key_id or "k" + secrets.token_hex(4)
    if not KEY_ID_PATTERN.match(key_id):
        raise KeyFormatError("key id must be 1-16 of a-z 0-9 _ -")
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    return f"{key_id}:{secret}"


def parse_key(text: str) -> tuple[str, bytes]:
    key_id, sep, encoded = text.strip().partition(":")
    if not sep or not KEY_ID_PATTERN.match(key_id):
        raise KeyFormatError(
            "each encryption key must be '<key id>:<url-safe base64 of 32 bytes>', "
            "key id 1-16 of a-z 0-9 _ -"
        )
    try:
        secret = base64.urlsafe_b64decode(encoded.encode("ascii") + b"=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyFormatError(f"key {key_id!r}: secret is not url-safe base64") from None
    if len(secret) != 32:
        raise KeyFormatError(f"key {key_id!r}: secret must decode to 32 bytes, got {len(secret)}")
    return key_id, secret


class Cipher:
    """Seals and opens tokens under a keyring; the first key seals."""

    def __init__(self, keys: list[str] | tuple[str, ...]):
        if not keys:
            raise KeyFormatError("at least one encryption key is required")
        parsed = [parse_key(key) for key in keys]
        ids = [key_id for key_id, _ in parsed]
        if len(set(ids)) != len(ids):
            raise KeyFormatError("encryption key ids must be unique")
        self._aeads = {key_id: AESGCM(secret) for key_id, secret in parsed}
        self.current_key_id = ids[0]
        self.key_ids = tuple(ids)
        self._current_prefix = self.current_key_id.encode("ascii") + b":"
        fingerprint_key = hmac.new(parsed[0][1], b"sessionsvc token fingerprint", hashlib.sha256).digest()
        # Keyed once: each fingerprint copies this state (OpenSSL's HMAC_CTX_copy) instead of
        # setting up the algorithm and key again, as a one-shot hmac.digest does per call.
        self._fingerprint_mac = hmac.new(fingerprint_key, digestmod=hashlib.sha256)
        self._digest_keys = tuple(
            (key_id, hmac.new(secret, b"sessionsvc request digest", hashlib.sha256).digest())
            for key_id, secret in parsed
        )

    @staticmethod
    def _associated_data(record_id: str, user_id: str) -> bytes:
        return f"{record_id}\x00{user_id}".encode("ascii")

    def seal(self, token: str, record_id: str, user_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self.current_key_id].encrypt(
            nonce, token.encode("ascii"), self._associated_data(record_id, user_id)
        )
        return self._current_prefix + nonce + sealed

    def open(self, blob: bytes, record_id: str, user_id: str) -> str:
        key_id = self.key_id_of(blob)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise DecryptionError(key_id, record_id)
        body = blob[len(key_id) + 1 :]
        try:
            plain = aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], self._associated_data(record_id, user_id))
        except (InvalidTag, ValueError):
            raise DecryptionError(key_id, record_id) from None
        return plain.decode("ascii")

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        key_id, sep, _ = blob.partition(b":")
        text = key_id.decode("ascii", "replace")
        return text if sep and KEY_ID_PATTERN.match(text) else "?"

    def needs_rotation(self, blob: bytes) -> bool:
        return not blob.startswith(self._current_prefix)

    def fingerprint(self, token: str) -> str:
        """A keyed, truncated hash that ties log lines to a token without revealing it."""
        mac = self._fingerprint_mac.copy()
        mac.update(token.encode("ascii"))
        return mac.hexdigest()[:FINGERPRINT_CHARS]

    def request_digests(self, *fields: str) -> tuple[str, ...]:
        """Keyed digests of a request's fields, one per key, the current key's first.

        An idempotency record stores the first; comparing against all of them keeps a
        retry recognisable across a key rotation. Keyed, so a stored digest tells whoever
        reads Redis nothing about a token, however short.
        """
        message = "\x00".join(fields).encode("utf-8")
        return tuple(
            f"{key_id}:{hmac.digest(key, message, 'sha256').hex()}" for key_id, key in self._digest_keys
        )
