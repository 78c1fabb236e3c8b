"""The OpenAPI document that API consumers read and generate clients from: served as
committed, fit for code generators (incl. a generated client), its examples accepted as
they are. The app tests run on fakeredis and on the private redis-server."""

from __future__ import annotations

import calendar
import importlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import attrs
import fakeredis
import pytest

from conftest import API, TEST_KEYS, future
from sessionsvc import create_app
from sessionsvc.apidoc import dated_examples
from sessionsvc.config import Config
from sessionsvc.store import parse_id

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_ERRORS = {"401", "429", "503"}


@pytest.fixture
def document_app():
    redis_client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return create_app(Config(encryption_keys=TEST_KEYS), redis_client=redis_client)


@pytest.fixture
def document(document_app) -> dict:
    return document_app.test_client().get("/openapi.json").json


def test_served_openapi_document_matches_the_committed_openapi_json(document_app):
    """The committed file is the document as of the contract's examples; served, its
    example times are dated to the moment of serving (`dated_examples`), here either
    side of a minute that may turn during the request."""
    committed = json.loads((ROOT / "openapi.json").read_text())
    max_ttl = document_app.config["SESSIONSVC"].max_ttl_seconds
    before = time.time()
    served = document_app.test_client().get("/openapi.json").json
    after = time.time()
    expected = dated_examples(committed, before, max_ttl)
    if served != expected:
        expected = dated_examples(committed, after, max_ttl)
    assert served == expected, "openapi.json is stale: regenerate it with `make openapi` and review the diff"


def test_example_times_are_dated_to_the_minute_of_serving_and_within_the_longest_expiry():
    story = {"saved_at": "2026-03-26T08:00:00Z", "expires_at": "2026-03-26T11:00:00Z", "note": "2026-03-26"}
    written_at = calendar.timegm((2026, 3, 26, 9, 20, 0))
    assert dated_examples(story, written_at + 59, 2_592_000) == story
    later = written_at + 86400 * 400 + 3600 + 61
    assert dated_examples(story, later, 2_592_000) == {
        "saved_at": "2027-04-30T09:01:00Z", "expires_at": "2027-04-30T12:01:00Z", "note": "2026-03-26",
    }
    assert dated_examples(story, later, 3600)["expires_at"] == "2027-04-30T11:21:00Z"


