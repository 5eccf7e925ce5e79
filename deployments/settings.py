"""Typed application arguments (``args`` in serve_config.yaml) and each deployment's slice."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.faces import DETECTORS
from classifiers.model import DEFAULT_MODEL
from classifiers.policies import Policy, check_policies, faces_problems
from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.schemas import MAX_BATCH_IMAGES
from classifiers.trained import NAME_PATTERN
from deployments.forward import MAX_LANES


ENV_OVERRIDES = {"MODERATION_MODEL": "model", "MODERATION_DEVICE": "device",
                 "MODERATION_HEADS_DIR": "heads_dir"}
BANKS_URL_ENV = "MODERATION_BANKS_URL"  # overrides known_images.banks_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchSettings(_Strict):
    """Limits for downloading ``url`` images (the ``ImageFetcher`` deployment)."""

    timeout_s: float = Field(5.0, gt=0, description="Total time for one download, redirects included.")
    connect_timeout_s: float = Field(2.0, gt=0)
    max_bytes: int = Field(10_000_000, gt=0, description="Downloads larger than this are cut off (413).")
    max_redirects: int = Field(3, ge=0)
    allowed_ports: tuple[int, ...] = (80, 443)
    allowed_networks: tuple[str, ...] = Field(
        (), description="Extra networks (CIDR) that may be fetched from, e.g. for a private "
        "deployment; empty by default, so only public addresses are reachable.",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value


class RuntimeConfig(_Strict):
    """Model settings that may change without a restart (the ``ClipModel`` user_config)."""

    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, le=5, description="Extra time a batch waits for more images. Arrivals during "
        "a forward pass wait at a gate and join the next batch together, so 0 loses no batching "
        "under load and adds no latency to a lone request.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Flag thresholds by classifier: built-ins, and trained "
        "heads (over the threshold in the head file)."
    )
    heads_version: str | None = Field(
        None, description="Any value (kept as text); a new one makes every model replica read "
        "`heads_dir` again at once (without it they notice changes within `heads_poll_s`).",
    )

    policies: tuple[Policy, ...] = Field(
        (), description="Rules that combine classifiers and faces, e.g. block when a face is a "
        "minor and nudity is flagged (see docs/faces.md); each holds when all its `when` "
        "conditions do, and adds its `action` (`block` flags, `review` asks for a person).",
    )

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: tuple[Policy, ...]) -> tuple[Policy, ...]:
        check_policies(value)
        return value

    @field_validator("heads_version", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> str | None:
        return None if value is None else str(value)

    @field_validator("thresholds")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        # Trained heads come and go with heads_dir: any name a head could have is accepted.
        unknown = {n for n in value if n not in BUILTIN_CLASSIFIERS and not NAME_PATTERN.fullmatch(n)}
        if unknown:
            raise ValueError(f"thresholds for unknown classifiers {sorted(unknown)}")
        if any(not 0 < t <= 1 for t in value.values()):
            raise ValueError("thresholds must be in (0, 1]")
        return value


class KnownImagesSettings(_Strict):
    """Hash banks (lists of known images with an action) and the result cache."""

    banks_url: str = Field(
        "sqlite:///~/.local/share/clip-moderation/banks.db", description="Where the hash banks "
        "live: `sqlite:///<path>` (one file on this machine: every replica must be able to open "
        "it) or `postgresql://user:password@host:5432/db` for a multi-node cluster.",
    )
    poll_s: float = Field(
        2.0, gt=0, le=3600, description="How often each model replica reads bank changes.",
    )
    pdq: bool = Field(
        True, description="Make every image's PDQ hash (about 6 ms of CPU per 1024x768 image; "
        "false: SHA-256 only, and PDQ bank entries match nothing).",
    )
    pdq_turned: bool = Field(
        True, description="Also match the image turned (90, 180, 270 degrees) and mirrored: PDQ's 8 "
        "dihedral hashes come from one pass, so a rotated or mirrored copy, or a bank hash made "
        "without applying EXIF orientation (as ThreatExchange's are), matches; 8 index lookups.",
    )
    max_distance: int = Field(
        31, ge=0, le=64, description="A PDQ hash within this many bits (of 256) of a bank entry matches.",
    )
    min_pdq_quality: int = Field(
        50, ge=0, le=100, description="Images whose PDQ quality is below this (flat, featureless "
        "images) are matched by SHA-256 only: their PDQ hashes match too much.",
    )
    cache_size: int = Field(
        10_000, ge=0, description="Images whose embeddings each model replica keeps by SHA-256 "
        "(about 2 KB a frame for ViT-B/32); a repeat is scored without a decode or forward pass. 0: off.",
    )
    cache_ttl_s: float = Field(600, gt=0, description="How long an image stays in the result cache.")
    max_import_bytes: int = Field(
        200_000_000, gt=0, description="Body limit of a bank import (a CSV/TSV of hashes).",
    )

    @field_validator("banks_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("banks_url must start with sqlite:/// or postgresql://")
        return value


class FacesSettings(_Strict):
    """Face detection and per-face attributes (``faces`` in a response), run for requests that
    ask for ``face_attributes`` (the default set does)."""

    enabled: bool = Field(True, description="Find faces; false: `faces` is never in an answer.")
    detector: str = Field(
        "auto", description="`yunet` (libfacedetection's YuNet: 3.5x faster than Haar, finds turned "
        "faces; `pip install 'clip-moderation[yunet]'`, wheels for Python <= 3.11 on x86-64 Linux), "
        "`haar` (OpenCV's frontal-face cascade, always installed), or `auto`: YuNet where installed, else Haar.",
    )
    max_faces: int = Field(10, ge=1, le=100, description="At most this many faces (the largest) per image.")
    min_face_px: int = Field(
        32, ge=8, le=4096, description="Smallest face reported, in the original image's pixels (each side).",
    )
    detect_max_side: int = Field(
        512, ge=128, le=4096, description="Detection runs on a copy of the image scaled to at most this many "
        "pixels on its longer side: cost grows with its square; a face smaller than "
        "`min_face_px` or than ~20 px at this scale is not found.",
    )
    min_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Faces below this detector confidence are dropped (YuNet's own "
        "score; Haar: 0.5 = 7 agreeing windows).",
    )
    attributes: bool = Field(
        True, description="Score each face's crop with CLIP (one more image in the model's batches per "
        "face); false: boxes only, for blurring or counting, at the detector's cost alone.",
    )
    crop_margin: float = Field(
        0.25, ge=0.0, le=1.0, description="Added around a face (a share of its size, each side) "
        "for the crop CLIP scores its attributes on.",
    )

    @field_validator("detector")
    @classmethod
    def _detector(cls, value: str) -> str:
        if value not in DETECTORS:
            raise ValueError(f"faces.detector must be one of {', '.join(DETECTORS)}")
        return value


class ModelSettings(_Strict):
    """How the ``ClipModel`` replicas load and run the checkpoint."""

    model: str = Field(DEFAULT_MODEL, description="Hugging Face model id or a local directory.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: str = Field("auto", pattern=r"^(auto|float32|float16|bfloat16)$")
    torch_threads: int | None = Field(
        None, ge=1, description="Intra-op threads; default: the CPUs Ray assigned the replica."
    )
    forward_lanes: int | None = Field(
        None, ge=1, le=MAX_LANES, description="Forward passes run at once per replica, each with its "
        "share of the torch threads and its own image tower (traced, or compiled by OpenVINO); a lone image still gets all "
        "threads. Default: 2 on CPU with 2+ threads (more images/s on a busy machine), 1 on GPU.",
    )
    engine: str = Field(
        "auto", pattern=r"^(auto|torch|openvino)$", description="What runs the image tower: "
        "`torch`, `openvino` (CPU; `pip install 'clip-moderation[openvino]'`), or `auto`: "
        "where OpenVINO is installed, on a CPU, both are measured at start-up: the lanes run OpenVINO if it "
        "was at least 5 % faster with every lane busy, a lone image (all threads) if it was a tenth quicker "
        "alone (one lane: one engine for both).",
    )
    max_image_pixels: int = Field(50_000_000, gt=0)
    jpeg_draft: bool = Field(True, description="Decode large JPEGs at reduced scale (faster).")
    max_frames: int = Field(
        1, ge=1, le=16, description="Animated images: frames scored (evenly spaced); each "
        "label's score is its maximum over them. 1 = first frame only.",
    )
    custom_head_cache_size: int = Field(256, ge=1)
    decode_threads: int = Field(2, ge=1, le=64, description="Image decode threads per replica.")
    nice: int = Field(
        10, ge=0, le=19, description="Added to the CPU niceness of each model replica's forward "
        "and decode threads, so the ingress, proxy and fetcher on the same machine run first "
        "when they have work (fast 503s under overload); the model still gets every idle cycle. "
        "0: same priority as everything else.",
    )
    heads_dir: str | None = Field(
        None, description="A folder of trained heads (`moderation train`), each served as a "
        "classifier; every model replica must be able to read it (a shared path on a cluster).",
    )
    heads_poll_s: float = Field(
        2.0, ge=0, le=3600, description="How often each model replica looks for changed head "
        "files (0: only on reload or a new `heads_version`).",
    )
    calibration: str | None = Field(
        None, description="A calibration file from `moderation evaluate --calibrate` "
        "(per-classifier temperatures); every model replica must be able to read it.",
    )
    known_images: KnownImagesSettings = KnownImagesSettings()
    faces: FacesSettings = FacesSettings()


class ApiKey(_Strict):
    """One API key, stored as the SHA-256 of the key (never the key itself)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Who holds the key (for limits and logs)."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    rate_limit: str | None = Field(None, description="This key's limit, overriding the default.")
    admin: bool = Field(False, description="May manage the hash banks (`/v1/banks`).")


