"""The simplest app a user could write for the same endpoints: plain Flask + redis-py, one
plain Redis command per request, Flask's defaults, no access log.

It is a cost reference, not a store: each endpoint issues the one command closest to what
the service answers, against records `bench/run.py` seeds for it (`seed_naive` there), and the
endpoints do not keep each other's structures up to date (that would take a second
command). Under the prefix `P` (SESSIONSVC_KEY_PREFIX):

- ``P:r:<n>``: hash, one record: ``user_id``, ``token`` (as it came, not encrypted),
  ``expires_at`` and ``saved_at`` (unix seconds);
- ``P:recent``: sorted set of the records' summaries as JSON, scored by record number;
- ``P:current``: hash, the newest record with its ``id``.

| endpoint | the one command | what it leaves out against the service |
|---|---|---|
| GET /<id> | ``HGETALL P:r:<n>`` | reveal count, ETag, owner checks |
| GET /current | ``HGETALL P:current`` | the newest *live* record: a stale one is answered as it is |
| GET /validity | ``HGET P:current expires_at`` | as current |
| GET list | ``ZREVRANGE P:recent <offset> <offset + limit - 1>`` | the total (ZCARD would be a second command), Link |
| POST | ``HSET P:r:<random id> ...`` | indexing (the new record is not listed or current), numbering: a random id |
| PUT /<id> | ``HSET P:r:<n> token expires_at saved_at`` | the existence and owner checks; the answer has no user_id |

No validation beyond what a missing key or a bad timestamp raises (a 500), no
encryption, no error handling, no security headers, no metrics, no audit line. `bench/run.py`
serves it with `bench/naive_gunicorn.conf.py`: the service's `gunicorn.conf.py` without its
logging configuration, so without an access log.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime

import redis
from flask import Flask, request

PREFIX = "/api/v1/session-storage"

client = redis.Redis.from_url(os.environ["SESSIONSVC_REDIS_URL"])
KEY = os.environ.get("SESSIONSVC_KEY_PREFIX", "bench_naive")

app = Flask(__name__)


def iso(seconds: int | bytes | str) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def preview(token: str) -> str:
    return f"{token[:8]}...{token[-4:]}"


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.get(PREFIX)
def page():
    page, limit = int(request.args.get("page", 1)), int(request.args.get("limit", 20))
    members = client.zrevrange(f"{KEY}:recent", (page - 1) * limit, page * limit - 1)
    now = time.time()
    data = []
    for member in members:
        record = json.loads(member)
        record["is_valid"] = record["expires_at"] > now
        record["expires_at"] = iso(record["expires_at"])
        record["saved_at"] = iso(record["saved_at"])
        data.append(record)
    return {"data": data, "pagination": {"page": page, "limit": limit}}


@app.post(PREFIX)
def create():
    body = request.get_json()
    record_id = f"store_{uuid.uuid4().hex}"
    expires = int(datetime.fromisoformat(body["expires_at"]).timestamp())
    now = int(time.time())
    client.hset(f"{KEY}:r:{record_id[6:]}", mapping={"user_id": body["user_id"], "token": body["token"],
                                                     "expires_at": expires, "saved_at": now})
    return {"id": record_id, "user_id": body["user_id"], "token_preview": preview(body["token"]),
            "expires_at": iso(expires), "is_valid": expires > now, "saved_at": iso(now), "created_at": iso(now)}, 201


@app.get(PREFIX + "/current")
def current():
    record = client.hgetall(f"{KEY}:current")
    if not record:
        return {"message": "none"}, 404
    expires = int(record[b"expires_at"])
    return {"token": record[b"token"].decode(), "expires_at": iso(expires), "is_valid": expires > time.time()}


@app.get(PREFIX + "/validity")
def validity():
    expires = client.hget(f"{KEY}:current", "expires_at")
    if expires is None:
        return {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
    remaining = max(0, int(expires) - int(time.time()))
    return {"is_valid": remaining > 0, "expires_at": iso(expires), "seconds_remaining": remaining}


@app.get(PREFIX + "/<record_id>")
def get(record_id: str):
    record = client.hgetall(f"{KEY}:r:{int(record_id[6:])}")
    if not record:
        return {"message": "none"}, 404
    expires = int(record[b"expires_at"])
    return {"id": record_id, "user_id": record[b"user_id"].decode(), "token": record[b"token"].decode(),
            "expires_at": iso(expires), "is_valid": expires > time.time(), "saved_at": iso(record[b"saved_at"])}


@app.put(PREFIX + "/<record_id>")
def refresh(record_id: str):
    body = request.get_json()
    expires = int(datetime.fromisoformat(body["expires_at"]).timestamp())
    now = int(time.time())
    fields = {"token": body["token"], "expires_at": expires, "saved_at": now}
    client.hset(f"{KEY}:r:{int(record_id[6:])}", mapping=fields)
    return {"id": record_id, "token_preview": preview(body["token"]), "expires_at": iso(expires),
            "is_valid": expires > now, "saved_at": iso(now)}
