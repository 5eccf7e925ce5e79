"""The HTTP API's request and response models (importable without Ray or torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.labels import MAX_CUSTOM_LABELS, MIN_CUSTOM_LABELS

MAX_BATCH_IMAGES = 256  # the most max_images_per_request may be set to

if TYPE_CHECKING:
    from classifiers.results import Classification


class ClassifyOptions(BaseModel):
    """What to run on the image; shared by JSON bodies and multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    classifiers: list[str] | None = Field(
        None, description="Built-in classifiers to run; all of them when omitted. "
        "Send an empty list to run only the custom `labels`.", max_length=32,
    )
    labels: list[str] | None = Field(
        None, min_length=MIN_CUSTOM_LABELS, max_length=MAX_CUSTOM_LABELS,
        description="A custom exclusive classifier: label texts of your choosing (result `custom`).",
        examples=[["a cat", "a dog", "a car"]],
    )
    unsafe_labels: list[str] = Field(
        default_factory=list, max_length=MAX_CUSTOM_LABELS,
        description="Which of `labels` count as unsafe for `flagged`.",
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Flag threshold for the custom classifier (default 0.5)."
    )

    @model_validator(mode="after")
    def _something_to_run(self) -> "ClassifyOptions":
        if self.classifiers == [] and not self.labels:
            raise ValueError("nothing to run: no classifiers and no labels")
        if (self.unsafe_labels or self.threshold is not None) and not self.labels:
            raise ValueError("unsafe_labels and threshold apply to custom labels: send labels too")
        return self


