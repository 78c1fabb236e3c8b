"""The response schemas dump what the views hand them (store Records, vault Reveals, the
page) as the contract shows it: its field names, in its order, timestamps as RFC 3339."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from sessionsvc.schemas import CurrentToken, TokenCreated, TokenDetail, TokenPage, TokenSummary, Validity
from sessionsvc.store import Record
from sessionsvc.vault import Revealed

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


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def summary(record: Record) -> dict:
    return {
        "id": record.id,
        "user_id": record.user_id,
        "token_preview": record.token_preview,
        "expires_at": rfc3339(record.expires_at),
        "is_valid": record.is_valid,
        "saved_at": rfc3339(record.saved_at),
    }


def assert_same_in_order(dumped: dict, expected: dict) -> None:
    assert dumped == expected
    assert list(dumped) == list(expected)


@given(record=records)
def test_summary_and_created_dump_a_record_in_contract_order(record):
    assert_same_in_order(TokenSummary().dump(record), summary(record))
    assert_same_in_order(TokenCreated().dump(record), {**summary(record), "created_at": rfc3339(record.created_at)})


@given(record=records)
def test_validity_dumps_a_record(record):
    expected = {"is_valid": record.is_valid, "expires_at": rfc3339(record.expires_at),
                "seconds_remaining": record.seconds_remaining}
    assert_same_in_order(Validity().dump(record), expected)


def test_validity_without_a_record_dumps_the_null_expiry():
    from sessionsvc.api import NO_CURRENT_TOKEN

    assert_same_in_order(Validity().dump(NO_CURRENT_TOKEN), {"is_valid": False, "expires_at": None,
                                                             "seconds_remaining": 0})


@given(record_list=st.lists(records, max_size=5), total=st.integers(min_value=0, max_value=10**6))
def test_page_dumps_its_records_as_summaries(record_list, total):
    page = {"data": record_list, "pagination": {"page": 3, "limit": 20, "total": total}}
    expected = {"data": [summary(record) for record in record_list],
                "pagination": {"page": 3, "limit": 20, "total": total}}
    assert_same_in_order(TokenPage().dump(page), expected)


@given(record=records, token=st.text(min_size=1, max_size=40))
def test_detail_and_current_dump_a_revealed_record_with_its_token(record, token):
    revealed = Revealed(record, token, "fingerprint")
    detail = {"id": record.id, "user_id": record.user_id, "token": token, "expires_at": rfc3339(record.expires_at),
              "is_valid": record.is_valid, "saved_at": rfc3339(record.saved_at)}
    assert_same_in_order(TokenDetail().dump(revealed), detail)
    current = {"token": token, "expires_at": rfc3339(record.expires_at), "is_valid": record.is_valid}
    assert_same_in_order(CurrentToken().dump(revealed), current)

