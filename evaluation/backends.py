"""Where scores come from: the service's own code in this process, or a running server.

In-process runs the service's preprocessing (``decode_frames``), encoder and scoring
(``build_head`` + ``score``), so its numbers are the service's numbers. Image embeddings are
cached, so scoring another label set or prompt wording costs a text pass, not an image pass.
A server returns scores, not embeddings: its answers are cached per classifier instead, keyed
by what it serves (its model and its ``GET /v1/classifiers`` catalog: prompts, thresholds,
temperatures), and it can score only the label set it serves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers.errors import ModerationError
from classifiers.labels import LabelSet
from clients.errors import ModerationAPIError
from evaluation.cache import ResultCache, digest
from evaluation.dataset import Sample

FETCH_TIMEOUT_S = 30.0
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Scored:
    """One label set's scores on every usable sample (rows in sample order)."""

    label_set: LabelSet
    probs: np.ndarray  # (n, labels): the service's per-label scores
    unsafe: np.ndarray  # (n,): the service's unsafe score
    threshold: float  # the flag threshold in force
    logits: np.ndarray | None = None  # (n, labels) before any temperature; in-process only


def read_source(source: str) -> bytes:
    """A local file's bytes, or an http(s) URL's body."""
    if source.startswith(("http://", "https://")):
        import httpx

        response = httpx.get(source, timeout=FETCH_TIMEOUT_S, follow_redirects=True)
        response.raise_for_status()
        return response.content
    return Path(source).read_bytes()


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _error_text(exc: Exception) -> str:
    return f"{exc.code}: {exc.message}" if isinstance(exc, ModerationError) else f"{type(exc).__name__}: {exc}"


def model_identity(encoder, max_frames: int, jpeg_draft: bool, max_pixels: int) -> str:
    """What makes an embedding: checkpoint (with a fingerprint of a local one's files and of its
    weights' embeddings of the probe images), dtype, input size."""
    from classifiers.fingerprint import fingerprint

    # The weights themselves, through their embeddings of the probe images: another checkpoint
    # saved at the same path (or a new revision of a hub id) must not hit old embeddings.
    probes = hashlib.sha256(np.round(fingerprint(encoder), 2).tobytes()).hexdigest()[:16]
    parts = [encoder.name, str(encoder.dtype), repr(encoder.image_spec),
             f"frames={max_frames}", f"draft={jpeg_draft}", f"pixels={max_pixels}", f"probes={probes}"]
    folder = Path(os.path.expanduser(encoder.name))
    if folder.is_dir():  # a local directory: its config and weight file sizes
        h = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            if path.is_file():
                h.update(f"{path.name}:{path.stat().st_size};".encode())
        config = folder / "config.json"
        h.update(config.read_bytes() if config.is_file() else b"")
        parts.append(h.hexdigest()[:16])
    return "|".join(parts)


