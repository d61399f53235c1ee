"""Request and response models. `/classify` speaks vLLM's shape, so a vLLM client works unchanged."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# Plain `str`, not constrained: blank text and text that is not valid Unicode are refused by the
# service with a 422 naming the item (`input.3`), which a schema constraint would report as `input`.
Fields = Annotated[dict[str, Any], Field(min_length=1)]
InputItem = Union[str, Fields]


class ClassifyRequest(BaseModel):
    """`input` is pre-formatted text (a string or a list of strings, as vLLM takes it) or
    structured task fields (an object or list of objects, e.g. `{"premise": ..., "hypothesis": ...}`)
    that the service formats with the task's template from the contract (`contract.tasks`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="served model name (see GET /v1/models)", min_length=1, max_length=256)
    input: Union[str, Fields, Annotated[list[InputItem], Field(min_length=1)]] = Field(
        ..., description="text(s) or task field object(s); which fields depends on the model's task (GET /v1/models)")
    # strict: "yes", "1" or 1 are not booleans; a client sending them has a bug worth hearing about.
    truncate: bool = Field(True, strict=True, description="cut over-long inputs (their beginning) instead of answering 422")
    truncate_prompt_tokens: int | None = Field(None, ge=1, description="vLLM's name: keep at most N tokens")
    user: str | None = Field(None, description="accepted for vLLM/OpenAI compatibility; unused")

    def items(self) -> list[InputItem]:
        return self.input if isinstance(self.input, list) else [self.input]


class ClassificationData(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int
    truncated: bool = Field(False, description="the input was cut to the model's max tokens")


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0


class ClassifyResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"classify-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


class CotRequest(ClassifyRequest):
    """`/classify/cot`: the same request plus the paper's decoding knobs (§E.6 defaults)."""

    temperature: float = Field(0.1, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(0.7, gt=0.0, le=1.0)
    max_new_tokens: int = Field(500, ge=1, description="capped by the server's cot_max_new_tokens")
    min_new_tokens: int = Field(0, ge=0, description="decode at least this many tokens (vLLM's min_tokens): "
                                                     "to measure the cost of a fixed CoT length")
    # vLLM's bounds (a signed 64-bit integer): torch.manual_seed raises on a larger one, which inside
    # a shared generation batch would fail every request in it.
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1,
                             description="sampling seed for reproducible outputs (a signed 64-bit integer)")


class CotData(ClassificationData):
    label: str | None = Field(..., description="the answer the generated text settles on; null when it names none")
    probs: list[float] = Field(..., description="1.0 on the parsed label, 0.0 elsewhere (all 0.0 when unparsed)")
    rationale: str
    generated_tokens: int
    parsed: bool = Field(..., description="an answer was found in the generated text (else label is null)")


class CotResponse(ClassifyResponse):
    data: list[CotData]  # type: ignore[assignment]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    task: str
    labels: list[str]
    fields: list[str]
    template: str | None = Field(None, description="how a fields object becomes the model's input text, with "
                                 "each field shown as <name>; a plain string input is used as it is")
    max_length: int
    pooling: str
    base_model: str | None
    contract_version: str
    metrics: dict[str, Any]
    cot_prompt_version: str | None = Field(None, description="tag of the /classify/cot prompt; null when disabled")
    quantization: dict[str, Any] | None = Field(None, description="an int8 export's scheme, calibration and layers "
                                                "kept in float (`dhrd quantize`); null for a float export")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
