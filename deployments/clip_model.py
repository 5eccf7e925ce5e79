"""The ``ClipModel`` deployment: decode, batch, encode, and score against every head."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from PIL import Image
from ray import serve

from banks.hashes import ImageHashes, pdq_draft_size
from classifiers.calibration import load_calibration, temperatures
from classifiers.errors import ModerationError
from classifiers.face_attributes import FACE_CROP_ATTRIBUTES
from classifiers.faces import FaceFinder, FacesOfFirstFrame, load_detector
from classifiers.fingerprint import fingerprint
from classifiers.heads import Head, HeadCache, build_head
from classifiers.labels import CUSTOM_NAME, LabelSet, custom_label_set
from classifiers.model import load_clip
from classifiers.preprocess import decode_frames, prepare_array, upright_first_frame
from classifiers.policies import evaluate, faces_problems, needs
from classifiers.registry import BUILTIN_CLASSIFIERS, select_builtins
from classifiers.results import Classification, Face
from classifiers.scoring import score
from classifiers.trained import HeadSet
from deployments.autoscaling import EXTRA_IMAGES
from deployments.forward import MAX_LANES, ForwardLanes, default_lanes, worker_thread
from deployments.head_registry import HeadRegistry
from deployments.known_images import KnownImages, PdqOfFirstFrame, Seen, content_sha256
from deployments.metrics import ModelMetrics
from deployments.settings import ModelSettings, RuntimeConfig

logger = logging.getLogger("ray.serve")
INLINE_SHA256_BYTES = 1 << 20  # larger inputs are hashed off the event loop


async def _sha256(image: bytes | np.ndarray) -> str:
    size = image.nbytes if isinstance(image, np.ndarray) else len(image)
    if size <= INLINE_SHA256_BYTES:  # ~0.5 ms: less than a thread hop under load
        return content_sha256(image)
    return await asyncio.to_thread(content_sha256, image)  # hashlib releases the GIL


def _torch_threads(requested: int | None) -> int:
    """Requested threads, else the CPUs Ray gave this replica (Ray's default of 1 is too few)."""
    if requested:
        return requested
    import ray

    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _face_finder(settings: ModelSettings) -> FaceFinder | None:
    faces = settings.faces
    if not faces.enabled:
        return None
    # YuNet holds the GIL while it runs: one worker process per decode thread, beside the replica.
    detector = load_detector(faces.detector, workers=settings.decode_threads, nice=settings.nice)
    return FaceFinder(detector, faces.detect_max_side, faces.min_face_px, faces.max_faces, faces.min_confidence)


def _load_temperatures(settings: ModelSettings) -> dict[str, float]:
    """Per-classifier temperatures from ``settings.calibration`` (none: no file)."""
    if not settings.calibration:
        return {}
    calibration = load_calibration(settings.calibration, set(BUILTIN_CLASSIFIERS))
    fitted_for = calibration.get("model")
    if fitted_for and fitted_for != settings.model:
        # Not fatal: the same weights may live under another path; loudly, since temperatures
        # fitted on another checkpoint make scores mean nothing.
        logger.warning("calibration %s was fitted for model %r, this replica serves %r",
                       settings.calibration, fitted_for, settings.model)
    found = temperatures(calibration)
    logger.info("calibration %s: temperatures %s", settings.calibration, found)
    return found


@dataclass(frozen=True)
class _Plan:
    """What runs on each image of a request: built-in and trained heads, chosen once."""

    names: tuple[str, ...]  # built-in and trained classifiers, in the answer's order
    heads: tuple[Head, ...]  # built-ins and the custom head (if any): scored from the logits
    trained: HeadSet
    custom: bool
    faces: bool  # find faces and score each one's crop
    shown_faces: bool  # ... and return them (asked for; else only the policies use them)
    extra: tuple[str, ...] = ()  # classifiers scored only for the policies, not returned
    extra_heads: tuple[Head, ...] = ()


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class ClipModel:
    """One CLIP checkpoint per replica; text heads built once at start-up."""

    def __init__(self, settings: ModelSettings, runtime: RuntimeConfig | None = None) -> None:
        from classifiers.model import resolve_device

        self.settings = settings
        self.temperatures = _load_temperatures(settings)  # a bad file fails before the slow load
        # Forward passes run on lanes of their own so they never queue behind image decodes;
        # decodes get a small pool of their own so they cannot flood the CPU. Every torch call
        # (load, trace, text heads, forwards) runs on a lane's thread.
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode",
                                               initializer=worker_thread, initargs=("decode", settings.nice))
        threads = _torch_threads(settings.torch_threads)
        lanes = settings.forward_lanes or default_lanes(resolve_device(settings.device), threads)
        self.forward = ForwardLanes(
            partial(load_clip, settings.model, settings.device, settings.dtype), threads, lanes, settings.nice,
            settings.engine,
        )
        self.encoder = self.forward.encoder
        self.heads = self.forward.run_sync(self._builtin_heads)
        self.faces = _face_finder(settings)
        self.face_head = (self.forward.run_sync(build_head, FACE_CROP_ATTRIBUTES, self.encoder.encode_text)
                          if self.faces is not None and settings.faces.attributes else None)
        # Trained heads must fit this model: the model's fingerprint is checked against each.
        probes = self.forward.run_sync(fingerprint, self.encoder)
        self.trained = HeadRegistry(settings.heads_dir, probes, settings.model,
                                    frozenset(BUILTIN_CLASSIFIERS), settings.heads_poll_s)
        self.known = KnownImages(settings.known_images)
        self.custom_heads = HeadCache(settings.custom_head_cache_size)
        self._building: dict[tuple[str, ...], asyncio.Future] = {}  # custom heads being encoded
        self.metrics = ModelMetrics()
        self._extra_images = 0  # images in multi-image calls beyond each call's first (autoscaling)
        self.base_runtime = runtime or RuntimeConfig()  # from args; user_config lays over it
        self.runtime = self.base_runtime
        self._apply_policies()
        logger.info("ClipModel ready: %s, %s, forward lanes of %s, image tower on %s, lone images on %s "
                    "(%s: %s), faces: %s",
                    settings.model, self.encoder.dtype, self.forward.layout, self.forward.engine,
                    self.forward.lone_engine, f"engine {settings.engine}", self.forward.engine_reason,
                    self.faces.detector.name if self.faces is not None else "off")

    def _builtin_heads(self) -> dict[str, Head]:
        return {
            name: build_head(label_set, self.encoder.encode_text)
            for name, label_set in BUILTIN_CLASSIFIERS.items()
        }

    def reconfigure(self, user_config: dict) -> None:
        """Apply batch size, batch wait and thresholds without restarting the replica.

        ``args`` set the base values (changing args redeploys the application); a
        deployment-level ``user_config`` in serve_config.yaml, even a partial one, is laid over
        them, and changing it reconfigures the running replicas without a restart.
        """
        previous = self.runtime.heads_version
        runtime = RuntimeConfig.model_validate({**self.base_runtime.model_dump(), **user_config})
        self._check_policies(runtime)  # before anything changes: a bad update leaves the old config
        self.runtime = runtime
        self.embed.set_max_batch_size(self.runtime.max_batch_size)
        self.embed.set_batch_wait_timeout_s(self.runtime.batch_wait_timeout_s)
        if self.runtime.heads_version != previous:
            self.trained.reload()  # small files; Serve runs reconfigure before new requests
        self._apply_policies()

    def _check_policies(self, runtime: RuntimeConfig) -> None:
        faces = self.settings.faces
        problems = faces_problems(runtime.policies, faces.enabled, faces.attributes, faces.max_faces)
        if problems:
            raise ValueError("; ".join(problems))

    def _apply_policies(self) -> None:
        """What the policies need run on every image; a warning for a classifier name this
        replica does not serve (a trained head may arrive later, so it is not an error)."""
        self._check_policies(self.runtime)
        self.policy_needs = needs(self.runtime.policies)
        served = set(self.heads) | set(self.trained.current.heads) | {CUSTOM_NAME}
        for name in sorted(self.policy_needs.classifiers - served):
            logger.warning("a policy names the classifier %r, which this replica does not serve (yet): "
                           "its conditions do not hold", name)

    async def reload_heads(self) -> dict:
        """Read the heads directory now (off the event loop); what this replica serves after."""
        await asyncio.to_thread(self.trained.reload)
        return self.trained.status()

    async def classify(
        self,
        image: bytes | np.ndarray | ModerationError,
        classifiers: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        unsafe_labels: Sequence[str] = (),
        threshold: float | None = None,
    ) -> Classification:
        """Classify one image with the named built-ins (default all) and optional custom labels.

        ``image`` is the file's bytes, a decoded uint8 ``(H, W, 3)`` array, or a fetch error
        (which is raised). Bad input raises ``ModerationError``; handle callers get the same
        ``Classification`` that HTTP responses are built from.
        """
        outcome = await self.try_classify(image, classifiers, labels, unsafe_labels, threshold)
        if isinstance(outcome, ModerationError):
            raise outcome
        return outcome

    async def try_classify(
        self,
        image: bytes | np.ndarray | ModerationError,
        classifiers: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        unsafe_labels: Sequence[str] = (),
        threshold: float | None = None,
        wait_limit_s: float | None = None,
        with_embedding: bool = False,
    ) -> Classification | ModerationError:
        """``classify``, returning bad-input errors instead of raising them (for the ingress:
        hostile input is routine, not a replica failure to log with a traceback).
        ``wait_limit_s``: answer 503 ``overloaded`` rather than run a forward pass for a
        request that has waited this long in this replica (the ingress sets it; handle
        callers that would rather wait, bulk jobs, leave it out). ``with_embedding``: the
        answer carries the image embedding (frames x dim), for stores that re-score later."""
        try:
            if isinstance(image, ModerationError):
                return image
            plan = await self._plan(classifiers, labels, unsafe_labels, threshold)
            return await self._run(image, plan, wait_limit_s, with_embedding)
        except ModerationError as error:
            return error

    async def try_classify_many(
        self,
        images: Sequence[bytes | np.ndarray | ModerationError],
        classifiers: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        unsafe_labels: Sequence[str] = (),
        threshold: float | None = None,
        wait_limit_s: float | None = None,
    ) -> list[Classification | ModerationError]:
        """``try_classify`` for many images with one set of options, in one call: one outcome
        per image, in order. Each image is decoded and joins the forward batches on its own, so
        one bad image (or one unexpected failure, an ``internal_error`` item) never fails the
        others. A call is one request to Serve's router; the autoscaler still counts every image
        (``record_autoscaling_stats``, ``deployments/autoscaling.py``)."""
        extra = max(0, len(images) - 1)
        self._extra_images += extra
        try:
            try:
                plan = await self._plan(classifiers, labels, unsafe_labels, threshold)
            except ModerationError as error:
                return [error] * len(images)
            outcomes = await asyncio.gather(*(self._try_run(image, plan, wait_limit_s) for image in images))
            return list(outcomes)
        finally:
            self._extra_images -= extra

    async def _try_run(self, image, plan: _Plan, wait_limit_s: float | None) -> Classification | ModerationError:
        try:
            if isinstance(image, ModerationError):
                return image
            return await self._run(image, plan, wait_limit_s)
        except ModerationError as error:
            return error
        except Exception:  # noqa: BLE001 - one image's failure is that image's answer, logged in full
            logger.exception("classifying one image of a multi-image call failed")
            return ModerationError("internal_error", "an internal error occurred")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics hook (read by ``deployments.autoscaling``)."""
        return {EXTRA_IMAGES: float(self._extra_images)}

    async def rescore(
        self,
        embedding: np.ndarray,
        classifiers: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        unsafe_labels: Sequence[str] = (),
        threshold: float | None = None,
        hashes: ImageHashes | None = None,
    ) -> Classification:
        """Score a stored embedding (frames x dim, from ``with_embedding``) with today's
        classifiers, trained heads, calibration, thresholds and policies, without pixels: the
        same scoring as ``classify``. ``hashes`` (stored with it) are matched against today's
        banks (SHA-256, and PDQ as stored: not turned); faces need pixels (none here: face
        conditions of policies do not hold)."""
        plan = await self._plan(classifiers, labels, unsafe_labels, threshold)
        matches = await asyncio.to_thread(self.known.match, hashes) if hashes is not None else ()
        return self._verdict(plan, np.atleast_2d(np.asarray(embedding, np.float32)), hashes, matches, None,
                             cached=False, timing=(0.0, 0.0, 0))

    async def _plan(
        self,
        classifiers: Sequence[str] | None,
        labels: Sequence[str] | None,
        unsafe_labels: Sequence[str],
        threshold: float | None,
    ) -> _Plan:
        trained = self.trained.current  # one set for the whole request, even mid-reload
        names = select_builtins(classifiers, trained.heads)
        heads = [self.heads[name] for name in names if name in self.heads]
        if labels:
            custom = custom_label_set(labels, unsafe_labels, 0.5 if threshold is None else threshold)
            heads.append(await self._custom_head(custom))
        # The policies are enforced whatever was asked for: what they need runs too.
        wanted = self.policy_needs
        extra = tuple(n for n in sorted(wanted.classifiers)
                      if n not in names and (n in self.heads or n in trained.heads))
        shown = self.faces is not None and "face_attributes" in names
        faces = shown or (self.faces is not None and wanted.faces)
        return _Plan(tuple(names), tuple(heads), trained, bool(labels), faces, shown, extra,
                     tuple(self.heads[n] for n in extra if n in self.heads))

    async def _run(self, image: bytes | np.ndarray, plan: _Plan, wait_limit_s: float | None,
                   with_embedding: bool = False) -> Classification:
        start = time.perf_counter()
        try:
            sha256 = await _sha256(image)
            seen = self.known.recall(sha256)
            if seen is not None and plan.faces and seen.faces is None:
                seen = None  # cached by a request that did not look for faces
            if seen is not None:  # seen recently: its embedding is scored with today's heads
                self.metrics.cache_hits.inc()
                # Matching waits while the poller swaps in a large bank change: never on the event loop.
                matches = await asyncio.to_thread(self.known.match, seen.hashes)
                embedding, hashes, faces_seen, batch = seen.embedding, seen.hashes, seen.faces, 0
                decoded = done = time.perf_counter()
            else:
                frames, hashes, matches, found, crops = await self._decode(image, sha256, plan.faces)
                decoded = time.perf_counter()
                # The wait limit counts from here: the decode pool's queue is bounded by what the
                # ingress admits, and a large multi-image request must not shed its own tail.
                give_up_at = decoded + wait_limit_s if wait_limit_s else float("inf")
                self.metrics.decode_ms.observe((decoded - start) * 1000)
                # Face crops join the same batches as whole images: a crowd is one or two forward
                # passes, not one per face.
                embedded = await asyncio.gather(*(self._embed_when_free(pixels, give_up_at)
                                                  for pixels in (*frames, *crops)))
                embedding = np.stack([e for e, _ in embedded[:len(frames)]])
                face_embeddings = [e for e, _ in embedded[len(frames):]] or [None] * len(found or ())
                faces_seen = tuple(zip(found, face_embeddings)) if found is not None else None
                batch = max(size for _, size in embedded)
                self.known.remember(sha256, Seen(embedding, hashes, faces_seen))
                done = time.perf_counter()
        except asyncio.CancelledError:
            # The caller went away (Serve cancels a request whose HTTP client disconnected, and
            # the ingress's call on its timeout): a decode not yet started is skipped, a frame
            # waiting for a lane or in embed's queue never reaches a forward pass (@serve.batch
            # leaves cancelled requests out of the batch it forms).
            self.metrics.abandoned.inc()
            raise
        timing = (round((decoded - start) * 1000, 2), round((done - decoded) * 1000, 2), batch)
        result = self._verdict(plan, embedding, hashes, matches, faces_seen, seen is not None, timing)
        return replace(result, embedding=embedding) if with_embedding else result

    def _verdict(self, plan: _Plan, embedding: np.ndarray, hashes, matches, faces_seen, cached: bool,
                 timing: tuple[float, float, int]) -> Classification:
        """The answer for one image's embedding: every head, the faces' attributes, the policies."""
        names, heads, trained = plan.names, plan.heads, plan.trained
        thresholds = self.runtime.thresholds
        results = {head.label_set.name: score(head, embedding, self.encoder.logits,
                                              thresholds.get(head.label_set.name),
                                              self.temperatures.get(head.label_set.name, 1.0))
                   for head in (*heads, *plan.extra_heads)}
        results.update(trained.stack.score([n for n in (*names, *plan.extra) if n in trained.heads], embedding,
                                           thresholds))
        ordered = tuple(results[name] for name in (*names, *([CUSTOM_NAME] if plan.custom else [])))
        faces = self._face_results(faces_seen) if plan.faces else None
        return Classification(
            model=self.encoder.name,
            model_family=self.encoder.family.name,
            results=ordered,
            decode_ms=timing[0],
            inference_ms=timing[1],
            batch_size=timing[2],
            hashes=hashes,
            matches=matches,
            cached=cached,
            faces=faces if plan.shown_faces else None,
            policies=evaluate(self.runtime.policies, tuple(results.values()), faces),
        )

    def _face_results(self, faces_seen) -> tuple[Face, ...]:
        """Each face's attributes, scored on its crop's embedding with the face head."""
        rule = self.encoder.logits
        return tuple(Face(box.box, box.confidence,
                          score(self.face_head, embedding, rule).scores if embedding is not None else {})
                     for box, embedding in faces_seen or ())

    async def _decode(self, image: bytes | np.ndarray, sha256: str, faces: bool):
        """Frames for the model, the image's hashes, its bank matches, and (with ``faces``) the
        faces found and their crops (all on a decode thread)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self._decode_sync, image, sha256, faces)

    def _decode_sync(self, image: bytes | np.ndarray, sha256: str, faces: bool):
        spec, max_pixels = self.encoder.image_spec, self.settings.max_image_pixels
        known = self.settings.known_images
        pdq = (PdqOfFirstFrame(known.pdq_turned, image if isinstance(image, bytes) else None, max_pixels)
               if known.pdq else None)
        finder = (FacesOfFirstFrame(self.faces, spec, self.settings.faces.crop_margin, self.settings.faces.attributes)
                  if faces else None)
        hooks = [hook for hook in (pdq, finder) if hook is not None]

        def first_frame(frame: Image.Image, full_size: tuple[int, int]) -> None:
            for hook in hooks:
                hook(frame, full_size)

        if isinstance(image, np.ndarray):
            frames = prepare_array(image, spec, max_pixels)
            if hooks:
                upright = Image.fromarray(image).convert("RGB")
                first_frame(upright, upright.size)
        else:
            # A JPEG is draft-decoded no smaller than what the face detector looks at, nor than
            # PDQ's floor (the hook decodes again at that floor when this decode is larger).
            at_least = self.settings.faces.detect_max_side if finder is not None else 0
            frames = decode_frames(image, spec, max_pixels, self.settings.jpeg_draft, self.settings.max_frames,
                                   first_frame if hooks else None, at_least,
                                   pdq_draft_size if pdq is not None else None)
        if finder is not None:
            detail = finder.detail_side() if isinstance(image, bytes) else 0
            # A face small in a JPEG decoded at reduced scale gets its crop from a sharper decode.
            finder.cut(upright_first_frame(image, max_pixels, detail) if detail else None)
        hashes = self.known.hashes(sha256, pdq.pdq if pdq is not None else None)
        found = finder.faces if finder is not None else None
        return frames, hashes, self.known.match(hashes), found, finder.crops if finder is not None else []

    # reconfigure() sets the size and the wait; a batch per forward lane runs at once.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=MAX_LANES)
    async def embed(self, pixels: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """The batch's forward pass on the idle lanes, off the event loop; each item's
        embedding comes back with the size of the batch it rode in."""
        await self.forward.wait_ready()  # the timer measures the forward pass, not the wait
        start = time.perf_counter()
        embeddings = await self.forward.encode(pixels)
        self.metrics.model_ms.observe((time.perf_counter() - start) * 1000)
        self.metrics.batch_size.observe(len(pixels))
        self.metrics.images.inc(len(pixels))
        return [(embedding, len(pixels)) for embedding in embeddings]

    async def _embed_when_free(self, frame: np.ndarray, give_up_at: float) -> tuple[np.ndarray, int]:
        """Join the next batch once a forward lane is free, unless that came after
        ``give_up_at`` (the caller's ``wait_limit_s`` after the image was decoded):
        then answer 503 ``overloaded`` rather than spend a forward pass on a stale request.
        (Checked when a lane frees; a frame may still wait in ``embed``'s queue after that.)

        ``@serve.batch`` forms a batch as soon as its wait runs out, even while the previous
        batch still runs, so under load it queued many batches of 1-3 images (measured:
        15 img/s, against 23.5 with this gate). Holding arrivals here until a lane is free
        lets them enter ``embed`` together and fill one batch.
        """
        await self.forward.wait_ready()
        if time.perf_counter() > give_up_at:
            self.metrics.shed.inc()
            raise ModerationError("overloaded", "the request waited too long for the model; retry shortly")
        return await self.embed(frame)

    async def _custom_head(self, label_set: LabelSet) -> Head:
        key = label_set.label_names
        matrix = self.custom_heads.get(key)
        if matrix is None:
            # The images of one multi-image request arrive together with the same labels:
            # the first builds the head, the others wait for it.
            building = self._building.get(key)
            if building is None:
                # On a forward lane: text and image passes never compete for the same cores.
                building = self._building[key] = asyncio.ensure_future(
                    self.forward.call(build_head, label_set, self.encoder.encode_text))
                building.add_done_callback(lambda _: self._building.pop(key, None))
            matrix = (await asyncio.shield(building)).matrix
            self.custom_heads.put(key, matrix)
        return Head(label_set, matrix)

    def catalog(self) -> dict:
        """The model that serves, the built-in classifiers with their labels, prompts and the
        thresholds in force, and the trained heads with their held-out metrics."""
        return {
            "model": self.encoder.name,
            # The lanes' engine (batches) and the whole lane's (a lone image) can differ.
            "model_info": {**self.encoder.info(), **self.forward.engines()},
            "classifiers": [
                {
                    "name": s.name, "kind": s.kind, "description": s.description,
                    "labels": list(s.label_names), "unsafe_labels": list(s.unsafe),
                    "threshold": self.runtime.thresholds.get(s.name, s.threshold),
                    "temperature": self.temperatures.get(s.name, 1.0),
                    "prompts": {label.name: list(label.prompts) for label in s.labels},
                }
                for s in BUILTIN_CLASSIFIERS.values()
            ] + [{**head.summary(), "threshold": self.runtime.thresholds.get(name, head.label_set.threshold)}
                 for name, head in sorted(self.trained.current.heads.items())],
            "heads": self.trained.status(),
            "faces": None if self.faces is None else {
                "detector": self.faces.detector.name,
                "attributes": list(FACE_CROP_ATTRIBUTES.label_names) if self.face_head is not None else [],
                "prompts": {label.name: list(label.prompts) for label in FACE_CROP_ATTRIBUTES.labels},
                "max_faces": self.faces.max_faces, "min_face_px": self.faces.min_face_px,
            },
        }

    def health(self) -> dict:
        """The model this replica serves, and which replica answered."""
        return {
            "model": self.encoder.name,
            "model_family": self.encoder.family.name,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "custom_heads_cached": len(self.custom_heads),
            "heads_version": self.trained.current.version,
            "banks": self.known.status(),
            "faces": self.faces.detector.name if self.faces is not None else None,
        }