class InProcessBackend:
    """The service's decoding, encoder and scoring, with an embedding cache."""

    def __init__(self, encoder, cache: ResultCache, batch_size: int = 32, max_frames: int = 1,
                 jpeg_draft: bool = True, max_pixels: int = 50_000_000, workers: int = 2) -> None:
        self.encoder, self.cache, self.batch_size = encoder, cache, batch_size
        self.max_frames, self.jpeg_draft, self.max_pixels = max_frames, jpeg_draft, max_pixels
        self.workers = workers
        self.producer = model_identity(encoder, max_frames, jpeg_draft, max_pixels)
        self.encoded_images = 0  # images sent through the image tower by this backend

    def _load(self, sample: Sample) -> tuple[str, bytes] | Exception:
        try:
            data = read_source(sample.source)
            return digest(data), data
        except Exception as exc:  # noqa: BLE001 - one unreadable image is a row, not the end
            return exc

    def _decode(self, data: bytes) -> np.ndarray | Exception:
        from classifiers.preprocess import decode_frames

        try:
            return decode_frames(data, self.encoder.image_spec, self.max_pixels, self.jpeg_draft,
                                 self.max_frames)
        except ModerationError as exc:
            return exc

    def embed(self, samples: Sequence[Sample], progress: Progress = lambda n: None
              ) -> tuple[list[np.ndarray | None], dict[int, str]]:
        """One ``(frames, dim)`` embedding per sample (``None`` where it failed), and the errors."""
        out: list[np.ndarray | None] = [None] * len(samples)
        errors: dict[int, str] = {}
        with ThreadPoolExecutor(self.workers) as pool:
            for start, batch in zip(range(0, len(samples), self.batch_size), _chunks(samples, self.batch_size)):
                loaded = list(pool.map(self._load, batch))
                digests = {i: r[0] for i, r in enumerate(loaded) if not isinstance(r, Exception)}
                known = self.cache.get_embeddings(self.producer, sorted(set(digests.values())))
                todo = {d: loaded[i][1] for i, d in digests.items() if d not in known}
                fresh = self._encode(todo, pool)
                self.cache.put_embeddings(self.producer, {d: e for d, e in fresh.items()
                                                          if not isinstance(e, Exception)})
                for i, result in enumerate(loaded):
                    value = result if isinstance(result, Exception) else known.get(result[0], fresh.get(result[0]))
                    if isinstance(value, Exception):
                        errors[start + i] = _error_text(value)
                    else:
                        out[start + i] = value
                progress(len(batch))
        return out, errors

    def _encode(self, todo: dict[str, bytes], pool: ThreadPoolExecutor) -> dict[str, np.ndarray | Exception]:
        if not todo:
            return {}
        decoded = dict(zip(todo, pool.map(self._decode, todo.values())))
        good = {d: frames for d, frames in decoded.items() if not isinstance(frames, Exception)}
        result: dict[str, np.ndarray | Exception] = {d: e for d, e in decoded.items() if isinstance(e, Exception)}
        if good:
            embeddings = self.encoder.encode_images([f for frames in good.values() for f in frames])
            self.encoded_images += len(good)
            start = 0
            for d, frames in good.items():
                result[d] = embeddings[start : start + len(frames)]
                start += len(frames)
        return result

    def score(self, classifier, embeddings: Sequence[np.ndarray], temperature: float = 1.0,
              threshold: float | None = None) -> Scored:
        """Score embeddings with the service's scoring: ``classifier`` is a label set (zero-shot:
        its prompts are encoded here, as a replica does) or a trained head
        (``classifiers.trained.TrainedHead``, scored with its own weights)."""
        from classifiers.heads import build_head
        from classifiers.scoring import label_logits, score
        from classifiers.trained import HeadStack

        zero_shot = isinstance(classifier, LabelSet)
        head = build_head(classifier, self.encoder.encode_text) if zero_shot else classifier
        label_set = head.label_set
        threshold = label_set.threshold if threshold is None else threshold
        rule = self.encoder.logits
        if zero_shot:
            results = [score(head, e, rule, threshold, temperature) for e in embeddings]
        else:
            stack, name = HeadStack({label_set.name: head}), label_set.name
            results = [stack.score([name], e, {name: threshold})[name] for e in embeddings]
        names = label_set.label_names
        logits = None
        if label_set.kind == "exclusive":  # the first frame's logits (what calibration fits)
            first = [np.atleast_2d(e)[0] for e in embeddings]
            logits = (np.stack([label_logits(head, e, rule) if zero_shot
                                else head.weight @ e + head.bias for e in first])
                      if first else np.zeros((0, len(names))))
        return Scored(
            label_set=label_set,
            probs=np.array([[r.scores[n] for n in names] for r in results]).reshape(-1, len(names)),
            unsafe=np.array([r.unsafe_score for r in results], float),
            threshold=threshold,
            logits=logits,
        )


