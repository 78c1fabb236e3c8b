"""Response schemas render by hand on the hot paths; what they render must be exactly what
marshmallow would dump from their declared fields (which the OpenAPI document shows)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import Schema

from sessionsvc.schemas import CurrentToken, Rendered, TokenCreated, TokenDetail, TokenPage, TokenSummary, Validity
from sessionsvc.store import Record

seconds = st.integers(min_value=0, max_value=4_102_444_800)
records = st.builds(
    Record,
    number=st.integers(min_value=1, max_value=10**12),
    user_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    token_preview=st.sampled_from(["...", "abcd...", "eyJhbGci...Q3Yk"]),
    expires_at=seconds,
    saved_at=seconds,
    created_at=seconds,
    version=st.integers(min_value=1, max_value=10**9),
    is_valid=st.booleans(),
    seconds_remaining=st.integers(min_value=0, max_value=10**7),
)


def marshmallow_dump(schema: Rendered, obj: object) -> object:
    return Schema.dump(schema, obj)


def test_every_response_schema_that_renders_by_hand_is_covered_here():
    covered = {TokenSummary, TokenCreated, TokenDetail, CurrentToken, Validity, TokenPage}
    assert set(all_subclasses(Rendered)) == covered


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


@given(record=records)
@pytest.mark.parametrize("schema", [TokenSummary(), TokenCreated(), Validity()])
def test_record_renders_as_its_fields_dump(schema, record):
    assert schema.dump(record) == marshmallow_dump(schema, record)
    assert list(schema.dump(record)) == list(marshmallow_dump(schema, record))


@given(record_list=st.lists(records, max_size=5), total=st.integers(min_value=0, max_value=10**6))
def test_page_renders_as_its_fields_dump(record_list, total):
    page = {"data": record_list, "pagination": {"page": 3, "limit": 20, "total": total}}
    assert TokenPage().dump(page) == marshmallow_dump(TokenPage(), page)


@given(record=records, token=st.text(min_size=1, max_size=40))
def test_detail_and_current_render_as_their_fields_dump(record, token):
    # The shapes the views hand over (api.py).
    detail = {"id": record.id, "user_id": record.user_id, "token": token, "expires_at": record.expires_at,
              "is_valid": record.is_valid, "saved_at": record.saved_at}
    current = {"token": token, "expires_at": record.expires_at, "is_valid": record.is_valid}
    for schema, obj in ((TokenDetail(), detail), (CurrentToken(), current)):
        assert schema.dump(obj) == marshmallow_dump(schema, obj)
        assert list(schema.dump(obj)) == list(marshmallow_dump(schema, obj))


def test_validity_without_a_record_renders_as_its_fields_dump():
    none = {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
    assert Validity().dump(none) == marshmallow_dump(Validity(), none) == none
