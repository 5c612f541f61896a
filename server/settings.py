"""Server settings: one pydantic-settings model; every CLI flag of `deltaserve serve` maps onto one field.

Environment variables use the DELTASERVE_ prefix (DELTASERVE_API_KEY, DELTASERVE_GDN_CHUNKED, ...).
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.generate import DEFAULT_MIN_CHUNKED_TOKENS, PrefillOptions
from kernels import CHUNK_SIZES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELTASERVE_", extra="ignore")

    model: str = Field("demo", description="local directory, Hugging Face repo id, demo or demo-0.8b")
    served_model_name: str | None = Field(None, description="model id clients use; defaults to --model")
    dtype: str = Field("auto", pattern="^(auto|bfloat16|float16|float32)$")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    gdn_chunked: bool = False
    chunk_size: int = 64
    gdn_min_tokens: int = Field(DEFAULT_MIN_CHUNKED_TOKENS, ge=1)
    prefill_step: int | None = Field(None, ge=1, description="tokens per prefill step; default: the backend's")
    max_queue: int = Field(64, ge=1, description="requests waiting beyond the running one; more get 503")
    max_tokens_default: int = Field(512, ge=1, description="max_tokens when a request gives none")
    context_length: int | None = Field(None, ge=1, description="prompt + max_tokens limit; default: the model's")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1 routes")
    cors_origin: list[str] = Field(default_factory=list)
    timing_store_size: int = Field(1000, ge=1, description="timing records kept for GET /v1/timings")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    keepalive_seconds: float = Field(2.0, gt=0, description="SSE comment interval while nothing else is sent")
    retry_after_seconds: int = Field(1, ge=1)
    warm_up: bool = True
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("chunk_size")
    @classmethod
    def _chunk_size(cls, v: int) -> int:
        if v not in CHUNK_SIZES:
            raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}")
        return v

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model

    def prefill_options(self) -> PrefillOptions:
        return PrefillOptions(
            method="chunked" if self.gdn_chunked else "serial",
            chunk_size=self.chunk_size,
            step_size=self.prefill_step,
            min_chunked_tokens=self.gdn_min_tokens,
        )
