"""Every input rule: a violation is a 4xx JSON error naming the field, and stores nothing."""

from __future__ import annotations

import time

import pytest

from conftest import API, future, iso

GOOD = {"user_id": "usr_9a2f31", "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig-Q3Yk"}


def assert_nothing_stored(client):
    assert client.get(API).json["pagination"]["total"] == 0


def field_errors(response) -> dict:
    return response.json["errors"]["json"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("user_id", ""),
        ("user_id", "a" * 129),
        ("user_id", "has space"),
        ("user_id", "tab\there"),
        ("user_id", "line\nbreak"),
        ("user_id", "cr\rhere"),
        ("user_id", "nul\x00here"),
        ("user_id", "caf\u00e9"),
        ("user_id", 12345),
        ("user_id", None),
        ("token", ""),
        ("token", "t" * 8193),
        ("token", "two words"),
        ("token", "line\nbreak"),
        ("token", "nul\x00byte"),
        ("token", "\u00fcnicode"),
        ("token", ["list"]),
        ("expires_at", "2030-01-01T00:00:00"),  # naive
        ("expires_at", "tomorrow"),
        ("expires_at", "2030-01-01"),
        ("expires_at", 1893456000),
        ("expires_at", None),
    ],
)
def test_post_rejects_a_bad_field_with_422_naming_it(client, field, value):
    body = {**GOOD, "expires_at": future(), field: value}
    response = client.post(API, json=body)
    assert response.status_code == 422
    assert response.json["code"] == 422 and response.json["message"]
    assert field in field_errors(response)
    assert_nothing_stored(client)


def test_limits_are_inclusive(client):
    body = {"user_id": "u" * 128, "token": "t" * 8192, "expires_at": future()}
    assert client.post(API, json=body).status_code == 201
    body = {"user_id": "u", "token": "!", "expires_at": future()}
    assert client.post(API, json=body).status_code == 201


@pytest.mark.parametrize("missing", ["user_id", "token", "expires_at"])
def test_post_needs_all_three_fields(client, missing):
    body = {**GOOD, "expires_at": future()}
    del body[missing]
    response = client.post(API, json=body)
    assert response.status_code == 422 and missing in field_errors(response)
    assert_nothing_stored(client)


def test_unknown_fields_are_rejected(client):
    response = client.post(API, json={**GOOD, "expires_at": future(), "is_admin": True})
    assert response.status_code == 422 and "is_admin" in field_errors(response)
    assert_nothing_stored(client)


def test_expires_at_must_be_in_the_future(client):
    response = client.post(API, json={**GOOD, "expires_at": iso(time.time() - 5)})
    assert response.status_code == 422 and "expires_at" in field_errors(response)
    assert_nothing_stored(client)


def test_expires_at_cannot_pass_the_maximum_ttl(make_app):
    client = make_app(max_ttl_seconds=600).test_client()
    assert client.post(API, json={**GOOD, "expires_at": future(660)}).status_code == 422
    assert client.post(API, json={**GOOD, "expires_at": future(540)}).status_code == 201


def test_put_applies_the_same_rules_and_changes_nothing(client, save):
    created = save(token=GOOD["token"])
    url = f"{API}/{created['id']}"
    for body in (
        {"token": "bad token", "expires_at": future()},
        {"token": "fine", "expires_at": iso(time.time() - 1)},
        {"token": "fine", "expires_at": future(), "extra": 1},
    ):
        assert client.put(url, json=body).status_code == 422
    detail = client.get(url).json
    assert detail["token"] == GOOD["token"] and detail["expires_at"] == created["expires_at"]


def test_refresh_body_is_documented_as_closed_like_it_behaves(client, save):
    spec = client.get("/openapi.json").json
    assert spec["components"]["schemas"]["TokenRefresh"]["additionalProperties"] is False
    record = save()
    response = client.put(f"{API}/{record['id']}", json={"token": "abc", "expires_at": future(), "extra": 1})
    assert response.status_code == 422 and "extra" in response.json["errors"]["json"]


