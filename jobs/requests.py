"""What one line of a job file is: a pydantic model per request kind, unknown keys refused.

Native lines (``completion``, ``fim``, ``chat``, ``repo``) and OpenAI Batch API lines (``custom_id``,
``method``, ``url``, ``body``) both become requests of the models below. An OpenAI completions line may hold
several prompts (``prompt`` a list): it becomes one request per prompt, all with its id and params, whose
results make its one result line (``workers/prompts.py``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RequestType = Literal["completion", "fim", "chat", "repo"]
REQUEST_TYPES: tuple[RequestType, ...] = ("completion", "fim", "chat", "repo")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonSchema(StrictModel):
    """OpenAI's ``response_format.json_schema`` (what curator sends for a pydantic ``response_format``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """Structured output: any JSON object, or JSON matching a schema (served by vLLM's structured outputs)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


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
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: ResponseFormat | None = None

    def over(self, base: Params) -> Params:
        """These params with ``base`` filling in what they leave out."""
        return Params.model_validate({**base.model_dump(exclude_none=True), **self.model_dump(exclude_none=True)})


DEFAULT_PARAMS = Params(max_tokens=256, temperature=0.0, top_p=1.0, top_k=-1, n=1, stop=[], ignore_eos=False,
                        min_tokens=0, presence_penalty=0.0, frequency_penalty=0.0)


# How the code to test is taken from an output (executor/extraction.py): the text as it is; the first ```python
# block of it; or as DeepSeek's HumanEval scripts do for base models (cut at the first top-level statement
# after the function) and for instruct models (the code block, with the prompt's lines above the function), or
# the answer's whole first code block (humaneval_block).
ExtractMode = Literal["text", "code_block", "humaneval_base", "humaneval_instruct", "humaneval_block"]
# The languages the executor runs (executor/languages.py, whose tests check the two lists agree).
VerifyLanguage = Literal["python", "cpp", "java", "php", "ts", "cs", "sh", "js", "go", "rs", "rb", "lua", "r",
                         "pl", "scala", "rkt", "d"]


class Verify(StrictModel):
    """Run each output against tests in the sandbox; the result gets a ``verification`` record."""

    tests: str  # code appended to the code; it passes when the program exits 0
    prompt: str = ""  # code the output continues, put before it ("text"), or the problem (humaneval_*)
    extract: ExtractMode = "text"
    language: VerifyLanguage = "python"
    setup: str = ""  # code put before everything (humaneval_* in languages other than Python)
    stop: list[str] = []  # humaneval_base outside Python: the problem's stop tokens, cut at


class RequestBase(StrictModel):
    id: Annotated[str, Field(min_length=1)]
    params: Params = Params()
    metadata: dict[str, Any] | None = None
    verify: Verify | None = None


class CompletionRequest(RequestBase):
    type: Literal["completion"] = "completion"
    prompt: str


class TokenIdsRequest(RequestBase):
    """A completion whose prompt is given as token ids (an OpenAI body's ``prompt``): run as they are, no BOS
    added, as vLLM's OpenAI server runs them."""

    type: Literal["completion"] = "completion"
    prompt_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class FimRequest(RequestBase):
    type: Literal["fim"] = "fim"
    prefix: str
    suffix: str


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        """OpenAI's content parts (``[{"type": "text", "text": ...}]``) are the text they hold, joined."""
        if not isinstance(content, list):
            return content
        kinds = [part.get("type") if isinstance(part, dict) else type(part).__name__ for part in content]
        refused = next((kind for kind in kinds if kind != "text"), None)
        if refused is not None:
            raise ValueError(f"only text content parts can be served, not {json.dumps(refused)}")
        return "".join(TextPart.model_validate(part).text for part in content)


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


Request = CompletionRequest | TokenIdsRequest | FimRequest | ChatRequest | RepoRequest

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
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None  # OpenAI's end-user id: accepted, not used
    stream: Literal[False] | None = None  # a batch's results are whole

    def params(self) -> Params:
        # logprobs differ by endpoint (a count for completions, a flag beside top_logprobs for chat).
        fields = self.model_dump(exclude_none=True, include=set(Params.model_fields) - {"logprobs"})
        if isinstance(self.stop, str):
            fields["stop"] = [self.stop]
        return Params.model_validate(fields)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in value)


class OpenAICompletionBody(OpenAISamplingBody):
    # OpenAI's four forms: a string, a list of strings, a list of token ids, a list of such lists; held as the
    # list of prompts (a string, or token ids), one choice (``n`` choices) each.
    prompt: list[str | list[int]]
    suffix: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # how many top tokens per step

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, prompt: Any) -> Any:
        if isinstance(prompt, str) or _is_token_ids(prompt):
            prompt = [prompt]
        if not (isinstance(prompt, list) and prompt and (all(isinstance(each, str) for each in prompt)
                                                         or all(_is_token_ids(each) for each in prompt))):
            raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of "
                             "token ids (at least one prompt, each list of token ids with at least one)")
        negative = next((token for each in prompt if isinstance(each, list) for token in each if token < 0), None)
        if negative is not None:
            raise ValueError(f"token ids cannot be negative ({negative})")
        return prompt

    @model_validator(mode="after")
    def _suffix_with_text(self) -> OpenAICompletionBody:
        if self.suffix is not None and not isinstance(self.prompt[0], str):
            raise ValueError("suffix (fill-in-the-middle) needs text prompts, not token ids")
        return self

    def params(self) -> Params:
        return super().params().model_copy(update={"logprobs": self.logprobs})


class OpenAIChatBody(OpenAISamplingBody):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _top_logprobs_with_logprobs(self) -> OpenAIChatBody:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def params(self) -> Params:
        params = super().params()
        update: dict[str, Any] = {"logprobs": (self.top_logprobs or 0) if self.logprobs else None}
        if self.max_completion_tokens is not None:
            update["max_tokens"] = self.max_completion_tokens
        return params.model_copy(update=update)


class OpenAIBatchLine(StrictModel):
    custom_id: Annotated[str, Field(min_length=1)]
    method: Literal["POST"]
    url: Literal["/v1/completions", "/v1/chat/completions"]
    body: dict[str, Any]


def request_from_openai(line: OpenAIBatchLine) -> tuple[Request, ...]:
    """The native requests an OpenAI Batch API line asks for: one, or one per prompt of a completions body's
    list (``suffix`` in a completions body means FIM, for each prompt)."""
    common: dict[str, Any] = {"id": line.custom_id}
    if line.url == "/v1/chat/completions":
        chat = OpenAIChatBody.model_validate(line.body)
        return (ChatRequest(messages=chat.messages, params=chat.params(), **common),)
    body = OpenAICompletionBody.model_validate(line.body)
    common["params"] = body.params()
    if body.suffix is not None:
        return tuple(FimRequest(prefix=prompt, suffix=body.suffix, **common) for prompt in body.prompt
                     if isinstance(prompt, str))
    return tuple(CompletionRequest(prompt=prompt, **common) if isinstance(prompt, str)
                 else TokenIdsRequest(prompt_token_ids=prompt, **common) for prompt in body.prompt)