class AuthSettings(_Strict):
    """Optional API keys and per-key rate limits (off when ``api_keys`` is empty)."""

    api_keys: tuple[ApiKey, ...] = ()
    rate_limit: str | None = Field(
        None, description="Default per-key limit in the `limits` notation, e.g. '60/minute' or "
        "'10/second;600/hour'; none by default.",
    )
    rate_limit_storage: str = Field(
        "async+memory://", description="Where limit counters live: in memory per ingress "
        "replica (so N ingress replicas allow up to N times the limit), or shared by all, e.g. "
        "'async+redis://redis:6379' (needs `pip install 'limits[async-redis]'`).",
    )

    @field_validator("api_keys")
    @classmethod
    def _unique(cls, value: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        for attr in ("name", "sha256"):
            seen = [getattr(key, attr) for key in value]
            if len(seen) != len(set(seen)):
                raise ValueError(f"api_keys: duplicate {attr}")
        for key in value:
            _check_limit(key.rate_limit)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _limit(cls, value: str | None) -> str | None:
        return _check_limit(value)

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        """An async storage `limits` can build (its driver installed); no connection is made."""
        from limits.errors import ConfigurationError
        from limits.storage import storage_from_string

        if not value.startswith("async+"):
            raise ValueError("rate_limit_storage must be an async storage URI, e.g. async+memory:// "
                             "or async+redis://host:6379")
        try:
            storage_from_string(value)
        except ConfigurationError as exc:
            raise ValueError(f"rate_limit_storage: {exc}") from None
        return value

    @model_validator(mode="after")
    def _limits_need_keys(self) -> "AuthSettings":
        if self.rate_limit and not self.api_keys:
            raise ValueError("auth.rate_limit is per API key: add api_keys, or remove rate_limit")
        return self


def _check_limit(value: str | None) -> str | None:
    if value is not None:
        from limits import parse_many

        parse_many(value)  # ValueError on a bad limit string
    return value


class IngressSettings(_Strict):
    max_upload_bytes: int = Field(10_000_000, gt=0)
    max_images_per_request: int = Field(
        32, ge=1, le=MAX_BATCH_IMAGES, description="Images one `POST /v1/classify/batch` may carry.",
    )
    max_request_bytes: int = Field(
        64_000_000, gt=0, description="Body limit of `POST /v1/classify/batch` (all its images "
        "together; each image is also held to `max_upload_bytes`).",
    )
    images_per_model_call: int = Field(
        16, ge=1, le=MAX_BATCH_IMAGES, description="Uploaded images of one `POST /v1/classify/batch` "
        "sent to a model replica in one call (about half the serving CPU per image of a call each; "
        "each image still joins the forward batches on its own and counts for the autoscaler). 1: a "
        "call per image, spread over replicas image by image.",
    )
    coalesce_uploads_ms: float = Field(
        5.0, ge=0, le=100, description="While other uploads are out at the model, a single-image upload "
        "(`POST /v1/classify`) waits up to this long for more with the same options, and they go to a "
        "model replica in one call (up to `images_per_model_call`; each image is still decoded and "
        "batched on its own and fails alone, but the call answers when its last image is done; once "
        "every caller of a call has left, the call is cancelled). An upload that finds fewer than "
        "`coalesce_min_out` others out goes at once. 0: a call per upload.",
    )
    coalesce_min_out: int = Field(
        8, ge=1, le=10_000, description="The fewest uploads already out at the model (from this ingress "
        "replica) for an arriving upload to wait for group-mates (`coalesce_uploads_ms`). Below it, a "
        "group rarely forms within the wait and the wait is lost: at 2-4 in flight on 2 vCPUs it cost "
        "4-27 % of the throughput (docs/benchmarks.md).",
    )
    uploads_by_value: bool = Field(
        True, description="Uploads reach a model replica by value, over the gRPC server Serve runs in "
        "each replica (a random port on every interface), instead of as a Ray actor task: about 1 ms "
        "less per call. Calls carrying over 2 MiB always go as tasks, through Ray's object store. "
        "Turn off where nodes cannot reach each other's ephemeral ports (docs/operations.md).",
    )
    request_timeout_s: float = Field(30.0, gt=0)
    queue_deadline_ms: float = Field(
        500, gt=0, le=60_000, description="Longest a request should wait for its forward pass: "
        "each ingress replica admits no more classify requests than its models complete in "
        "this time (at least `min_inflight`) and answers the rest 503 `overloaded` at once; a "
        "model replica answers 503 to an HTTP request still waiting after twice this.",
    )
    min_inflight: int = Field(
        32, ge=1, description="Classify requests each ingress replica always admits at once, "
        "however slowly the models have been answering (see `queue_deadline_ms`).",
    )
    auth: AuthSettings = AuthSettings()
    known_images: KnownImagesSettings = KnownImagesSettings()


class AppArgs(ModelSettings, RuntimeConfig, IngressSettings):
    """Everything ``args:`` in serve_config.yaml may set, flat; each deployment gets its slice.

    Env MODERATION_MODEL, MODERATION_DEVICE, MODERATION_HEADS_DIR and MODERATION_BANKS_URL,
    when set, override ``model``, ``device``, ``heads_dir`` and ``known_images.banks_url``
    (read by the app builder, never at import time).
    """

    fetch: FetchSettings = FetchSettings()

    @model_validator(mode="after")
    def _policies_fit_faces(self) -> "AppArgs":
        problems = faces_problems(self.policies, self.faces.enabled, self.faces.attributes, self.faces.max_faces)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def with_env(self, environ: Mapping[str, str]) -> "AppArgs":
        """These args with the ``ENV_OVERRIDES`` variables in ``environ`` laid over."""
        overrides: dict = {field: environ[var] for var, field in ENV_OVERRIDES.items() if environ.get(var)}
        if environ.get(BANKS_URL_ENV):
            overrides["known_images"] = {**self.known_images.model_dump(), "banks_url": environ[BANKS_URL_ENV]}
        return AppArgs.model_validate({**self.model_dump(), **overrides}) if overrides else self

    def _slice(self, cls: type[_Strict]) -> _Strict:
        return cls(**self.model_dump(include=set(cls.model_fields)))

    def model_settings(self) -> ModelSettings:
        return self._slice(ModelSettings)

    def runtime_config(self) -> RuntimeConfig:
        return self._slice(RuntimeConfig)

    def ingress_settings(self) -> IngressSettings:
        return self._slice(IngressSettings)
