"""Build the CPU images from the Dockerfile with podman and run them for real (`make images`).

What a GPU box's ``docker compose up`` does, on this machine's CPU and with podman (no registry needed):
1. a Debian base image from Debian's packages (debootstrap), unless it exists;
2. the serving image and the training image (``--target train``), timed, with their sizes;
3. the serving container on a store ``make demo`` wrote (read-only, as uid 10001): ``/readyz``, a
   transcription by the student and by its teacher, a bad upload, the image's own HEALTHCHECK;
   Debian's Prometheus scrapes it and every PromQL query of the Grafana dashboard must return data;
4. the first request's latency in the container and from ``k2d serve`` outside it, same store;
5. the training image's compose command (``bootstrap``) on configs/tiny.yaml into fresh named
   volumes, as docker-compose.yml mounts them, then once more (nothing to do), then the serving
   image on the store it wrote.
A measurement and a check, not a unit test: it needs podman and minutes (``make images`` runs it through
``pytest -m images``, tests/test_images.py). Report: ``runs/images/report.{json,md}``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from loadtest.harness import REPO, free_port, serving

BASE = "localhost/debian-py:bookworm"
PODMAN = ["podman", "--runtime", "runc"]  # crun fails on this machine's hybrid cgroups; runc works
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "prometheus": "prometheus"}
CLIP = REPO / "tests/data/mixed_gradient.flac"


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def run(cmd: list[str], timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}\n{(result.stdout + result.stderr)[-3000:]}")
    return result


def timed(cmd: list[str], timeout: float = 3600) -> float:
    started = time.perf_counter()
    run(cmd, timeout)
    return round(time.perf_counter() - started, 1)


def ensure_tools() -> None:
    """Debian's podman, runc, debootstrap and prometheus: installed when missing (as root)."""
    missing = [package for package, binary in TOOLS.items() if not shutil.which(binary)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"please install: apt-get install {' '.join(missing)}")
    say(f"apt-get install {' '.join(missing)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", *missing], timeout=1200)


def base_image() -> float | None:
    """A python3 Debian base from Debian's packages; seconds spent, or None when it already existed."""
    if run([*PODMAN, "image", "exists", BASE], check=False).returncode == 0:
        return None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="k2d-rootfs-") as rootfs:
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", rootfs])
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run_import = subprocess.run([*PODMAN, "import", "-", BASE], stdin=tar.stdout, capture_output=True)
        if tar.wait() != 0 or run_import.returncode != 0:
            raise SystemExit(f"podman import failed: {run_import.stderr.decode()[-2000:]}")
    return round(time.perf_counter() - started, 1)


def build(tag: str, target: str | None = None) -> float:
    """``--format docker`` keeps the HEALTHCHECK (OCI images drop it); local wheels are used when present."""
    cmd = [*PODMAN, "build", "--format", "docker", "--network", "host", *LIMITS,
           "-v", "/etc/ssl/certs:/etc/ssl/certs:ro", "--build-arg", f"BASE={BASE}", "-t", tag]
    if target:
        cmd += ["--target", target]
        if Path("/opt/wheels").is_dir():  # this machine's CPU torch wheel: no CUDA download
            cmd += ["-v", "/opt/wheels:/opt/wheels:ro", "--build-arg", "K2D_WHEELS=/opt/wheels"]
    return timed([*cmd, str(REPO)])


def image_mb(tag: str) -> float:
    return round(int(run([*PODMAN, "image", "inspect", "--format", "{{.Size}}", tag]).stdout) / 1e6, 1)


