"""Every knob of the service, from ``K2D_*`` environment variables (pydantic-settings).

One settings object is built at start-up and handed to everything through FastAPI's
dependencies, so tests can start a server with any configuration without touching the process
environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="K2D_", env_file=".env", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Model store folder (registry.json)")
    models: list[str] = Field(default_factory=list,
                              description="Models to load; default: the newest student and its teacher")
    default_model: str | None = Field(None, description="Model used when a request names none (default: the student)")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    device_index: list[int] = Field(default_factory=lambda: [0], description="GPUs to use (one worker set per index)")
    compute_type_cuda: str = "int8_float16"
    compute_type_cpu: str = "int8"
    replicas: int = Field(1, ge=1, description="Workers per device, all pulling from the same per-model queue")
    cpu_threads: int = Field(0, ge=0, description="Intra-op threads per CPU worker (0: CTranslate2's default)")

    max_batch_size: int = Field(8, ge=1, description="Windows per generate() call, across requests")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits for more windows after the first")
    max_queue_windows: int = Field(256, ge=1, description="Per-model queue bound; beyond it requests get 429")

    max_upload_mb: float = Field(25.0, gt=0)
    max_audio_s: float = Field(600.0, gt=0, description="Longest audio accepted (seconds)")
    request_timeout_s: float = Field(120.0, gt=0)
    api_key: str | None = Field(None, description="If set, requests need 'Authorization: Bearer <key>'")

    vad_min_silence_ms: int = 500
    rtfx_window_s: float = Field(60.0, gt=0, description="Sliding window of the RTFx gauges")
    host: str = "127.0.0.1"
    port: int = 8000
