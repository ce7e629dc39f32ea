"""Form mistakes both transcription endpoints refuse with a truthful 422 before any model is involved (the
app is not started: no model loaded; validation runs before a model is chosen)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import DATA

ROUTES = ["/transcribe", "/v1/audio/transcriptions"]
CLIP = (DATA / "en_lecture.flac").read_bytes()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return TestClient(create_app(Settings(models_dir=tmp_path_factory.mktemp("empty-store"))))


@pytest.mark.parametrize("route", ROUTES)
def test_two_file_parts_are_refused_not_silently_the_last(client, route):
    response = client.post(route, files=[("file", ("a.flac", CLIP)), ("file", ("b.flac", CLIP))])
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "send each form field once; repeated: file"


@pytest.mark.parametrize("route", ROUTES)
def test_any_repeated_single_field_is_refused(client, route):
    response = client.post(route, files={"file": ("a.flac", CLIP)}, data={"language": ["en", "zh"]})
    assert response.status_code == 422 and "repeated: language" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_a_temperature_that_is_not_a_number_is_called_that(client, route, value):
    response = client.post(route, files={"file": ("a.flac", CLIP)}, data={"temperature": value})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "temperature: Input should be a finite number"


@pytest.mark.parametrize("route", ROUTES)
def test_a_temperature_out_of_range_still_says_the_range(client, route):
    response = client.post(route, files={"file": ("a.flac", CLIP)}, data={"temperature": "1.5"})
    assert response.status_code == 422 and "less than or equal to 1" in response.json()["error"]["message"]
