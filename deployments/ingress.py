"""The ``Ingress`` deployment: the HTTP API (FastAPI) in front of the fetcher and the model."""


import asyncio
import logging
import time
from functools import partial

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle

from classifiers.errors import ModerationError
from classifiers.results import Classification
from classifiers.schemas import (
    ClassifiersResponse, ClassifyBatchResponse, ClassifyResponse, HeadsStatus, HealthResponse,
)
from deployments.admission import Admission, AdmissionGate
from deployments.auth import ApiKeyGate, Gatekeeper
from deployments.coalesce import UploadCoalescer
from deployments.bank_routes import router as bank_router
from deployments.metrics import IngressMetrics, buffer_handle_counter
from deployments.openapi import BATCH_BODY, CLASSIFY_BODY
from deployments.parsing import BodySizeLimit, body_limit, parse_batch_request, parse_classify_request
from deployments.model_calls import BY_VALUE_MAX_BYTES, REPLICA_RESTARTING, missing_method, too_large_for_grpc
from deployments.responses import ERROR_RESPONSES, as_moderation_error, install_error_handlers, request_id_of
from deployments.settings import IngressSettings

logger = logging.getLogger("ray.serve")
STATIC_DIR = Path(__file__).parent / "static"  # the try-it page: plain HTML, CSS and JS


class _OlderModel(Exception):
    """The model replica that took a call predates ``try_classify_many``."""


class _TooLargeByValue(Exception):
    """A call by value, or its answer, exceeded the replica's gRPC message limit."""


