"""The load tester against a real server: bounded, loopback-only, and its report is consistent."""

from __future__ import annotations

import json

import pytest

from app.settings import Settings
from loadtest.__main__ import run
from loadtest.runner import UnsafeTargetError, check_target
from tests.conftest import MANIFEST, free_port, running_server


def test_report_numbers_are_consistent(served_store, tmp_path):
    settings = Settings(models_dir=served_store.store, port=free_port(), max_wait_ms=20)
    with running_server(settings) as (url, _):
        summary = run(url, MANIFEST, tmp_path, levels=[1, 2], requests=4, rounds=2, warmup=1, language="en")
    assert summary["models"] == ["whisper-tiny.en", "whisper-base"]  # student first, from /v1/models roles
    assert len(summary["results"]) == 4 and not summary["stopped_early"]
    for row in summary["results"]:
        assert row["requests"] == row["ok"] + sum(row["errors"].values()) == 4
        assert row["ok"] == 4 and row["errors"] == {}
        lat = row["latency_s"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert row["requests_per_s"] > 0 and row["audio_s_per_s"] > 0
    assert [s["concurrency"] for s in summary["speedup"]] == [1, 2]
    assert all(s["throughput_ratio"] > 0 and s["p50_latency_ratio"] > 0 for s in summary["speedup"])
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert "| whisper-tiny.en | 1 |" in (tmp_path / "report.md").read_text()
    for png in ("latency_cdf.png", "throughput.png", "speedup.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://192.168.1.5", "http://8.8.8.8:80"])
def test_non_loopback_targets_need_an_explicit_flag(url):
    with pytest.raises(UnsafeTargetError):
        check_target(url, allow_remote=False)
    check_target("http://127.0.0.1:8000", allow_remote=False)
    check_target("http://localhost:8000", allow_remote=False)


def test_reliability_report_marks_failures_and_fails_when_any_check_failed(tmp_path):
    from loadtest.reliability_report import main

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_uploads_are_refused[ffconcat]" time="0.25"/>'
        '<testcase classname="tests.test_b" name="test_soak_stays_flat" time="3"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_c" name="test_needs_gpu" time="0"><skipped message="no gpu"/></testcase>'
        '</testsuite></testsuites>')
    out = tmp_path / "README.md"
    assert main(str(junit), str(out)) == 1
    table = out.read_text()
    assert "3 checks, 1 failed" in table
    assert "| test_a `[ffconcat]` | uploads are refused | passed (0.2 s) |" in table
    assert "| test_b | soak stays flat | **FAILED** (3.0 s) |" in table
    assert "skipped: no gpu" in table
    junit.write_text('<testsuites><testsuite><testcase classname="t.m" name="test_ok" time="1"/></testsuite></testsuites>')
    assert main(str(junit), str(out)) == 0