def test_every_operation_is_fit_for_code_generators(document):
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "delete")
    ]
    assert len([path for path, _, _ in operations if path.startswith(API)]) == 9
    assert len({operation["operationId"] for _, _, operation in operations}) == len(operations)
    for path, method, operation in operations:
        # Swagger UI shows a summary as it is (only descriptions are Markdown).
        assert operation["summary"] and not re.search(r"[`*\[\]#]", operation["summary"]), (method, path)
        success = next(code for code in operation["responses"] if code.startswith("2"))
        assert "example" in operation["responses"][success]["content"]["application/json"], (method, path)
        if path.startswith(API):
            assert CONTRACT_ERRORS <= set(operation["responses"]), (method, path)
        if "requestBody" in operation:
            assert "example" in operation["requestBody"]["content"]["application/json"]
            assert {"400", "413", "415", "422"} <= set(operation["responses"])
    for name, response in document["components"]["responses"].items():
        if name != "DEFAULT_ERROR":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    by_id = {operation["operationId"]: operation for _, _, operation in operations}
    assert {"404", "412"} <= set(by_id["refreshToken"]["responses"])
    assert "404" in by_id["getToken"]["responses"] and "404" in by_id["getCurrentToken"]["responses"]
    parameters = {parameter["name"]: parameter["schema"] for parameter in by_id["listTokens"]["parameters"]}
    assert (parameters["page"]["minimum"], parameters["page"]["default"]) == (1, 1)
    limit = parameters["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 20)
    assert "Link" in by_id["listTokens"]["responses"]["200"]["headers"]


def schema_references(value: object) -> set[str]:
    """The names of the schemas `value` refers to."""
    if isinstance(value, dict):
        reference = value.get("$ref", "")
        found = {reference.removeprefix("#/components/schemas/")} if reference.startswith("#/components/schemas/") \
            else set()
        return found.union(*(schema_references(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(schema_references(item) for item in value))
    return set()


def test_every_schema_in_the_document_is_used(document):
    components = document["components"]
    used = schema_references(document["paths"]) | schema_references(components["responses"])
    used |= schema_references([components["schemas"][name] for name in used])
    assert set(components["schemas"]) == used


GENERATOR = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent)) or shutil.which(
    "openapi-python-client"
)
# Response fields that are not in every answer of their shape: a client types them optional.
OPTIONAL_RESPONSE_FIELDS = {("Error", "errors"), *(("SessionEvent", name) for name in ("id", "user_id", "expires_at",
                                                                                      "count", "kept"))}


@pytest.fixture
def generated_client(document, tmp_path, monkeypatch):
    """The models of a Python client generated from the served document by
    openapi-python-client, as a consumer of the API would generate them."""
    if GENERATOR is None:
        pytest.skip("openapi-python-client is not installed (requirements-dev.txt pins it)")
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    (tmp_path / "config.yaml").write_text("package_name_override: sessionsvc_client\npost_hooks: []\n")
    generated = subprocess.run(
        [GENERATOR, "generate", "--path", str(tmp_path / "openapi.json"), "--config", str(tmp_path / "config.yaml"),
         "--meta", "none", "--output-path", str(tmp_path / "sessionsvc_client")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("sessionsvc_client.models"), importlib.import_module("sessionsvc_client.types")
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "sessionsvc_client"]:
            del sys.modules[name]


def test_a_generated_client_types_the_fields_always_answered_as_present(document, generated_client):
    models, types = generated_client
    requests = {ref.rsplit("/", 1)[1] for ref in re.findall(r'"requestBody": \{[^}]*"\$ref": "([^"]+)"',
                                                             json.dumps(document))}
    assert requests == {"TokenCreate", "TokenRefresh"}
    optional = set()
    for name, schema in document["components"]["schemas"].items():
        if name in requests:
            continue
        fields = attrs.fields(getattr(models, name))
        # The generator adds "_" to names Python reserves (`type_`).
        assert {field.name.removesuffix("_") for field in fields} == set(schema["properties"]), name
        optional |= {(name, field.name) for field in fields if field.default is types.UNSET}
    assert optional == OPTIONAL_RESPONSE_FIELDS


def test_a_generated_client_reads_every_kind_of_answer(app, generated_client):
    """Its models' `from_dict` needs every field they type as present."""
    models, _ = generated_client
    client = app.test_client()
    assert models.Validity.from_dict(client.get(f"{API}/validity").json).expires_at is None
    created = client.post(API, json={"user_id": "u1", "token": "t" * 30, "expires_at": future()})
    record_id = models.TokenCreated.from_dict(created.json).id
    models.TokenPage.from_dict(client.get(API).json)
    models.TokenDetail.from_dict(client.get(f"{API}/{record_id}").json)
    models.CurrentToken.from_dict(client.get(f"{API}/current").json)
    assert models.Validity.from_dict(client.get(f"{API}/validity").json).is_valid
    models.TokenSummary.from_dict(client.put(f"{API}/{record_id}", json={"token": "u" * 30,
                                                                         "expires_at": future()}).json)
    models.Deleted.from_dict(client.delete(f"{API}/{record_id}").json)
    models.Cleared.from_dict(client.delete(API).json)
    events = models.SessionEventPage.from_dict(client.get(f"{API}/events", query_string={"user_id": "u1"}).json)
    assert [event.type_ for event in events.data][-2:] == ["deleted", "cleared"]
    assert models.Error.from_dict(client.get(f"{API}/{record_id}").json).code == 404
    invalid = models.Error.from_dict(client.post(API, json={}).json)
    assert invalid.code == 422 and invalid.errors is not None
    models.Health.from_dict(client.get("/healthz").json)
    models.Readiness.from_dict(client.get("/readyz").json)


def test_every_query_and_path_string_states_the_lengths_the_server_accepts(document):
    """A client generated from the document then never builds a request the server (or
    gunicorn's request-line limit) refuses for its length."""
    parameters = [
        (path, parameter)
        for path, item in document["paths"].items()
        for holder in (item, *(operation for operation in item.values() if isinstance(operation, dict)))
        for parameter in holder.get("parameters", [])
        if parameter["in"] in ("query", "path") and parameter["schema"].get("type") == "string"
    ]
    assert {parameter["name"] for _, parameter in parameters} == {"user_id", "record_id", "keep", "after", "type"}
    for path, parameter in parameters:
        assert "maxLength" in parameter["schema"] or "enum" in parameter["schema"], (path, parameter["name"])
    user_id = next(parameter["schema"] for _, parameter in parameters if parameter["name"] == "user_id")
    assert (user_id["minLength"], user_id["maxLength"]) == (1, 128)
    record_id = next(parameter["schema"] for _, parameter in parameters if parameter["name"] == "record_id")
    shortest, longest = "store_001", "store_" + "9" * 18
    assert (len(shortest), len(longest)) == (record_id["minLength"], record_id["maxLength"])
    assert parse_id(shortest) == 1 and parse_id(longest) == 10**18 - 1
    assert parse_id("store_01") is None and parse_id(longest + "9") is None
    assert re.fullmatch(record_id["pattern"].strip("^$"), longest) and not re.fullmatch(
        record_id["pattern"].strip("^$"), longest + "9"
    )


def request_example(document: dict, path: str, method: str) -> dict:
    return document["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]


@pytest.mark.parametrize(
    ("max_ttl_seconds", "rule"),
    [(2_592_000, "Must be in the future, and at most 30 days ahead."), (3600, "at most 1 hour ahead.")],
)
def test_the_served_request_examples_are_accepted_unchanged(make_app, max_ttl_seconds, rule):
    """What Swagger UI's "Try it out" sends unless the reader edits it."""
    client = make_app(max_ttl_seconds=max_ttl_seconds).test_client()
    served = client.get("/openapi.json").json
    created = client.post(API, json=request_example(served, API, "post"))
    assert created.status_code == 201, created.json
    refreshed = client.put(f"{API}/{created.json['id']}", json=request_example(served, API + "/{record_id}", "put"))
    assert refreshed.status_code == 200, refreshed.json
    for name in ("TokenCreate", "TokenRefresh"):
        assert served["components"]["schemas"][name]["properties"]["expires_at"]["description"].endswith(rule)


def test_no_optional_header_has_an_example_try_it_out_would_send(document):
    """Swagger UI fills a parameter in from its example, and "Try it out" sends it: an
    example If-Match is refused 412, an example Idempotency-Key is one key for every reader."""
    headers = [
        parameter
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header"
    ]
    assert {parameter["name"] for parameter in headers} == {"Idempotency-Key", "If-Match", "Last-Event-ID"}
    assert not [parameter for parameter in headers if "example" in parameter or "example" in parameter["schema"]]


def test_openapi_documents_idempotency_key_if_match_and_links(client):
    spec = client.get("/openapi.json").json
    post = spec["paths"][API]["post"]
    put = spec["paths"][f"{API}/{{record_id}}"]["put"]
    assert [p["name"] for p in post["parameters"] if p["in"] == "header"] == ["Idempotency-Key"]
    assert [p["name"] for p in put["parameters"] if p["in"] == "header"] == ["If-Match"]
    assert "412" in put["responses"]
    assert set(post["responses"]["201"]["links"]) == {"GetToken", "RefreshToken", "DeleteToken"}
    assert {"Location", "ETag"} <= set(post["responses"]["201"]["headers"])


def test_contract_examples_are_in_the_committed_document():
    """As of the contract's moment, which the served document is dated from."""
    document = json.loads((ROOT / "openapi.json").read_text())
    post = document["paths"][API]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"] == {
        "user_id": "usr_9a2f31",
        "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",
        "expires_at": "2026-03-26T11:00:00Z",
    }
    created = post["responses"]["201"]["content"]["application/json"]["example"]
    assert created["id"] == "store_002" and created["created_at"] == "2026-03-26T09:20:00Z"
    cleared = document["paths"][API]["delete"]["responses"]["200"]["content"]["application/json"]["example"]
    assert cleared == {"cleared": True, "message": "All session tokens cleared from secure storage"}
