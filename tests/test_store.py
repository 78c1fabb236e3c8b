"""Store-level rules that the API tests cannot pin down to the millisecond."""

from __future__ import annotations

import pytest

from conftest import API, JWT
from sessionsvc.store import StoreUnavailable, TokenStore, format_id, parse_id, shard_of_user
from sessionsvc.store.ids import ID_BLOCK, IdBlocks


def fields(expires: int) -> list:
    return [b"7", b"alice", b"abcd...", str(expires).encode(), b"100", b"100", b"3", None, None]


@pytest.mark.parametrize(
    "left_ms, valid, seconds",
    [(3_540_999, True, 3540), (1000, True, 1), (500, True, 0), (1, True, 0), (0, False, 0), (-5000, False, 0)],
)
def test_validity_is_exact_to_the_millisecond_and_seconds_are_whole(left_ms, valid, seconds):
    expires = 2_000_000_000
    record = TokenStore._record(expires * 1000 - left_ms, fields(expires))
    assert (record.is_valid, record.seconds_remaining) == (valid, seconds)
    assert record.id == "store_007" and record.user_id == "alice" and record.version == 3


@pytest.mark.parametrize(
    "number, text", [(1, "store_001"), (42, "store_042"), (999, "store_999"), (1234, "store_1234")]
)
def test_ids_are_zero_padded_to_three_digits_and_round_trip(number, text):
    assert format_id(number) == text and parse_id(text) == number


@pytest.mark.parametrize("text", ["store_0", "store_01", "store_0001", "store_+1", "store_ 1", "store_１", "STORE_001",
                                  "store_001/x", "store_99999999999999999999"])
def test_non_canonical_ids_never_reach_redis(text):
    assert parse_id(text) is None


def test_id_blocks_use_every_number_of_a_block_and_fetch_again_after_a_failure_or_forget():
    outcomes: list = [StoreUnavailable("timeout"), ID_BLOCK, 2 * ID_BLOCK, 3 * ID_BLOCK]

    def fetch_block(size: int) -> int:
        assert size == ID_BLOCK
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    blocks = IdBlocks(fetch_block)
    with pytest.raises(StoreUnavailable):
        blocks.reserve()
    assert [blocks.reserve() for _ in range(ID_BLOCK + 4)] == list(range(1, ID_BLOCK + 5))
    blocks.forget()  # the rest of the second block turned out to be taken
    assert blocks.reserve() == 2 * ID_BLOCK + 1 and outcomes == []


def test_bulk_loaded_records_read_back_like_saved_ones(client, vault, shards):
    users = [f"user{index}" for index in range(5)]
    numbers = vault.save_many([(user, f"{JWT}.{index}", 4_000_000_000) for index, user in enumerate(users)])
    if shards == 1:
        assert list(numbers) == [1, 2, 3, 4, 5]
    assert [number % shards for number in numbers] == [shard_of_user(user, shards) for user in users]
    assert client.get(f"{API}/{format_id(numbers[2])}").json["token"] == f"{JWT}.2"
    listed = client.get(API).json
    assert listed["pagination"]["total"] == 5
    assert [item["id"] for item in listed["data"]] == [format_id(number) for number in reversed(numbers)]
