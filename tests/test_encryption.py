"""Encryption at rest: nothing in Redis reveals a token; blobs are bound to their record."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from conftest import API, TEST_KEYS, future, summed_hash
from sessionsvc.config import Config
from sessionsvc.crypto import Cipher, DecryptionError, KeyFormatError, generate_key, parse_key

CANARY = "eyJhbGciOiJIUzI1NiJ9.CANARY-plaintext-must-never-be-stored.sig"


def everything_in_redis(raw) -> bytes:
    dump = []
    for key in raw.keys("*"):
        dump.append(key)
        kind = raw.type(key)
        if kind == b"hash":
            for field, value in raw.hgetall(key).items():
                dump += [field, value]
        elif kind == b"zset":
            dump += [member for member, _ in raw.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            dump += list(raw.smembers(key))
        elif kind == b"string":
            dump.append(raw.get(key))
    return b"\n".join(dump)


def test_plaintext_token_appears_nowhere_in_redis(client, save, raw):
    created = save(token=CANARY)
    client.put(f"{API}/{created['id']}", json={"token": CANARY + "2", "expires_at": created["expires_at"]})
    save(token=CANARY + "3")
    stored = everything_in_redis(raw)
    assert b"CANARY" not in stored
    assert b"eyJhbGci...".replace(b"...", b"") in stored  # the preview is the only clear text


def test_every_key_carries_the_store_hash_tag(save, raw, shards):
    save()
    keys = raw.keys("*")
    # One shard: the prefix's own tag; more: a tag per shard, each starting with the prefix
    # (`{sessionsvc/3}`), and the store-wide keys under the prefix's own tag.
    tags = (b"{sessionsvc}:",) if shards == 1 else (b"{sessionsvc}:", b"{sessionsvc/")
    assert keys and all(key.startswith(tags) for key in keys)


def test_a_ciphertext_copied_to_another_record_does_not_decrypt(client, save, raw, key_of):
    first, second = save(user_id="alice", token=CANARY), save(user_id="alice", token="other-token-value-123456")
    blob = raw.hget(key_of(first["id"]), "t")
    raw.hset(key_of(second["id"]), "t", blob)
    response = client.get(f"{API}/{second['id']}")
    assert response.status_code == 500
    assert response.is_json and set(response.json) == {"code", "status", "message"}
    body = response.get_data(as_text=True)
    assert "CANARY" not in body and "test:" not in body
    assert client.get(f"{API}/{first['id']}").json["token"] == CANARY


def test_changing_the_stored_user_breaks_decryption(client, save, raw, key_of):
    created = save(user_id="alice", token=CANARY)
    raw.hset(key_of(created["id"]), "u", "mallory")
    assert client.get(f"{API}/{created['id']}").status_code == 500


def test_a_tampered_ciphertext_fails_closed(client, save, raw, key_of):
    created = save(token=CANARY)
    blob = bytearray(raw.hget(key_of(created["id"]), "t"))
    blob[-1] ^= 1
    raw.hset(key_of(created["id"]), "t", bytes(blob))
    assert client.get(f"{API}/{created['id']}").status_code == 500
    assert client.get(f"{API}/current").status_code == 500
    assert client.get(API).status_code == 200  # listing never opens tokens


def test_old_keys_still_decrypt_and_rotation_moves_every_record_to_the_new_key(backend, make_app, raw, key_of):
    old_app = make_app(encryption_keys=TEST_KEYS)
    old_client = old_app.test_client()
    ids = []
    for index in range(7):
        response = old_client.post(API, json={"user_id": f"u{index}", "token": f"{CANARY}{index}",
                                              "expires_at": future()})
        ids.append(response.json["id"])

    new_key = generate_key("new")
    rotated_app = make_app(encryption_keys=(new_key,) + TEST_KEYS)
    rotated = rotated_app.test_client()
    assert rotated.get(f"{API}/{ids[0]}").json["token"] == f"{CANARY}0"

    result = rotated_app.test_cli_runner().invoke(args=["rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "new: 0 records before, 7 after" in result.output
    assert "test: 7 records before, 0 after" in result.output

    blobs = [raw.hget(key_of(record_id), "t") for record_id in ids]
    assert all(blob.startswith(b"new:") for blob in blobs)
    new_only = make_app(encryption_keys=(new_key,)).test_client()
    assert [new_only.get(f"{API}/{record_id}").json["token"] for record_id in ids] == [
        f"{CANARY}{index}" for index in range(7)
    ]


def test_generate_key_prints_a_usable_key(app):
    result = app.test_cli_runner().invoke(args=["generate-key", "--key-id", "prod-2026"])
    assert result.exit_code == 0
    key = result.output.strip()
    key_id, secret = parse_key(key)
    assert key_id == "prod-2026" and len(secret) == 32
    cipher = Cipher([key])
    assert cipher.open(cipher.seal("tok", "store_001", "u"), "store_001", "u") == "tok"


@pytest.mark.parametrize("bad", ["nocolon", "UPPER:" + "A" * 43, "k:short", "k:!!!!", ":" + "A" * 43,
                                 "waytoolongkeyid-xx:" + "A" * 43])
def test_malformed_keys_are_refused_without_echoing_them(bad):
    with pytest.raises(KeyFormatError) as raised:
        Cipher([bad])
    secret_part = bad.partition(":")[2]
    assert not secret_part or secret_part not in str(raised.value)


@pytest.mark.parametrize("token", ["a", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "x" * 800, "y" * 8192])
def test_fingerprint_is_hmac_sha256_of_the_token_under_a_key_derived_from_the_first_key(token):
    """What the audit line carries, as SECURITY.md defines it: the same for every call,
    whatever came before (the keyed state is copied, never updated in place)."""
    first, second = generate_key("one"), generate_key("two")
    cipher = Cipher([first, second])
    derived = hmac.new(parse_key(first)[1], b"sessionsvc token fingerprint", hashlib.sha256).digest()
    expected = hmac.new(derived, token.encode(), hashlib.sha256).hexdigest()[:16]
    assert cipher.fingerprint(token) == expected
    cipher.fingerprint("something else")
    assert cipher.fingerprint(token) == expected
    assert Cipher([second, first]).fingerprint(token) != expected


def test_each_seal_uses_a_fresh_nonce():
    cipher = Cipher(TEST_KEYS)
    assert cipher.seal("t", "store_001", "u") != cipher.seal("t", "store_001", "u")
    with pytest.raises(DecryptionError):
        cipher.open(cipher.seal("t", "store_001", "u"), "store_002", "u")


def test_production_refuses_to_start_without_keys():
    from sessionsvc.config import ConfigError

    with pytest.raises(ConfigError, match="SESSIONSVC_ENCRYPTION_KEYS"):
        Config(env="production", redis_url="redis://127.0.0.1:1/0", allow_public=True).check()


# --- nonce budget: encryptions counted per key id --------------------------------------------


def metric_value(body: str, name: str, **labels: str) -> float | None:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in body.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return None


def test_every_seal_is_counted_per_key_id_in_redis_and_exported(backend, make_app, raw):
    app = make_app()
    client = app.test_client()
    first = client.post(API, json={"user_id": "alice", "token": CANARY, "expires_at": future()}).json["id"]
    client.post(API, json={"user_id": "bob", "token": CANARY + "b", "expires_at": future()})
    client.put(f"{API}/{first}", json={"token": CANARY + "2", "expires_at": future()})
    assert summed_hash(raw, ":seals") == {b"test": 3}

    rotated = make_app(encryption_keys=(generate_key("new"), *TEST_KEYS))
    assert rotated.test_cli_runner().invoke(args=["rotate-keys"]).exit_code == 0
    assert summed_hash(raw, ":seals") == {b"test": 3, b"new": 2}
    body = rotated.test_client().get("/metrics").get_data(as_text=True)
    assert metric_value(body, "sessionsvc_encryptions_total", key_id="new") == 2
    assert metric_value(body, "sessionsvc_encryptions_total", key_id="test") == 3


def test_readiness_and_the_log_ask_for_a_new_key_past_the_configured_budget(backend, make_app, raw, caplog):
    app = make_app(rotate_key_after=2)
    client = app.test_client()
    for user in ("u1", "u2"):
        client.post(API, json={"user_id": user, "token": CANARY, "expires_at": future()})
    assert client.get("/readyz").json["encryption_key"] == "ok"

    past = make_app(rotate_key_after=2)  # a new process: no readiness answer reused yet
    past.test_client().post(API, json={"user_id": "u3", "token": CANARY, "expires_at": future()})
    with caplog.at_level("WARNING", logger="sessionsvc"):
        ready = past.test_client().get("/readyz")
    assert ready.status_code == 200  # still serving: rotating is the operator's next step
    assert ready.json == {"status": "ok", "redis": "ok", "scripts": "loaded", "encryption_key": "rotate"}
    warnings = [record for record in caplog.records if getattr(record, "event", "") == "rotate_encryption_key"]
    assert warnings and warnings[0].key_id == "test" and warnings[0].encryptions == 3
    assert CANARY not in caplog.text
