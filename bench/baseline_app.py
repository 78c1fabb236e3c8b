"""The ceiling the service is measured against: plain Flask + redis-py doing the service's
Redis work for each request and nothing else.

Same Lua scripts as the store, with the same keys and arguments (`bench/same_work.py`),
one script call per request, ids reserved in the same blocks, the same per-process owner
cache in front of PUT's owner lookup, and the same response bodies. No validation, no
encryption (the token is stored as it came), no error handling, no security headers,
Flask's stock JSON. `bench/run.py` serves it under the service's own gunicorn settings:
`gunicorn -c gunicorn.conf.py bench.baseline_app:app`.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

import redis
from flask import Flask, jsonify, request

from bench.same_work import ID_BLOCK, OWNER_CACHE_SIZE, PRUNE_BATCH, SameWork, format_id

PREFIX = "/api/v1/session-storage"

work = SameWork(
    # The pool the service's would be: gunicorn.conf.py sizes it to a gevent worker's concurrency.
    redis.Redis.from_url(os.environ["SESSIONSVC_REDIS_URL"], socket_timeout=1.0,
                         max_connections=int(os.environ.get("SESSIONSVC_REDIS_MAX_CONNECTIONS", "50"))),
    os.environ.get("SESSIONSVC_KEY_PREFIX", "sessionsvc"),
    int(os.environ.get("SESSIONSVC_RETENTION_SECONDS", "86400")),
)
client, scripts, keys, ROOT = work.client, work.scripts, work.keys, work.root
owners: dict[int, str] = {}
id_lock = threading.Lock()
id_block = [0, 0]  # next number, end of block

app = Flask(__name__)
app.json.sort_keys = False


def iso(seconds: int | bytes) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def summary(now_ms: int, fields: list) -> dict:
    number, user, token_preview, expires, saved = fields[:5]
    owners[int(number)] = user.decode()
    if len(owners) > OWNER_CACHE_SIZE:
        owners.clear()
    return {
        "id": format_id(int(number)),
        "user_id": user.decode(),
        "token_preview": token_preview.decode(),
        "expires_at": iso(expires),
        "is_valid": int(expires) * 1000 > now_ms,
        "saved_at": iso(saved),
    }


def reserve_number() -> int:
    with id_lock:
        if id_block[0] == 0 or id_block[0] >= id_block[1]:
            end = client.incrby(ROOT + ":ids", ID_BLOCK)
            id_block[0], id_block[1] = end - ID_BLOCK + 1, end + 1
        id_block[0] += 1
        return id_block[0] - 1


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.get(PREFIX)
def page():
    page, limit = int(request.args.get("page", 1)), int(request.args.get("limit", 20))
    reply = scripts["page"](keys=keys, args=[ROOT, "", (page - 1) * limit, limit, PRUNE_BATCH])
    now_ms = reply[1]
    data = [summary(now_ms, fields) for fields in reply[4:]]
    return jsonify(data=data, pagination={"page": page, "limit": limit, "total": reply[2]})


@app.post(PREFIX)
def create():
    body = request.get_json()
    number = reserve_number()
    expires = int(datetime.fromisoformat(body["expires_at"]).timestamp())
    _, now_ms, fields = scripts["create"](keys=keys, args=work.create_args(number, body["user_id"], body["token"],
                                                                          expires))
    result = summary(now_ms, fields)
    result["created_at"] = iso(fields[5])
    return result, 201, {"Location": f"{PREFIX}/{result['id']}"}


@app.get(PREFIX + "/current")
def current():
    reply = scripts["current"](keys=keys, args=[ROOT, "", PRUNE_BATCH, "1"])
    if len(reply) == 3:
        return {"message": "none"}, 404
    expires = int(reply[3][3])
    return {"token": reply[4].decode(), "expires_at": iso(expires), "is_valid": expires * 1000 > reply[1]}


@app.get(PREFIX + "/validity")
def validity():
    reply = scripts["current"](keys=keys, args=[ROOT, "", PRUNE_BATCH, "0"])
    if len(reply) == 3:
        return {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
    expires = int(reply[3][3])
    remaining = max(0, (expires * 1000 - reply[1]) // 1000)
    return {"is_valid": remaining > 0, "expires_at": iso(expires), "seconds_remaining": remaining}


@app.get(PREFIX + "/<record_id>")
def get(record_id: str):
    reply = scripts["get"](keys=keys, args=[ROOT, int(record_id[6:]), "1"])
    if len(reply) == 1:
        return {"message": "none"}, 404
    now_ms, fields, token = reply
    result = summary(now_ms, fields)
    return {
        "id": result["id"],
        "user_id": result["user_id"],
        "token": token.decode(),
        "expires_at": result["expires_at"],
        "is_valid": result["is_valid"],
        "saved_at": result["saved_at"],
    }, 200, {"ETag": f'"{int(fields[6])}"'}


@app.put(PREFIX + "/<record_id>")
def refresh(record_id: str):
    body = request.get_json()
    number = int(record_id[6:])
    user = owners.get(number)
    if user is None:
        user = scripts["owner"](keys=keys, args=[ROOT, number]).decode()
    token = body["token"]
    expires = int(datetime.fromisoformat(body["expires_at"]).timestamp())
    reply = scripts["refresh"](
        keys=keys, args=work.refresh_args(number, user, token, expires)
    )
    result = summary(reply[1], reply[2])
    return result, 200, {"ETag": f'"{int(reply[2][6])}"'}