def test_an_empty_user_filter_is_refused_rather_than_clearing_everyone(client, save):
    save(user_id="alice")
    response = client.delete(API, query_string={"user_id": ""})
    assert response.status_code == 422 and "user_id" in response.json["errors"]["query"]
    assert client.get(API).json["pagination"]["total"] == 1
    parameters = client.get("/openapi.json").json["paths"][API]["delete"]["parameters"]
    assert not any(parameter["schema"].get("nullable") for parameter in parameters)


def test_malformed_json_is_400(client):
    response = client.post(API, data='{"user_id": ', content_type="application/json")
    assert response.status_code == 400 and response.is_json and response.json["message"]
    assert_nothing_stored(client)


@pytest.mark.parametrize(
    "document",
    [
        '{"user_id": "u", "token": NaN, "expires_at": "2030-01-01T00:00:00Z"}',
        '{"user_id": "\\ud800", "token": "t", "expires_at": "2030-01-01T00:00:00Z"}',
    ],
    ids=["nan", "lone-surrogate"],
)
def test_json_outside_rfc_8259_is_400(client, document):
    response = client.post(API, data=document, content_type="application/json")
    assert response.status_code == 400 and response.is_json and response.json["message"]
    assert_nothing_stored(client)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(client, content_type):
    response = client.post(API, data="user_id=u&token=t", content_type=content_type)
    assert response.status_code == 415 and response.is_json
    assert_nothing_stored(client)


@pytest.mark.parametrize("document", ["null", "[]", "[1, 2]", "42", '"text"', "true"])
def test_a_json_body_that_is_not_an_object_is_422(client, document):
    response = client.post(API, data=document, content_type="application/json")
    assert response.status_code == 422 and response.is_json
    assert_nothing_stored(client)


def test_a_body_over_the_limit_is_413_json(client):
    body = {**GOOD, "expires_at": future(), "token": "t" * (70 * 1024)}
    response = client.post(API, json=body)
    assert response.status_code == 413
    assert response.is_json and response.json["code"] == 413 and response.json["message"]
    assert_nothing_stored(client)


def test_error_bodies_never_echo_the_token(client):
    secret = "SECRET-canary-token-value-0123456789"
    response = client.post(API, json={"user_id": "bad user", "token": secret, "expires_at": "nope"})
    assert response.status_code == 422
    assert secret not in response.get_data(as_text=True)


# What gunicorn says of a chunked request: the server delimits the body, not Content-Length.
CHUNKED = {"wsgi.input_terminated": True}


def test_a_chunked_body_over_the_limit_is_413_like_any_other(client):
    import io
    import json

    oversized = json.dumps({**GOOD, "expires_at": future(), "token": "t" * (70 * 1024)}).encode()
    response = client.post(API, input_stream=io.BytesIO(oversized), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides=CHUNKED)
    assert response.status_code == 413 and response.is_json
    assert_nothing_stored(client)
    small = json.dumps({**GOOD, "expires_at": future()}).encode()
    response = client.post(API, input_stream=io.BytesIO(small), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides=CHUNKED)
    assert response.status_code == 201


def test_blueprint_arguments_hand_webargs_options_to_the_parser():
    """What flask-smorest's `arguments` hands on to webargs (here an error status) reaches
    the service's parser (parsing.QueryParser) through its own `parse`."""
    from flask import Flask
    from flask_smorest import Api
    from marshmallow import Schema, fields

    from sessionsvc.api import ServiceBlueprint

    class Number(Schema):
        n = fields.Integer(required=True)

    app = Flask(__name__)
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    blueprint = ServiceBlueprint("options", __name__)

    @blueprint.route("/number")
    @blueprint.arguments(Number, location="query", as_kwargs=True, error_status_code=400)
    def number(n):
        return {"n": n}

    Api(app).register_blueprint(blueprint)
    client = app.test_client()
    assert client.get("/number?n=3").json == {"n": 3}
    assert client.get("/number?n=three").status_code == 400