def poll(condition, timeout: float, failure: str) -> float:
    """Seconds until ``condition()`` is true (HTTP errors count as not yet); SystemExit(failure) past ``timeout``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            if condition():
                return round(time.perf_counter() - started, 1)
        time.sleep(0.5)
    raise SystemExit(failure)


def wait_ready(url: str, timeout: float = 300) -> float:
    return poll(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, timeout, f"{url}/readyz not ready")


def transcribe(url: str, model: str | None = None, path: Path = CLIP) -> dict:
    data = {"model": model} if model else {}
    started = time.perf_counter()
    with path.open("rb") as fh:
        response = httpx.post(url + "/transcribe", files={"file": (path.name, fh)}, data=data, timeout=300)
    seconds = round(time.perf_counter() - started, 3)
    if response.status_code != 200:
        raise SystemExit(f"{url}/transcribe ({model or 'default'}): {response.status_code} {response.text[:300]}")
    return {"model": model or "default", "text": response.json()["text"], "seconds": seconds}


@contextlib.contextmanager
def serving_container(volume: str, name: str, env: dict[str, str] | None = None):
    """The serving image on ``volume`` (a folder or a named volume), read-only, on a loopback port."""
    port = free_port()
    settings = {"K2D_HOST": "127.0.0.1", "K2D_PORT": str(port), **(env or {})}
    run([*PODMAN, "rm", "-f", name], check=False)
    run([*PODMAN, "run", "-d", "--name", name, "--network", "host", *LIMITS, "-v", f"{volume}:/models:ro",
         *[arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")], "k2d:cpu"])
    try:
        yield f"http://127.0.0.1:{port}", name
    except BaseException:
        say("container log:\n" + run([*PODMAN, "logs", "--tail", "40", name], check=False).stderr)
        raise
    finally:
        run([*PODMAN, "rm", "-f", name], check=False)


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/k2d.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@contextlib.contextmanager
def prometheus_scraping(target: str):
    """Debian's Prometheus scraping ``target`` every second, with its own throw-away storage."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="k2d-prom-") as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [
            {"job_name": "k2d", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}]}))
        process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder}/data",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            poll(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 60, "prometheus did not become ready")
            # one scrape of the target first: traffic before it would not count
            poll(lambda: httpx.get(url + "/api/v1/query", params={"query": "up"}, timeout=2).json()["data"]["result"],
                 60, f"prometheus never scraped {target}")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def query_all(prometheus: str) -> list[dict]:
    """Every dashboard query: how many series it returns and their values (NaN counts as no data)."""
    rows = []
    for expr in dashboard_queries():
        body = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
        values = [float(series["value"][1]) for series in body.get("data", {}).get("result", [])]
        finite = [value for value in values if math.isfinite(value)]
        rows.append({"expr": expr, "series": len(values), "finite": len(finite), "values": finite[:4]})
    return rows


def check_serving(store: Path, report: dict) -> None:
    """Steps 3-4: the serving container on the demo store, its healthcheck, the dashboard, host vs container."""
    with serving_container(str(store), "k2d-verify-serve", {"K2D_SHADOW_FRACTION": "1.0"}) as (url, name):
        report["serve_ready_s"] = wait_ready(url)
        first = transcribe(url)
        report["container_first_request"] = first
        say(f"container: ready in {report['serve_ready_s']} s; first request {first['seconds']} s: {first['text']}")
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        student = next(m["id"] for m in models if m["default"])
        teacher = next(m["id"] for m in models if m["role"] == "teacher")
        with prometheus_scraping(url.removeprefix("http://")) as prometheus:
            for model in (student, teacher, student, teacher):
                transcribe(url, model)
            bad = httpx.post(url + "/transcribe", files={"file": ("x.wav", b"not audio")}, timeout=30)
            report["bad_upload_status"] = bad.status_code
            health = run([*PODMAN, "healthcheck", "run", name], check=False)
            report["healthcheck"] = {"returncode": health.returncode, "output": (health.stdout + health.stderr).strip()}
            time.sleep(8)  # several scrapes after the traffic, so every rate() has two samples
            report["dashboard"] = query_all(prometheus)
    with serving({"K2D_MODELS_DIR": str(store)}) as server:  # `k2d serve` outside any container
        report["host_first_request"] = transcribe(server.url)


