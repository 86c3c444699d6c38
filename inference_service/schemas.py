"""Request bodies of the OpenAI-compatible endpoints (validated; unknown fields ignored)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def content_where_required(self) -> ChatMessage:
        """As OpenAI: only an assistant message carrying tool or function calls may omit content."""
        extra = self.model_extra or {}
        if self.content is None and not (self.role == "assistant" and (extra.get("tool_calls")
                                                                       or extra.get("function_call"))):
            raise ValueError(f"a {self.role} message needs content")
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part.get("type"), str):
                    raise ValueError("each content part needs a 'type'")
        if self.role == "tool" and not isinstance(extra.get("tool_call_id"), str):
            raise ValueError("a tool message needs tool_call_id")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256, description="End user; bills them only with an org service key")
    power_level: str | None = Field(None, max_length=64, description="Recorded on the usage row")
    task_type: str | None = Field(None, max_length=64, description="Recorded on the usage row")

    # Parameters forwarded to LiteLLM as they are.
    FORWARDED: ClassVar[tuple[str, ...]] = ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                                            "stop", "seed",
                 "response_format", "tools", "tool_choice")


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=32_000)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=32)
    quality: str | None = Field(None, max_length=32)
    style: str | None = Field(None, max_length=32)
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = Field(None, max_length=256)