class ServerBackend:
    """Scores from a running service through ``ModerationClient``; answers cached per image."""

    def __init__(self, client, server: str, cache: ResultCache, concurrency: int = 32,
                 chunk: int = 64) -> None:
        self.client, self.server, self.cache = client, server, cache
        self.concurrency, self.chunk = concurrency, chunk
        self.requests = 0
        self.model: str | None = None  # what the server serves, read once per run (see identity)
        self.catalog_sha256: str | None = None

    def identity(self) -> str:
        """The server's model and a hash of its catalog, fetched once: a redeploy with another
        model, prompts, thresholds or calibration gives other answers, so other cache keys."""
        if self.catalog_sha256 is None:
            try:
                catalog = self.client.classifiers()
            except ValueError as exc:  # a body that is not a catalog: not a service this can evaluate
                raise ModerationAPIError(200, "invalid_catalog", f"GET /v1/classifiers: {str(exc).splitlines()[0]}",
                                         None) from None
            self.model = catalog.model
            self.catalog_sha256 = hashlib.sha256(catalog.model_dump_json().encode()).hexdigest()
        return f"server={self.server}|model={self.model}|catalog={self.catalog_sha256[:16]}"

    def _options(self, label_set: LabelSet, custom: bool) -> dict:
        if custom:
            return {"classifiers": [], "labels": list(label_set.label_names),
                    "unsafe_labels": list(label_set.unsafe), "threshold": label_set.threshold}
        return {"classifiers": [label_set.name]}

    def score(self, samples: Sequence[Sample], label_set: LabelSet, custom: bool,
              progress: Progress = lambda n: None) -> tuple[Scored, list[int], dict[int, str]]:
        """Scores for the usable samples, their indices, and the errors of the others."""
        options = self._options(label_set, custom)
        result_name = "custom" if custom else label_set.name
        producer = f"{self.identity()}|" + repr(sorted(options.items()))
        answers: dict[int, dict] = {}
        errors: dict[int, str] = {}
        for start in range(0, len(samples), self.chunk):
            batch = samples[start : start + self.chunk]
            loaded = {}
            for i, sample in enumerate(batch, start):
                try:
                    data = read_source(sample.source)
                    loaded[i] = (digest(data), data)
                except Exception as exc:  # noqa: BLE001
                    errors[i] = _error_text(exc)
            known = self.cache.get_answers(producer, sorted({d for d, _ in loaded.values()}))
            todo = {d: data for d, data in loaded.values() if d not in known}
            fresh = {}
            # ``concurrency`` images in flight: requests of up to 16 images each
            per_request = min(16, self.concurrency)
            for item in self.client.classify_many(list(todo.values()), ordered=True, batch_size=per_request,
                                                  concurrency=max(1, self.concurrency // per_request), **options):
                key = list(todo)[item.index]
                if item.error is not None:
                    fresh[key] = {"error": f"{getattr(item.error, 'code', type(item.error).__name__)}: "
                                           f"{getattr(item.error, 'message', item.error)}"}
                elif item.response.model != self.model:  # redeployed during the run: not cached
                    fresh[key] = {"error": f"answered by model {item.response.model!r}, not {self.model!r} "
                                           "(the service changed during the run)"}
                else:
                    r = item.response.results[result_name]
                    fresh[key] = {"scores": r.scores, "unsafe_score": r.unsafe_score, "threshold": r.threshold}
            self.requests += len(todo)
            self.cache.put_answers(producer, {d: a for d, a in fresh.items() if "error" not in a})
            for i, (d, _) in loaded.items():
                answer = known.get(d) or fresh[d]
                if "error" in answer:
                    errors[i] = answer["error"]
                else:
                    answers[i] = answer
            progress(len(batch))
        kept = sorted(answers)
        names = label_set.label_names
        thresholds = {answers[i]["threshold"] for i in kept}
        return Scored(
            label_set=label_set,
            probs=np.array([[answers[i]["scores"][n] for n in names] for i in kept], float).reshape(-1, len(names)),
            unsafe=np.array([answers[i]["unsafe_score"] for i in kept], float),
            threshold=thresholds.pop() if len(thresholds) == 1 else label_set.threshold,
        ), kept, errors
