"""What one line of a job file is: a pydantic model per request kind, unknown keys refused.

Native lines (``completion``, ``fim``, ``chat``, ``repo``) and OpenAI Batch API lines (``custom_id``,
``method``, ``url``, ``body``) both become one of the four request models below.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RequestType = Literal["completion", "fim", "chat", "repo"]
REQUEST_TYPES: tuple[RequestType, ...] = ("completion", "fim", "chat", "repo")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Params(StrictModel):
    """Sampling settings; every field left out falls back to the job's defaults, then to dscbatch's."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None

    def over(self, base: Params) -> Params:
        """These params with ``base`` filling in what they leave out."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


DEFAULT_PARAMS = Params(max_tokens=256, temperature=0.0, top_p=1.0, top_k=-1, n=1, stop=[], ignore_eos=False,
                        min_tokens=0)


# How the code to test is taken from an output (executor/extraction.py): the text as it is; the first ```python
# block of it; or as DeepSeek's HumanEval scripts do for base models (cut at the first top-level statement
# after the function) and for instruct models (the code block, with the prompt's lines above the function).
ExtractMode = Literal["text", "code_block", "humaneval_base", "humaneval_instruct"]


class Verify(StrictModel):
    """Run each output against tests in the sandbox; the result gets a ``verification`` record."""

    tests: str  # Python appended to the code; it passes when the program exits 0
    prompt: str = ""  # code the output continues, put before it ("text"), or the problem (humaneval_*)
    extract: ExtractMode = "text"


class RequestBase(StrictModel):
    id: Annotated[str, Field(min_length=1)]
    params: Params = Params()
    metadata: dict[str, Any] | None = None
    verify: Verify | None = None


class CompletionRequest(RequestBase):
    type: Literal["completion"] = "completion"
    prompt: str


class FimRequest(RequestBase):
    type: Literal["fim"] = "fim"
    prefix: str
    suffix: str


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(RequestBase):
    type: Literal["chat"] = "chat"
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError(f"the last message must be from the user, not the {messages[-1].role}")
        return messages


class RepoFile(StrictModel):
    path: Annotated[str, Field(min_length=1)]
    content: str


class RepoTarget(StrictModel):
    path: Annotated[str, Field(min_length=1)]
    prefix: str
    suffix: str | None = None


class RepoRequest(RequestBase):
    type: Literal["repo"] = "repo"
    files: list[RepoFile]
    target: RepoTarget


Request = CompletionRequest | FimRequest | ChatRequest | RepoRequest

MODEL_BY_TYPE: dict[str, type[RequestBase]] = {
    "completion": CompletionRequest,
    "fim": FimRequest,
    "chat": ChatRequest,
    "repo": RepoRequest,
}

# The field that tells each kind apart when a line leaves out ``type``.
TYPE_BY_FIELD = {"prompt": "completion", "prefix": "fim", "messages": "chat", "files": "repo", "target": "repo"}


class OpenAISamplingBody(StrictModel):
    """The body fields both OpenAI endpoints share: the model name (informational) and sampling."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None

    def params(self) -> Params:
        fields = self.model_dump(exclude_none=True, include=set(Params.model_fields))
        if isinstance(self.stop, str):
            fields["stop"] = [self.stop]
        return Params.model_validate(fields)


class OpenAICompletionBody(OpenAISamplingBody):
    prompt: str
    suffix: str | None = None


class OpenAIChatBody(OpenAISamplingBody):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def params(self) -> Params:
        params = super().params()
        if self.max_completion_tokens is not None:
            params = params.model_copy(update={"max_tokens": self.max_completion_tokens})
        return params


class OpenAIBatchLine(StrictModel):
    custom_id: Annotated[str, Field(min_length=1)]
    method: Literal["POST"]
    url: Literal["/v1/completions", "/v1/chat/completions"]
    body: dict[str, Any]


def request_from_openai(line: OpenAIBatchLine) -> Request:
    """The native request an OpenAI Batch API line asks for (``suffix`` in a completions body means FIM)."""
    common: dict[str, Any] = {"id": line.custom_id}
    if line.url == "/v1/chat/completions":
        chat = OpenAIChatBody.model_validate(line.body)
        return ChatRequest(messages=chat.messages, params=chat.params(), **common)
    body = OpenAICompletionBody.model_validate(line.body)
    if body.suffix is not None:
        return FimRequest(prefix=body.prompt, suffix=body.suffix, params=body.params(), **common)
    return CompletionRequest(prompt=body.prompt, params=body.params(), **common)