def check_training(report: dict, config: str) -> None:
    """Step 5: the compose `train` command in the training image into fresh named volumes, then serving it."""
    volumes = {"models": "k2d-verify-models", "runs": "k2d-verify-runs"}
    for volume in volumes.values():
        run([*PODMAN, "volume", "rm", "-f", volume], check=False)
        run([*PODMAN, "volume", "create", volume])
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = [config if part == "configs/demo.yaml" else part for part in compose["services"]["train-cpu"]["command"]]
    # the host's CA certificates: where TLS to the package index is intercepted, the base image's don't suffice
    train = [*PODMAN, "run", "--rm", "--network", "host", *LIMITS, "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
             "-v", f"{volumes['models']}:/models",
             "-v", f"{volumes['runs']}:/app/runs", "k2d:train-cpu", *command]
    report["train_command"] = " ".join(command)
    report["train_first_s"] = timed(train, timeout=3600)
    report["train_again_s"] = timed(train, timeout=600)
    say(f"training image: {report['train_first_s']} s first, {report['train_again_s']} s when the student exists")
    listing = run([*PODMAN, "run", "--rm", *LIMITS, "-v", f"{volumes['models']}:/models:ro", "--entrypoint", "sh", "k2d:cpu",
                   "-c", "find /models -maxdepth 2 -printf '%m %u %p\\n' | sort -k3 | head -40"]).stdout
    report["trained_store_listing"] = listing.splitlines()
    with serving_container(volumes["models"], "k2d-verify-trained") as (url, _):
        wait_ready(url)
        report["trained_store_request"] = transcribe(url)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Images built and run (podman, CPU)", "", f"`{' '.join(sys.argv)}`", "",
             "| what | value |", "|---|---|"]
    for key in ("base_build_s", "serve_build_s", "train_build_s", "serve_image_mb", "train_image_mb", "serve_ready_s",
                "bad_upload_status", "train_first_s", "train_again_s"):
        if key in report:
            lines.append(f"| {key} | {report[key]} |")
    for key in ("container_first_request", "host_first_request", "trained_store_request"):
        if key in report:
            lines.append(f"| {key} | {report[key]['seconds']} s, {report[key]['model']}: {report[key]['text']} |")
    if "healthcheck" in report:
        lines.append(f"| image HEALTHCHECK | exit {report['healthcheck']['returncode']} |")
    if "dashboard" in report:
        lines += ["", "| dashboard query | series | with a value |", "|---|---|---|"]
        lines += [f"| `{row['expr']}` | {row['series']} | {row['finite']} |" for row in report["dashboard"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def failures(report: dict) -> list[str]:
    problems = [f"no data: {row['expr']}" for row in report.get("dashboard", []) if not row["finite"]]
    if report.get("healthcheck", {}).get("returncode", 0) != 0:
        problems.append(f"image healthcheck failed: {report['healthcheck']['output']}")
    if report.get("bad_upload_status", 400) >= 500:
        problems.append(f"bad upload answered {report['bad_upload_status']}")
    return problems


def verify(store: Path, out: Path, train_config: str = "configs/tiny.yaml", skip_training: bool = False) -> list[str]:
    """Build and run everything above; the report goes to ``out``; the problems found are returned."""
    if not (store / "registry.json").exists():
        raise FileNotFoundError(f"no model store at {store}: run `make demo` first")
    ensure_tools()
    report: dict = {"store": str(store.resolve())}
    try:
        report["base_build_s"] = base_image()
        report["serve_build_s"] = build("k2d:cpu")
        report["train_build_s"] = build("k2d:train-cpu", target="train")
        report["serve_image_mb"], report["train_image_mb"] = image_mb("k2d:cpu"), image_mb("k2d:train-cpu")
        say(f"built in {report['serve_build_s']} s / {report['train_build_s']} s: "
            f"{report['serve_image_mb']} MB / {report['train_image_mb']} MB")
        check_serving(store.resolve(), report)
        if not skip_training:
            check_training(report, train_config)
    finally:
        write_report(report, out)
    say(f"report: {out / 'report.md'}")
    return failures(report)
