"""Schemathesis against the real server (real models): whatever the OpenAPI document allows, and
plenty it doesn't, must never get a 5xx, and every answer must be one the document lists.

Bounded: a fixed number of examples per operation; about half the uploads are real audio clips
(the rest are the random bytes schemathesis makes), so the happy path runs real inference too.
"""

from __future__ import annotations

from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.main import create_app
from app.settings import Settings
from tests.conftest import DATA, free_port, running_server

EXAMPLES = 30  # per operation: ~30 s in all on 2 CPU cores
CLIPS = [(DATA / name).read_bytes() for name in ("en_lecture.flac", "mixed_loss.ogg", "silence.flac")]
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def seen_report():
    """Print what the run got (``-s``): real audio must reach 200s, not only the error paths."""
    yield
    print("\nschemathesis answers:", dict(sorted(SEEN.items())))


@schema.hook
def flatmap_body(context, body):
    """Real clips for half the uploads, and half the time drop a generated model/language: random strings
    there only ever reach the 404/422 paths, and the happy path (real inference) deserves traffic too."""
    if not (isinstance(body, dict) and "file" in body):
        return st.just(body)
    uploads = st.sampled_from([*CLIPS] + [body["file"]] * len(CLIPS))
    keep = st.fixed_dictionaries({key: st.booleans() for key in ("model", "language") if key in body})
    return st.tuples(uploads, keep).map(
        lambda chosen: {**{k: v for k, v in body.items() if chosen[1].get(k, True)}, "file": chosen[0]})


@pytest.fixture(scope="module")
def url(served_store, seen_report):
    settings = Settings(models_dir=served_store.store, port=free_port(), models=["whisper-tiny.en"], cpu_threads=2,
                        max_wait_ms=5)
    with running_server(settings) as (base, _):
        yield base


@pytest.mark.slow  # ~30 s: real inference on the happy path
@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_input_makes_the_server_fail(case, url):
    # A schema cannot say "the file must be decodable audio": valid-looking random bytes rightly get 415.
    # Form semantics make some "invalid" bodies valid: an empty field means "not given" (its default) and a
    # repeated field takes its last value, so those are accepted rather than rejected.
    response = case.call_and_validate(base_url=url, timeout=120,
                                      excluded_checks=[positive_data_acceptance, negative_data_rejection])
    SEEN[f"{case.method} {case.path} {response.status_code}"] += 1
