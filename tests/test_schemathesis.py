"""schemathesis fuzzes the served OpenAPI document through the WSGI app with every check
it has, operation by operation and statefully along the documented links (POST -> GET /
PUT / DELETE, GET -> conditional PUT), on fakeredis. Zero failures allowed.

Three things the JSON Schema cannot say are told to the generator instead of relaxed in the
checks: a valid `expires_at` lies between now and the maximum TTL, an idempotency key is
fresh for each new request (reusing one with another body is rightly a 422), and `keep`
(clear all of a user's records but one) comes with the `user_id` it belongs to. A PUT whose
well-formed `If-Match` names another version is rightly a 412: that status is accepted as an
answer to schema-valid data.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from collections import Counter
from typing import ClassVar

import fakeredis
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from conftest import API, TEST_KEYS, iso
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.schemas import CURSOR

CURSOR_PATTERN = re.compile(CURSOR.regex.pattern.strip("^$"))
EXPECTED_FOR_VALID_DATA = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def build_schema():
    app = create_app(Config(encryption_keys=TEST_KEYS), redis_client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    config = SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": EXPECTED_FOR_VALID_DATA}}}
    )
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)


def prepare(case):
    """Make a schema-valid case valid in time and fresh in idempotency, as a client would."""
    meta = case.meta
    if meta is not None and meta.generation.mode != GenerationMode.POSITIVE:
        return
    if isinstance(case.body, dict) and isinstance(case.body.get("expires_at"), str):
        case.body["expires_at"] = iso(time.time() + random.randint(60, 30 * 86400))
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if case.query and "keep" in case.query and "user_id" not in case.query:
        case.query["user_id"] = "usr_9a2f31"
    # schemathesis generates header values of its own alphabet and does not keep to a
    # header's `pattern` (it sends `Last-Event-ID: 0` as schema-valid): a cursor it is.
    if case.headers and "Last-Event-ID" in case.headers and not CURSOR_PATTERN.fullmatch(case.headers["Last-Event-ID"]):
        case.headers["Last-Event-ID"] = "1774515600000-0"


schema = build_schema()
load_all_checks()
ALL_CHECKS = CHECKS.get_all()


@pytest.fixture(scope="module", autouse=True)
def _every_check_is_used():
    names = {getattr(check, "__name__", "") for check in ALL_CHECKS}
    assert {"not_a_server_error", "response_schema_conformance", "positive_data_acceptance",
            "negative_data_rejection", "use_after_free", "ensure_resource_availability"} <= names


@schema.parametrize()
@SETTINGS
def test_every_operation_answers_as_documented(case):
    prepare(case)
    case.call_and_validate(checks=ALL_CHECKS)


class LinkedCalls(schema.as_state_machine()):
    answered: ClassVar[Counter] = Counter()

    def call(self, case, **kwargs):
        prepare(case)
        return super().call(case, **kwargs)

    def validate_response(self, response, case, additional_checks=(), **kwargs):
        self.answered[case.operation.label, response.status_code] += 1
        case.validate_response(response, checks=ALL_CHECKS)


def test_linked_calls_answer_as_documented():
    LinkedCalls.answered.clear()
    run_state_machine_as_test(LinkedCalls, settings=settings(SETTINGS, max_examples=EXAMPLES, stateful_step_count=8))
    item = f"{API}/{{record_id}}"
    for method in ("GET", "PUT", "DELETE"):  # the links from POST (and GET) were followed to real records
        assert LinkedCalls.answered[f"{method} {item}", 200] > 0, LinkedCalls.answered
