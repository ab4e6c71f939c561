"""Request and response bodies of the HTTP API (pydantic; they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

# the largest cost weight a request may ask for: far past any useful trade-off (cost_scale normalises costs to
# about 1), and small enough that cost_weight * cost / cost_scale cannot overflow to -inf for every model
MAX_COST_WEIGHT = 1e6

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
CostWeight = Annotated[float, Field(ge=0, le=MAX_COST_WEIGHT, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class Message(BaseModel):
    """A chat message; fields beyond ``role`` and ``content`` (``name``, ``tool_calls``...) pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str | list[dict[str, Any]] | None = None


class Limits(BaseModel):
    """Per-request routing limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cost_weight: CostWeight | None = Field(
        None,
        description=f"quality - cost_weight * cost / cost_scale, in [0, {MAX_COST_WEIGHT:g}]; default: the artifact's",
    )
    candidates: list[ModelName] | None = Field(
        None, min_length=1, max_length=1024, description="choose only among these catalog models"
    )
    max_cost_usd: NonNegative | None = Field(
        None, description="exclude models predicted to cost more (the cheapest candidate always remains)"
    )
    latency_budget_s: Positive | None = Field(
        None, description="exclude models predicted to be slower (the fastest candidate always remains)"
    )


class RouteRequest(Limits):
    """``POST /v1/route``: exactly one of ``prompt`` or ``messages`` (the last user message is routed), plus
    limits. Strings must be valid Unicode and numbers finite (400 otherwise)."""

    prompt: str | None = Field(None, description="the text to route; give this or messages, not both")
    messages: list[Message] | None = Field(
        None,
        min_length=1,
        description="a chat; its last user message is routed; give this or prompt, not both",
    )

    @model_validator(mode="after")
    def _one_input(self) -> RouteRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class RouteResponse(BaseModel):
    model: str
    scores: dict[str, float | None]
    propensity: float
    decision_id: str
    policy_version: str
    cost_weight: float
    estimates: dict[str, dict[str, float]]
    durable: bool = Field(
        description="the decision's log row was synced before this answer (feedback for it cannot be lost)"
    )


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; ``model`` is ``router`` or ``router-<cost_weight>``.

    Every other OpenAI field (temperature, tools, ...) passes through to the upstream. ``router`` (e.g. via
    the OpenAI client's ``extra_body``) carries per-request limits and is not forwarded.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: ModelName
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    router: Limits | None = None


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: the judged quality of a decision's answer (and, optionally, its cost and latency)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    decision_id: Annotated[str, Field(min_length=1, max_length=128)]
    quality: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    cost_usd: NonNegative | None = None
    latency_s: NonNegative | None = None


class FeedbackResponse(BaseModel):
    decision_id: str
    stored: bool


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    artifact: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None,
        description="artifact directory or models:/NAME/VERSION; default: the one the service started with",
    )