app = FastAPI(
    title="CLIP image moderation",
    version="0.1.0",
    description="Zero-shot image moderation (nudity, gore, offensive, face attributes) "
    "and custom labels with CLIP, served by Ray Serve.",
)
install_error_handlers(app)
app.add_middleware(BodySizeLimit)
app.add_middleware(AdmissionGate)  # after the key check: a caller without a key is not counted
app.add_middleware(ApiKeyGate)  # added last: runs first
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
app.include_router(bank_router)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress(app)
class Ingress:
    def __init__(
        self, fetcher: DeploymentHandle, model: DeploymentHandle, settings: IngressSettings
    ) -> None:
        self.fetcher, self.model, self.settings = fetcher, model, settings
        for handle in (fetcher, model):
            buffer_handle_counter(handle)  # before options(): the copy shares the buffered counter
        # Both ways asked for by name: RAY_SERVE_THROUGHPUT_OPTIMIZED would make by value the default.
        # The fetcher's answer goes to the model as a call's argument: by reference, through Ray.
        self.fetcher = fetcher.options(_by_reference=True)
        self.model = model.options(_by_reference=True)
        self.model_by_value = model.options(_by_reference=False) if settings.uploads_by_value else self.model
        # Single-image uploads that arrive together share model calls (deployments/coalesce.py).
        self.uploads = UploadCoalescer(self._classify_group, settings.images_per_model_call,
                                       settings.coalesce_uploads_ms / 1000, settings.coalesce_min_out)
        self.metrics = IngressMetrics()
        app.state.max_body_bytes = body_limit(settings.max_upload_bytes)
        app.state.body_limits = {"/v1/classify/batch": settings.max_request_bytes,
                                 "/v1/banks/*/import": settings.known_images.max_import_bytes}
        app.state.metrics = self.metrics
        app.state.gatekeeper = Gatekeeper(settings.auth)  # used by the ApiKeyGate middleware
        from banks.store import BankStore

        # /v1/banks writes here; opened on first use (deployments/bank_routes.py)
        app.state.banks = partial(BankStore, settings.known_images.banks_url)
        app.state.banks_opening = asyncio.Lock()
        self.admission = app.state.admission = Admission(settings.queue_deadline_ms / 1000, settings.min_inflight)

    async def _call(self, response, timeout_s: float | None = None, many: bool = False):
        """The handle call's answer, or its failure as a ``ModerationError`` (``many``: a
        replica without ``try_classify_many`` raises ``_OlderModel``)."""
        try:
            return await asyncio.wait_for(response, timeout_s or self.settings.request_timeout_s)
        except TimeoutError:
            response.cancel()
            raise ModerationError("request_timeout", "the request took too long") from None
        except asyncio.CancelledError:  # the caller left (or a shared call's callers all did)
            response.cancel()
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # Not ours: a call by value brings back the replica's own cancellation (it stopped).
                raise ModerationError("model_unavailable", REPLICA_RESTARTING) from None
            raise
        except Exception as exc:  # noqa: BLE001 - every failure leaves as an error body
            if many and missing_method(exc, "try_classify_many"):
                raise _OlderModel from None
            if too_large_for_grpc(exc):
                raise _TooLargeByValue from None
            raise as_moderation_error(exc) from None

    @property
    def wait_limit_s(self) -> float:
        """How long an image may wait in a model replica for a forward pass before it answers 503
        ``overloaded`` instead (``ClipModel.try_classify``): twice the admission queue's deadline."""
        return 2 * self.settings.queue_deadline_ms / 1000

    async def _call_model(self, method: str, payload, size: int, model_kwargs: dict, many: bool = False):
        """``method`` of a model replica on ``payload`` (``size`` bytes of uploads): by value
        where they fit (``BY_VALUE_MAX_BYTES``), else through the object store; an answer too
        large for Serve's gRPC messages (4 MiB: many faces or bank matches) is asked for again
        by reference."""
        wait_limit_s = self.wait_limit_s
        model = self.model_by_value if size <= BY_VALUE_MAX_BYTES else self.model
        try:
            return await self._call(getattr(model, method).remote(payload, wait_limit_s=wait_limit_s, **model_kwargs),
                                    many=many)
        except _TooLargeByValue:
            logger.warning("a %s answer was too large for a gRPC message; asked again by reference", method)
        return await self._call(getattr(self.model, method).remote(payload, wait_limit_s=wait_limit_s, **model_kwargs),
                                many=many)

    async def _classify_one(self, url: str | None, data: bytes | None, model_kwargs: dict):
        """One image's ``Classification``, or its ``ModerationError`` (never raised: a bad
        image, a failed download or a replica that died is that image's answer)."""
        try:
            if url is None:
                return await self._call_model("try_classify", data, len(data), model_kwargs)
            # The fetcher's bytes go to the model through the object store, not through here.
            return await self._call(self.model.try_classify.remote(
                self.fetcher.fetch.remote(url), wait_limit_s=self.wait_limit_s, **model_kwargs))
        except ModerationError as error:
            return error

    async def _classify_group(self, data: list[bytes], model_kwargs: dict) -> list:
        """Several uploaded images in one model call: one outcome per image, in order. A model
        replica of an older version (no ``try_classify_many``, as during a rolling upgrade)
        gets them a call each instead."""
        self.metrics.upload_calls.inc()
        self.metrics.upload_call_images.inc(len(data))
        if len(data) == 1:
            return [await self._classify_one(None, data[0], model_kwargs)]
        try:
            outcomes = await self._call_model("try_classify_many", data, sum(map(len, data)), model_kwargs, many=True)
        except _OlderModel:
            self.metrics.upload_calls.inc(len(data))  # a call per image after all
            return list(await asyncio.gather(*(self._classify_one(None, image, model_kwargs) for image in data)))
        except ModerationError as error:  # the call itself failed (a replica died, a timeout)
            return [error] * len(data)
        if len(outcomes) != len(data):  # never expected; no image may get another's answer
            return [as_moderation_error(RuntimeError(f"{len(outcomes)} answers to {len(data)} images"))] * len(data)
        return outcomes

    async def _classify_entries(self, entries: list, model_kwargs: dict) -> list:
        """Outcomes of a batch request's images, in order. Uploaded images go to the model in
        calls of up to ``images_per_model_call`` (half the serving CPU per image of one call
        each; inside the replica each still joins the forward batches on its own); a URL is
        its own call, since the fetcher hands its bytes straight to the model."""
        per_call = self.settings.images_per_model_call
        uploads = [n for n, entry in enumerate(entries) if entry.url is None]
        groups = [uploads[k:k + per_call] for k in range(0, len(uploads), per_call)]
        urls = [n for n, entry in enumerate(entries) if entry.url is not None]
        done = await asyncio.gather(
            *(self._classify_group([entries[n].data for n in group], model_kwargs) for group in groups),
            *(self._classify_one(entries[n].url, None, model_kwargs) for n in urls),
        )
        outcomes: list = [None] * len(entries)
        for group, results in zip(groups, done):
            for n, result in zip(group, results):
                outcomes[n] = result
        for n, result in zip(urls, done[len(groups):]):
            outcomes[n] = result
        return outcomes

    @app.post(
        "/v1/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
        openapi_extra=CLASSIFY_BODY,
    )
    async def classify(self, request: Request) -> Response:
        """Classify one image: a multipart `file`, or JSON with `url` or `image_base64`."""
        start = time.perf_counter()
        parsed = await parse_classify_request(request, self.settings.max_upload_bytes)
        if not self.admission.try_enter():  # a place from here until the model's answer
            raise self.admission.overloaded()
        result = None
        try:
            if parsed.url is None:
                try:
                    result = await self.uploads.classify(parsed.data, parsed.model_kwargs)
                except Exception as exc:  # noqa: BLE001 - a shared call that failed as a whole
                    result = as_moderation_error(exc)
            else:
                result = await self._classify_one(parsed.url, None, parsed.model_kwargs)
        finally:
            self.admission.leave(classified=int(isinstance(result, Classification)))
        if isinstance(result, ModerationError):
            raise result
        self.metrics.classified(result)
        total_ms = (time.perf_counter() - start) * 1000
        response = ClassifyResponse.from_classification(result, request_id_of(request), total_ms)
        # Already a validated model: serialise once (response_model still documents it).
        return Response(response.model_dump_json(), media_type="application/json")

    @app.post(
        "/v1/classify/batch", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
        openapi_extra=BATCH_BODY,
    )
    async def classify_batch(self, request: Request) -> Response:
        """Classify many images with one set of options: multipart `file` repeated, or JSON
        `images: [{url | image_base64, id?}]`. One item per image, in order: its result, or
        its own error (one bad image never fails the others)."""
        start = time.perf_counter()
        settings = self.settings
        parsed = await parse_batch_request(request, settings.max_upload_bytes, settings.max_images_per_request,
                                           settings.max_request_bytes)
        if len(parsed.entries) > 1:  # each further image counts against the key's rate limit
            await app.state.gatekeeper.admit(getattr(request.state, "api_key", None), len(parsed.entries) - 1)
        runnable = [entry for entry in parsed.entries if entry.error is None]
        outcomes: list = []
        if runnable:
            if not self.admission.try_enter(len(runnable)):  # a place per image
                raise self.admission.overloaded()
            try:
                outcomes = await self._classify_entries(runnable, parsed.model_kwargs)
            finally:
                self.admission.leave(len(runnable), sum(isinstance(o, Classification) for o in outcomes))
            codes = {getattr(o, "code", None) for o in outcomes}
            if codes == {"unknown_classifier"}:  # the options, shared by every image
                raise outcomes[0]
        ran = iter(outcomes)
        results = [entry.error if entry.error is not None else next(ran) for entry in parsed.entries]
        for result in results:
            if isinstance(result, ModerationError):
                self.metrics.failed(result.code)
            else:
                self.metrics.classified(result)
        response = ClassifyBatchResponse.from_outcomes(
            results, [entry.id for entry in parsed.entries], request_id_of(request),
            (time.perf_counter() - start) * 1000,
        )
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get("/v1/classifiers", response_model=ClassifiersResponse)
    async def classifiers(self) -> ClassifiersResponse:
        """The model that serves (family, checkpoint, scoring) and the built-in classifiers:
        labels, unsafe labels, thresholds and prompts."""
        return ClassifiersResponse.model_validate(await self._call(self.model.catalog.remote()))

    @app.post("/v1/classifiers/reload", response_model=HeadsStatus, responses=ERROR_RESPONSES)
    async def reload_heads(self) -> HeadsStatus:
        """Read the trained heads directory now on the replica that answers (the others notice
        within `heads_poll_s`); says which heads it serves and which files it refused."""
        return HeadsStatus.model_validate(await self._call(self.model.reload_heads.remote()))

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        """The try-it page: drop an image, see the scores."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]})
    async def healthz(self) -> HealthResponse:
        """Answers 200 once a model replica is loaded and answering."""
        try:
            health = await self._call(self.model.health.remote(), timeout_s=5.0)
        except ModerationError:
            raise ModerationError("model_unavailable", "the model is not ready") from None
        return HealthResponse(status="ok", model=health["model"], model_family=health["model_family"])
