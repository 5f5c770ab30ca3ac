"""The service's contract: request options and answers as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from ocrloop.config import PiiPolicy, Prompt, Resolution
from ocrloop.pii import PII_KINDS

BUSINESS_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class OcrOptions(BaseModel):
    """How to read a document. Unset prompt and mode: the serving model's own (those it was trained with).

    Options are optional by being absent, not by being null: a multipart form cannot carry a null.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a silent default

    prompt: Prompt = Field(None, description="Prompt template; default: the model's own.")
    mode: Resolution = Field(None, description="Resolution mode; default: the model's own.")
    business: str = Field(None, pattern=BUSINESS_PATTERN, description="Read with this business's champion (one the "
                                                                      "workspace knows); default: the general one.")
    model: str = Field(None, max_length=200, description="Read with this registered model version instead of the "
                                                          "champion (e.g. a challenger; see GET /v1/models).")
    format: Literal["json", "md"] = Field("json", description="json: the answer below; md: the text as markdown.")
    pii_policy: PiiPolicy = Field(None, description="allow, redact or reject personal data; default: serve.pii_policy.")


class OcrForm(OcrOptions):
    """The multipart body: the document, and the same options as form fields (they win over query options).

    The document may also be sent as the raw request body (``Content-Type: image/png``, ``application/pdf``, ...).
    """

    file: UploadFile = Field(None, description="The image (PNG, JPEG, WebP, TIFF, BMP) or PDF to read.")


class PageAnswer(BaseModel):
    page: int = Field(description="1-based page number.")
    width: int = Field(description="Page width in pixels, as read.")
    height: int = Field(description="Page height in pixels, as read.")
    text: str = Field(description="The page's text, after the PII policy.")
    seconds: float = Field(description="From the page's arrival at the reader to its text.")


class OcrAnswer(BaseModel):
    request_id: str
    model: str = Field(description="The model version that read the document.")
    business: str | None
    prompt: str
    mode: str
    pages: list[PageAnswer]
    text: str = Field(description="All pages, separated by a blank line.")
    pii: dict[str, int] = Field(description=f"Personal data found, per kind ({', '.join(PII_KINDS)}).")
    pii_policy: str
    seconds: float


class ErrorAnswer(BaseModel):
    error: str = Field(description="One line saying what was wrong.")
    request_id: str | None = None


class HealthAnswer(BaseModel):
    status: Literal["ok"]
    registry: bool
    serving: dict[str, str]
    requests_in_progress: int


class ReadyAnswer(BaseModel):
    status: Literal["ready"]
    model: str
    seconds_to_read_a_page: float


class ModelVersion(BaseModel):
    name: str
    family: str
    business: str | None
    created_at: str
    base_model: str


class ModelsAnswer(BaseModel):
    base_model: str
    challenger: str | None = Field(description="The newest model version that serves nothing (the last loop's rejected "
                                               "challenger, or one not yet judged), if any.")
    champions: dict[str, str]
    serving: dict[str, str]
    businesses: list[str]
    versions: list[ModelVersion]