class ClassifyJsonRequest(ClassifyOptions):
    """JSON body of ``POST /v1/classify``: exactly one of ``url`` or ``image_base64``."""

    url: str | None = Field(None, min_length=1, max_length=4096, examples=["https://example.com/cat.jpg"])
    image_base64: str | None = Field(None, description="The image file, base64-encoded.")

    @model_validator(mode="after")
    def _one_image(self) -> "ClassifyJsonRequest":
        if (self.url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of `url` or `image_base64`")
        return self


class BatchImage(BaseModel):
    """One image of ``POST /v1/classify/batch``: exactly one of ``url`` or ``image_base64``."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=4096)
    image_base64: str | None = Field(None, description="The image file, base64-encoded.")
    id: str | None = Field(None, max_length=256, description="Yours: echoed in this image's item.")

    @model_validator(mode="after")
    def _one_image(self) -> "BatchImage":
        if (self.url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of `url` or `image_base64`")
        return self


class ClassifyBatchJsonRequest(ClassifyOptions):
    """JSON body of ``POST /v1/classify/batch``: many images, one set of options for all."""

    images: list[BatchImage] = Field(
        min_length=1, max_length=MAX_BATCH_IMAGES,
        description="At most `max_images_per_request` (server setting, 32 by default).",
    )


class ClassifierResult(BaseModel):
    """One classifier's verdict."""

    name: str
    kind: Literal["exclusive", "attributes"]
    scores: dict[str, float] = Field(description="Every label's score, in declaration order.")
    top_label: str
    top_score: float
    unsafe_labels: list[str]
    unsafe_score: float = Field(
        description="Exclusive: summed probability of unsafe labels; attributes: the largest."
    )
    threshold: float
    flagged: bool = Field(description="unsafe_score >= threshold (never true without unsafe labels).")


class Timing(BaseModel):
    total_ms: float
    decode_ms: float
    inference_ms: float = Field(description="Waiting for a batch and the forward pass.")
    batch_size: int = Field(1, description="How many images shared this image's forward pass (0: cached, none ran).")


class ImageHashes(BaseModel):
    """The image's hashes: what hash banks match, and what to add to one."""

    sha256: str = Field(description="SHA-256 of the bytes as received (hex).")
    pdq: str | None = Field(None, description="PDQ perceptual hash of the first frame, upright (256 bits, hex).")
    pdq_quality: int | None = Field(None, description="PDQ's quality, 0-100; below `min_pdq_quality` "
                                    "(default 50) the image is matched by SHA-256 only.")


class BankMatch(BaseModel):
    """A hash-bank entry the image matched."""

    bank: str
    action: Literal["block", "review", "allow"]
    kind: Literal["pdq", "sha256"]
    distance: int = Field(description="Differing bits (PDQ, of 256); 0 for SHA-256.")
    entry_id: str | None = Field(None, description="The entry's own id, as it was added.")


class FaceResult(BaseModel):
    """One detected face."""

    box: list[int] = Field(min_length=4, max_length=4, description="[x, y, width, height] in the original "
                           "image's pixels, EXIF orientation applied.", examples=[[178, 63, 89, 112]])
    confidence: float = Field(description="The detector's confidence, 0-1.")
    attributes: dict[str, float] = Field(description="CLIP's score for each face attribute (minor, smiling, "
                                         "glasses, facial_hair), made on the face's crop.")


class PolicyResult(BaseModel):
    """A configured policy that held for the image."""

    name: str
    action: Literal["block", "review"]


_DECISION = (
    "True if any classifier flagged the image or a `block` policy held, unless it matched a hash "
    "bank: a `block` match flags it whatever the scores, an `allow` match (and no `block` match) clears it."
)
_ACTION = ("A bank's `block` or `allow`, else the strongest of a bank's `review` and the policies' actions "
           "(`block` > `review`); none without either.")
_FACES = ("Faces found, largest first, when `face_attributes` was asked for (the default set) and the "
          "service finds faces; null otherwise.")


class ClassifyResponse(BaseModel):
    """``POST /v1/classify`` result."""

    request_id: str
    model: str = Field(description="The checkpoint that served: a hub id or a local directory.")
    model_family: str = Field("clip", description="Its family: `clip`, `siglip` or `siglip2`.")
    flagged: bool = Field(description=_DECISION)
    action: Literal["block", "review", "allow"] | None = Field(None, description=_ACTION)
    results: dict[str, ClassifierResult]
    matches: list[BankMatch] = Field(default_factory=list, description="Hash-bank entries matched, nearest first.")
    hashes: ImageHashes | None = None
    cached: bool = Field(False, description="Scored from the embedding of the same bytes seen recently "
                         "(no decode, no forward pass); scores, thresholds and banks are today's.")
    faces: list[FaceResult] | None = Field(None, description=_FACES)
    policies: list[PolicyResult] = Field(default_factory=list, description="Configured policies that held.")
    timing: Timing

    @classmethod
    def from_classification(
        cls, result: "Classification", request_id: str, total_ms: float
    ) -> "ClassifyResponse":
        """The API view of the model's ``Classification`` (pure: no I/O)."""
        return cls(
            request_id=request_id,
            model=result.model,
            model_family=result.model_family,
            flagged=result.flagged,
            action=result.action,
            results={
                r.name: ClassifierResult.model_validate(r, from_attributes=True)
                for r in result.results
            },
            matches=[BankMatch.model_validate(m, from_attributes=True) for m in result.matches],
            hashes=ImageHashes.model_validate(result.hashes, from_attributes=True) if result.hashes else None,
            cached=result.cached,
            faces=None if result.faces is None else [
                FaceResult(box=list(f.box), confidence=f.confidence, attributes=f.attributes) for f in result.faces],
            policies=[PolicyResult(name=p.name, action=p.action) for p in result.policies],
            timing=Timing(
                total_ms=round(total_ms, 2), decode_ms=result.decode_ms,
                inference_ms=result.inference_ms, batch_size=result.batch_size,
            ),
        )


class ItemError(BaseModel):
    """Why one image of a multi-image request has no result: the code and status it would
    have had as a request of its own."""

    code: str = Field(examples=["image_decode_error"])
    message: str
    status: int = Field(examples=[422])


class BatchItem(BaseModel):
    """One image's outcome, in the order the images were sent: a result, or an error."""

    index: int
    id: str | None = Field(None, description="The image's `id` (JSON) or file name (multipart).")
    flagged: bool | None = None
    action: Literal["block", "review", "allow"] | None = None
    results: dict[str, ClassifierResult] | None = None
    matches: list[BankMatch] | None = None
    hashes: ImageHashes | None = None
    cached: bool | None = None
    faces: list[FaceResult] | None = None
    policies: list[PolicyResult] | None = None
    timing: Timing | None = None
    error: ItemError | None = None


class ClassifyBatchResponse(BaseModel):
    """``POST /v1/classify/batch`` result: one item per image, in order."""

    request_id: str
    model: str | None = Field(description="The checkpoint that served (none if no image was classified).")
    model_family: str | None = None
    flagged: bool = Field(description="True if any image was flagged.")
    errors: int = Field(description="How many items carry an error instead of a result.")
    items: list[BatchItem]
    total_ms: float

    @classmethod
    def from_outcomes(
        cls, outcomes: list, ids: list[str | None], request_id: str, total_ms: float
    ) -> "ClassifyBatchResponse":
        """The API view of each image's ``Classification`` or ``ModerationError`` (pure)."""
        items, served = [], None
        for index, (outcome, item_id) in enumerate(zip(outcomes, ids, strict=True)):
            if hasattr(outcome, "results"):
                # an item's total: its time in the model replica (decode, wait, forward pass)
                one = ClassifyResponse.from_classification(outcome, request_id,
                                                           outcome.decode_ms + outcome.inference_ms)
                items.append(BatchItem(index=index, id=item_id, flagged=one.flagged, action=one.action,
                                       results=one.results, matches=one.matches, hashes=one.hashes,
                                       cached=one.cached, faces=one.faces, policies=one.policies,
                                       timing=one.timing))
                served = served or outcome
            else:
                items.append(BatchItem(index=index, id=item_id, error=ItemError(
                    code=outcome.code, message=outcome.message, status=outcome.status)))
        return cls(
            request_id=request_id, model=served.model if served else None,
            model_family=served.model_family if served else None,
            flagged=any(item.flagged for item in items), errors=sum(item.error is not None for item in items),
            items=items, total_ms=round(total_ms, 2),
        )


class ClassifierInfo(BaseModel):
    """One classifier: a built-in (zero-shot, kind `exclusive` or `attributes`) or a head
    trained with `moderation train` (kind `trained`; `label_kind` says how its labels relate)."""

    name: str
    kind: Literal["exclusive", "attributes", "trained"]
    description: str
    labels: list[str]
    unsafe_labels: list[str]
    threshold: float
    temperature: float = Field(
        1.0, description="Calibration temperature applied to this classifier's logits (1 = none)."
    )
    prompts: dict[str, list[str]] = Field(default_factory=dict, description="Built-ins only.")
    label_kind: Literal["exclusive", "attributes"] | None = Field(
        None, description="Trained heads: one label per image (softmax) or a yes/no per label."
    )
    version: str | None = Field(None, description="Trained heads: the head file's content hash.")
    trained_on: dict | None = Field(None, description="Trained heads: the model it was trained on.")
    training: dict | None = Field(None, description="Trained heads: data set, image counts, settings.")
    metrics: dict | None = Field(None, description="Trained heads: metrics on held-out images.")


class HeadsStatus(BaseModel):
    """The trained heads a model replica serves, from its heads directory."""

    dir: str | None = None
    version: str = Field(description="Changes whenever any served head does (`none`: no heads).")
    poll_s: float = 0.0
    loaded: dict[str, str] = Field(default_factory=dict, description="Head name to its version.")
    refused: dict[str, str] = Field(default_factory=dict, description="Head file to why it is not served.")


class ModelInfo(BaseModel):
    """The checkpoint a model replica serves, and how it reads images and scores."""

    family: str = Field(description="`clip`, `siglip` or `siglip2`.", examples=["siglip"])
    checkpoint: str = Field(description="As configured: a hub id or a local directory.")
    architecture: str = Field(examples=["SiglipModel"])
    revision: str | None = Field(None, description="The hub commit, where the hub supplied it.")
    embedding_dim: int
    preprocessing: Literal["crop", "squash", "patches"] = Field(
        description="`crop`: shortest edge resized, centre crop (CLIP); `squash`: the whole "
        "image resized to a square (SigLIP); `patches`: aspect ratio kept (SigLIP 2 NaFlex).",
    )
    image_size: int | None = Field(None, description="Side of the square input (not for `patches`).")
    max_patches: int | None = None
    scoring: Literal["softmax", "sigmoid"] = Field(
        description="How attribute sets are read: `softmax` of each label against its negation "
        "(CLIP), or `sigmoid` of each label's logit with the model's bias (SigLIP). Exclusive "
        "sets are a softmax either way.",
    )
    logit_scale: float
    logit_bias: float | None = None
    dtype: str
    device: str
    engine: str = Field("torch", description="What runs the image tower's batches: `torch` or `openvino`.")
    lone_image_engine: str | None = Field(
        None, description="What runs an image that arrives alone, on all the replica's threads "
        "(`engine: auto` can pick the other engine for it, where that one is quicker alone).")


class FacesInfo(BaseModel):
    """How faces are found and what is said of each (``faces`` in a classify answer)."""

    detector: str = Field(description="`yunet` or `haar` (docs/faces.md).")
    attributes: list[str]
    prompts: dict[str, list[str]] = Field(description="Each attribute's prompts (its negation's are left out).")
    max_faces: int
    min_face_px: int


class ClassifiersResponse(BaseModel):
    model: str
    model_info: ModelInfo | None = None
    classifiers: list[ClassifierInfo]
    heads: HeadsStatus | None = None
    faces: FacesInfo | None = Field(None, description="Null when the service does not look for faces.")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    model_family: str = "clip"


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unknown_classifier"])
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """The one error body, for every 4xx and 5xx."""

    error: ErrorDetail
