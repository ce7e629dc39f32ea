"""What can't run here (no Docker engine), checked statically — and the dashboard against a live server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import yaml

from app.settings import Settings
from k2d_train.pipeline.config import RunConfig
from tests.conftest import DATA, REPO, free_port, running_server

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_compose_services_ports_volumes_healthchecks_and_profiles():
    services = COMPOSE["services"]
    asr = services["asr"]
    assert "profiles" not in asr  # plain `docker compose up` starts it
    assert asr["ports"] == ["8000:8000"] and asr["environment"]["K2D_PORT"] == "8000"
    assert asr["volumes"] == ["${K2D_MODELS:-k2d-models}:/models:ro"] and asr["environment"]["K2D_MODELS_DIR"] == "/models"
    device = asr["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "8000" in " ".join(asr["healthcheck"]["test"])
    cpu = services["asr-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["K2D_DEVICE"] == "cpu" and "deploy" not in cpu
    assert cpu["build"]["args"]["BASE"].startswith("python:3.1")
    assert services["loadtest"]["profiles"] == ["loadtest"] and "http://asr:8000" in services["loadtest"]["command"]
    assert services["proxy"]["profiles"] == ["scale"]
    for name in ("prometheus", "grafana"):
        assert "healthcheck" in services[name] and "profiles" not in services[name]


def test_plain_compose_up_trains_the_student_once_then_serves_it():
    """`docker compose up` on a fresh box: the one-shot training service fills the store the service reads,
    and the service starts only after it succeeded; the cpu profile has the same pair."""
    services = COMPOSE["services"]
    for trainer, server in (("train", "asr"), ("train-cpu", "asr-cpu")):
        train, asr = services[trainer], services[server]
        assert asr["depends_on"] == {trainer: {"condition": "service_completed_successfully"}}
        assert train["build"]["target"] == "train" and train["command"][:2] == ["bootstrap", "configs/demo.yaml"]
        assert train["volumes"][0] == asr["volumes"][0].removesuffix(":ro")  # same store, written then read
        assert train.get("profiles") == asr.get("profiles") and train["restart"] == "no"
    assert "k2d-models" in COMPOSE["volumes"] and "k2d-runs" in COMPOSE["volumes"]
    assert services["train"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["train-cpu"]["command"][-2:] == ["--device", "cpu"]
    assert RunConfig.load(REPO / "configs/demo.yaml").packaged_models() == ["whisper-base"]  # what bootstrap fetches
    train_stage = DOCKERFILE.split("AS train")[1].split("FROM ")[0]
    assert "scripts/setup.sh train" in train_stage and re.search(r"^USER k2d$", train_stage, re.M)
    assert 'ENTRYPOINT ["k2d"]' in train_stage and "chown k2d:k2d /models /app/runs" in train_stage
    assert DOCKERFILE.rstrip().endswith('CMD ["k2d", "serve"]')  # the default target is still the serving image


def test_prometheus_scrapes_the_service_and_grafana_reads_prometheus():
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    sd = job["dns_sd_configs"][0]
    assert set(sd["names"]) == {"asr", "asr-cpu"} <= set(COMPOSE["services"]) and sd["port"] == 8000
    assert job["metrics_path"] == "/metrics"
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in COMPOSE["services"]["prometheus"]["ports"]


def test_dockerfile_installs_with_the_ci_script_and_runs_slim_and_unprivileged():
    assert "scripts/setup.sh serve" in DOCKERFILE  # the same script `make test` (and so .ci/run) runs
    assert "scripts/setup.sh" in (REPO / "Makefile").read_text() and "make test" in (REPO / ".ci/run").read_text()
    assert re.search(r"^USER k2d$", DOCKERFILE, re.M) and "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    assert "cudnn" in DOCKERFILE and "ARG BASE=nvidia/cuda:12" in DOCKERFILE
    serve = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert not [dep for dep in serve if dep.startswith(("torch", "transformers"))]


def test_the_app_imports_without_torch_or_transformers():
    code = ("import sys; import app.main; app.main.create_app(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_names_a_metric_the_live_server_exports(served_store):
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/k2d.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    wanted = {name for expr in exprs for name in re.findall(r"\bk2d_[a-z_]+", expr)}
    settings = Settings(models_dir=served_store.store, port=free_port())
    with running_server(settings) as (url, _):
        for model in ("whisper-tiny.en", "whisper-base"):  # traffic on both, so every labelled series exists
            with open(DATA / "en_lecture.flac", "rb") as fh:
                assert httpx.post(url + "/transcribe", files={"file": fh}, data={"model": model}, timeout=120).is_success
        httpx.post(url + "/transcribe", files={"file": ("x.wav", b"garbage")})
        exported = {line.split("{")[0].split(" ")[0] for line in httpx.get(url + "/metrics").text.splitlines()
                    if line and not line.startswith("#")}
    assert wanted and wanted <= exported, wanted - exported


def test_the_shipped_alert_rules_fire_on_a_drifting_student_and_not_on_a_faithful_one():
    """promtool runs the rules on synthetic series (deploy/prometheus/alerts.test.yml): the student whose
    shadowed windows disagree with its teacher alerts after 10 minutes, the one that agrees never does."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool") or str(REPO / ".venv/bin/promtool")
    if not Path(promtool).exists():
        raise AssertionError("promtool is not installed: scripts/setup.sh dev installs it (Debian's prometheus)")
    folder = REPO / "deploy/prometheus"
    assert "alerts.yml" in yaml.safe_load((folder / "prometheus.yml").read_text())["rule_files"]
    done = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    mounted = COMPOSE["services"]["prometheus"]["volumes"]
    assert any(v.startswith("./deploy/prometheus/alerts.yml:") for v in mounted)


def test_every_series_an_alert_reads_is_one_the_service_exports():
    from prometheus_client import generate_latest

    from app.metrics import Metrics

    metrics = Metrics()
    metrics.declare(["k2d-student", "whisper-base-int8"], [("k2d-student", "whisper-base-int8")])
    exported = generate_latest(metrics.registry).decode()
    rules = (REPO / "deploy/prometheus/alerts.yml").read_text()
    used = set(re.findall(r"\b(k2d_[a-z_]+)\[", rules))
    assert used and all(re.search(rf"^{name}[{{ ]", exported, re.M) for name in used), used


def test_the_settings_reference_is_the_one_the_settings_class_generates():
    from app.settings import reference

    assert (REPO / "docs/settings.md").read_text() == reference(), "run: k2d settings > docs/settings.md"
