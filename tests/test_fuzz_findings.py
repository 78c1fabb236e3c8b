"""What contract fuzzing found, pinned down so it stays fixed (fakeredis and real Redis)."""

from __future__ import annotations

import pytest

from conftest import API, future


@pytest.mark.parametrize("literal", ["current", "validity"])
@pytest.mark.parametrize("method", ["put", "delete"])
def test_literal_routes_refuse_item_methods_instead_of_looking_up_a_record(client, save, literal, method):
    save()
    response = getattr(client, method)(f"{API}/{literal}", json={"token": "abc", "expires_at": future()})
    assert response.status_code == 405 and response.is_json
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}
    assert client.open(f"{API}/{literal}", method="OPTIONS").headers["Allow"].count("PUT") == 0


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
