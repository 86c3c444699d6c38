"""The request body of `POST /api/v1/llm/responses` (OpenAI's Responses API), validated before anything
is held, and its translation into the chat completion this service bills and sends through LiteLLM.

What is accepted: `input` as text or as items (message items with input_text / input_image /
output_text / refusal parts, and function_call / function_call_output items, so a client can send
a tool-using conversation back in full), `instructions` (sent first, as a system message),
`max_output_tokens` (the output cap: the provider is always sent the cap the hold paid for),
function tools and tool_choice, `text.format` (text, json_object, json_schema), temperature, top_p,
parallel_tool_calls, and this service's `user`, `power_level`, `task_type`.

What is refused with a 400 naming the field, before anything is held: stored state (this service
keeps no responses and no conversations: `previous_response_id`, `store: true`, `conversation`,
`background: true`, stored `prompt` templates), item, part and tool types it cannot price or run
(item_reference, reasoning, built-in tools, files, audio), and every value chat would refuse.
Fields it does not know (`reasoning`, `include`, `truncation`, `metadata`, …) are ignored and never
forwarded to the provider.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from .schemas import CallId, ChatCompletionRequest, ClientText, Name

ITEM_TYPES = ("message", "function_call", "function_call_output")
PART_TYPES = ("input_text", "input_image", "output_text", "refusal")
NO_STORED_STATE = ("this service stores no responses or conversations: send the whole conversation in "
                   "`input` (with store false)")


class InputText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text"]
    text: str


class InputRefusal(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["refusal"]
    refusal: str


class InputImage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_image"]
    image_url: str | None = Field(None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] = "auto"

    @model_validator(mode="after")
    def needs_a_url(self) -> InputImage:
        if self.image_url is None:
            raise ValueError("an input_image needs image_url (a URL or a data: URL); this service keeps no files, "
                             "so file_id is not supported")
        return self


InputPart = Annotated[InputText | InputRefusal | InputImage, Field(discriminator="type")]


def _text_or_list(value: Any) -> str | None:
    """Which form a text-or-list field takes: its error locations then read `content.text` or
    `input.items.3.message…` instead of pydantic's names for the union's branches."""
    return "text" if isinstance(value, str) else "items" if isinstance(value, list) else None


def text_or_items(items: Any, what: str, **limits: Any) -> Any:
    return Annotated[Annotated[Annotated[str, Field(**{k: v for k, v in limits.items() if k == "min_length"})],
                               Tag("text")] | Annotated[Annotated[list[items], Field(**limits)], Tag("items")],
                     Discriminator(_text_or_list, custom_error_type="text_or_items",
                                   custom_error_message=f"must be text or a list of {what}")]


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: text_or_items(InputPart, "content parts", max_length=2048)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def no_images_from_the_assistant(self) -> MessageItem:
        if self.role == "assistant" and isinstance(self.content, list) and any(
                isinstance(part, InputImage) for part in self.content):
            raise ValueError("an assistant message cannot carry input_image parts")
        return self

    def chat_message(self) -> dict[str, Any]:
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        if self.role == "assistant":  # text as one string; a refusal in its own field, as chat has them
            text = "".join(p.text for p in self.content if isinstance(p, InputText))
            refusals = "".join(p.refusal for p in self.content if isinstance(p, InputRefusal))
            return {"role": "assistant", "content": text, **({"refusal": refusals} if refusals else {})}
        parts: list[dict[str, Any]] = []
        for part in self.content:
            if isinstance(part, InputImage):
                parts.append({"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}})
            else:
                parts.append({"type": "text", "text": part.text if isinstance(part, InputText) else part.refusal})
        return {"role": self.role, "content": parts}


class FunctionCallItem(BaseModel):
    """A tool call the model made earlier in the conversation, sent back by the client."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call"]
    call_id: CallId
    name: Name
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """The client's result of a tool call."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call_output"]
    call_id: CallId
    output: str


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_tool(self) -> dict[str, Any]:
        function = self.model_dump(exclude_none=True, exclude={"type"})
        return {"type": "function", "function": function}


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: Name


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def schema_named(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise ValueError("a json_schema format needs name and schema")
        return self

    def response_format(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        schema = {"name": self.name, "schema": self.json_schema, "description": self.description,
                  "strict": self.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat | None = None


def _typed_item(i: int, item: Any) -> Any:
    """An input item with its type (none: a message, OpenAI's "easy input message"); an item or content
    part of a type this service cannot send is refused here, naming it."""
    if not isinstance(item, dict):
        return item
    kind = item.get("type", "message")
    if kind not in ITEM_TYPES:
        raise ValueError(f"input[{i}]: item type {str(kind)[:40]!r} is not supported here "
                         f"(supported: {', '.join(ITEM_TYPES)})")
    content = item.get("content") if kind == "message" else None
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict) and part.get("type") not in PART_TYPES:
            raise ValueError(f"input[{i}].content[{j}]: part type {str(part.get('type'))[:40]!r} is not supported "
                             f"here (supported: {', '.join(PART_TYPES)})")
    return {**item, "type": kind}


def _refuse_state(value: Any, name: str) -> Any:
    if value is not None and value is not False:
        raise ValueError(f"{name} is not supported: {NO_STORED_STATE}")
    return value


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    input: text_or_items(InputItem, "items", min_length=1, max_length=2048)  # type: ignore[valid-type]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    user: ClientText | None = Field(None, max_length=256,
                                    description="End user; bills them only with an org service key")
    power_level: ClientText | None = Field(None, max_length=64, description="Recorded on the usage row")
    task_type: ClientText | None = Field(None, max_length=64, description="Recorded on the usage row")
    previous_response_id: Any = Field(None, description="Not supported: 400 (no stored responses)")
    store: Any = Field(None, description="Only false: this service stores no responses")
    conversation: Any = Field(None, description="Not supported: 400 (no stored conversations)")
    background: Any = Field(None, description="Only false: calls run in the foreground")
    prompt: Any = Field(None, description="Not supported: 400 (no stored prompt templates)")

    @field_validator("previous_response_id", "store", "conversation", "background", "prompt")
    @classmethod
    def no_stored_state(cls, value: Any, info: Any) -> Any:
        return _refuse_state(value, info.field_name)

    @field_validator("input", mode="before")
    @classmethod
    def known_item_types(cls, value: Any) -> Any:
        return [_typed_item(i, item) for i, item in enumerate(value)] if isinstance(value, list) else value

    @field_validator("tools", mode="before")
    @classmethod
    def function_tools_only(cls, value: Any) -> Any:
        for i, tool in enumerate(value if isinstance(value, list) else ()):
            if isinstance(tool, dict) and tool.get("type") != "function":
                raise ValueError(f"tools[{i}]: tool type {str(tool.get('type'))[:40]!r} is not supported here; "
                                 "only function tools are")
        return value

    def chat_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return messages + [{"role": "user", "content": self.input}]
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append(item.chat_message())
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
            else:  # a tool call joins the assistant message it follows, as chat carries them
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is None or last["role"] != "assistant" or "refusal" in last:
                    last = {"role": "assistant", "content": None}
                    messages.append(last)
                last.setdefault("tool_calls", []).append(call)
        return messages

    def chat_request(self) -> ChatCompletionRequest:
        """The chat completion this request is sent as (ValueError if chat would refuse it)."""
        body: dict[str, Any] = {
            "model": self.model, "messages": self.chat_messages(), "max_tokens": self.max_output_tokens,
            "stream": self.stream, "temperature": self.temperature, "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls, "user": self.user, "power_level": self.power_level,
            "task_type": self.task_type}
        if self.tools:
            body["tools"] = [tool.chat_tool() for tool in self.tools]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        else:
            body["tool_choice"] = self.tool_choice
        if self.text is not None and self.text.format is not None:
            body["response_format"] = self.text.format.response_format()
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
