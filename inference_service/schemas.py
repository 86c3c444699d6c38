"""Request bodies of the OpenAI-compatible endpoints, validated before anything is held.

Whatever a client controls is checked here, at the edge, before Reserve: a bad
value is a 400 naming the field, with nothing held and no model called. Strings
that reach usage metadata or logs (`user`, `power_level`, `task_type`, image
options) must be printable text; names and ids follow OpenAI's own patterns;
content parts are the types this service can price (text, images). Fields it
does not know are ignored and never forwarded to the provider.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

# C0 and C1 control characters, DEL and lone surrogates (which cannot be encoded as UTF-8).
_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CALL_ID = re.compile(r"[\x21-\x7e]{1,128}")


def printable(value: str) -> str:
    """Text that may reach metadata, logs or headers: no control characters, valid Unicode."""
    if _NOT_PRINTABLE.search(value):
        raise ValueError("must be printable text (no control characters, NUL or lone surrogates)")
    return value


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return check


ClientText = Annotated[str, AfterValidator(printable)]
Name = Annotated[str, AfterValidator(_pattern(_NAME, "1-64 letters, digits, '_' or '-'"))]
CallId = Annotated[str, AfterValidator(_pattern(_CALL_ID, "1-128 printable ASCII characters without spaces"))]


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageUrl


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Name
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: CallId
    type: Literal["function"] = "function"
    function: FunctionCall


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Name | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: CallId | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def content_where_required(self) -> ChatMessage:
        """As OpenAI: only an assistant message carrying tool or function calls may omit content."""
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.function_call)):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDefinition


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
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: ClientText | None = Field(None, max_length=256,
                                    description="End user; bills them only with an org service key")
    power_level: ClientText | None = Field(None, max_length=64, description="Recorded on the usage row")
    task_type: ClientText | None = Field(None, max_length=64, description="Recorded on the usage row")

    # Parameters forwarded to LiteLLM as they are (max_tokens is always sent: the budget the hold paid for).
    FORWARDED: ClassVar[tuple[str, ...]] = ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                                            "stop", "seed", "response_format", "tool_choice",
                                            "parallel_tool_calls")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens


ImageSize = Literal["256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "auto"]
ImageQuality = Literal["standard", "hd", "low", "medium", "high", "auto"]


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=32_000)
    n: int = Field(1, ge=1, le=10)
    size: ImageSize | None = None
    quality: ImageQuality | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: ClientText | None = Field(None, max_length=256)


# ---- embeddings, audio transcriptions, moderations ------------------------------------------------

EMBEDDING_MAX_INPUTS = 2048  # OpenAI's bound on the inputs of one embeddings request
MODERATION_MAX_INPUTS = 128
TOKEN_ID_MAX = 1_000_000  # token ids at or above this are no tokenizer's (o200k_base has ~200k)
EMBEDDING_INPUT = "a string, a list of strings, a token array (integers) or a list of token arrays"


def _token_array(value: list[Any], where: str) -> list[int]:
    if not value:
        raise ValueError(f"{where}: an empty token array")
    for index, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < TOKEN_ID_MAX:
            raise ValueError(f"{where}[{index}]: token ids are integers from 0 to {TOKEN_ID_MAX - 1:,}")
    return value


def embedding_input(value: Any) -> str | list[str] | list[int] | list[list[int]]:
    """`input` of an embeddings request, each shape checked with a message that names what is wrong."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {EMBEDDING_INPUT}")
    if not value:
        raise ValueError("must not be an empty list")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return _token_array(value, "input")
    if len(value) > EMBEDDING_MAX_INPUTS:
        raise ValueError(f"has {len(value):,} inputs; at most {EMBEDDING_MAX_INPUTS:,}")
    if all(isinstance(item, str) for item in value):
        empty = next((i for i, item in enumerate(value) if not item), None)
        if empty is not None:
            raise ValueError(f"input[{empty}] is an empty string")
        return value
    if all(isinstance(item, list) for item in value):
        return [_token_array(item, f"input[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"must be {EMBEDDING_INPUT}, not a mix (or token ids that are not integers)")


class EmbeddingRequest(BaseModel):
    """POST /embeddings: `input` is a string, a list of strings, a token array or a list of token arrays.
    The tokens are bounded where the catalogue entry is known (metering_modes.py)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    input: Annotated[Any, AfterValidator(embedding_input)] = Field(
        description=f"{EMBEDDING_INPUT}; at most {EMBEDDING_MAX_INPUTS} inputs")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, le=65_536)
    user: ClientText | None = Field(None, max_length=256,
                                    description="End user; bills them only with an org service key")

    @property
    def texts(self) -> list[str]:
        """The inputs given as text."""
        if isinstance(self.input, str):
            return [self.input]
        return [item for item in self.input if isinstance(item, str)]

    @property
    def token_arrays(self) -> list[list[int]]:
        """The inputs given as token arrays (one array, or several)."""
        if isinstance(self.input, str) or isinstance(self.input[0], str):
            return []
        if isinstance(self.input[0], int):
            return [self.input]
        return list(self.input)


ModerationPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
_MODERATION_PART: TypeAdapter[TextPart | ImagePart] = TypeAdapter(ModerationPart)
MODERATION_INPUT = "a string, a list of strings, or a list of text and image_url parts"


def moderation_input(value: Any) -> str | list[str] | list[TextPart | ImagePart]:
    """`input` of a moderations request."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be {MODERATION_INPUT}" + (", not an empty list" if value == [] else ""))
    if len(value) > MODERATION_MAX_INPUTS:
        raise ValueError(f"has {len(value):,} inputs; at most {MODERATION_MAX_INPUTS}")
    if all(isinstance(item, str) for item in value):
        empty = next((i for i, item in enumerate(value) if not item), None)
        if empty is not None:
            raise ValueError(f"input[{empty}] is an empty string")
        return value
    if all(isinstance(item, dict) for item in value):
        parts = []
        for index, item in enumerate(value):
            try:
                parts.append(_MODERATION_PART.validate_python(item))
            except ValidationError:
                raise ValueError(f"input[{index}]: a part is {{'type': 'text', 'text': …}} or "
                                 "{'type': 'image_url', 'image_url': {'url': …}}") from None
        return parts
    raise ValueError(f"must be {MODERATION_INPUT}, not a mix")


class ModerationRequest(BaseModel):
    """POST /moderations: `input` is a string, a list of strings, or a list of text and image parts."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    input: Annotated[Any, AfterValidator(moderation_input)] = Field(description=MODERATION_INPUT)
    user: ClientText | None = Field(None, max_length=256,
                                    description="End user (not sent to the provider); with an org service key, "
                                                "whose rate limits apply")

    @property
    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        return [item if isinstance(item, str) else item.text for item in self.input
                if isinstance(item, str | TextPart)]

    def sent(self) -> str | list[Any]:
        """The input as the provider is sent it."""
        if isinstance(self.input, str):
            return self.input
        return [item if isinstance(item, str) else item.model_dump(exclude_none=True) for item in self.input]


TranscriptionFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z]{2,4})?")


class TranscriptionForm(BaseModel):
    """The text fields of POST /audio/transcriptions (multipart/form-data; the file is checked apart)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=128)
    language: Annotated[str, AfterValidator(_pattern(LANGUAGE, "an ISO-639-1 language code such as 'en'"))] | None \
        = None
    prompt: ClientText | None = Field(None, max_length=4096)
    response_format: TranscriptionFormat = "json"
    temperature: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(None, max_length=2)
    user: ClientText | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def granularities_need_verbose_json(self) -> TranscriptionForm:
        """As OpenAI: timestamps come only in verbose_json (refused here, before anything is held)."""
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities needs response_format verbose_json")
        return self
