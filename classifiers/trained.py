"""Trained heads: linear classifiers on a model's image embeddings, and their files.

A head file is one safetensors file, ``NAME.head.safetensors``: tensors ``weight`` (labels x
dim), ``bias`` (labels) and ``fingerprint`` (the model's embeddings of the probe images,
``classifiers.fingerprint``), and in its metadata one JSON document (key ``moderation_head``):
name, kind, labels, unsafe labels, threshold, the model it was trained on, training counts and
held-out metrics. One file is written whole (temporary file, then rename), so a replica that
reloads while a head is being written sees the old file or the new one, never half of one.

Scoring (``HeadStack``): ``z = weight @ embedding + bias``; an exclusive head takes a softmax
over ``z``, an attribute head a sigmoid per label. The decision (unsafe score, threshold,
flagged) is the built-ins' own (``classifiers.scoring.decide``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from classifiers.fingerprint import MIN_COSINE, similarity
from classifiers.labels import Label, LabelSet
from classifiers.results import ClassifierResult
from classifiers.scoring import decide

FORMAT = "moderation-head/1"
SUFFIX = ".head.safetensors"
META_KEY = "moderation_head"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # use .fullmatch
MAX_WEIGHT = 1e4  # larger weights or biases: not a head any fit makes (and they overflow)
FILE_MODE = 0o644  # readable by replicas that run as another user
RESERVED_NAMES = frozenset({"custom"})


class HeadError(ValueError):
    """A head file that cannot be served; the message says which file and why, in one line."""


@dataclass(frozen=True, eq=False)
class TrainedHead:
    """A label set with trained weights over one model's image embeddings."""

    label_set: LabelSet
    weight: np.ndarray  # (labels, dim) float32
    bias: np.ndarray  # (labels,) float32
    fingerprint: np.ndarray  # (probes, dim) float32: the training model's probe embeddings
    meta: dict = field(default_factory=dict)  # the file's JSON document (see module doc)
    version: str = ""  # the first 12 hex digits of the file's SHA-256; "" before it is saved

    @property
    def name(self) -> str:
        return self.label_set.name

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def check_model(self, fingerprint: np.ndarray, model: str) -> None:
        """Raise ``HeadError`` unless ``fingerprint`` (the serving model's) matches this head's."""
        trained_on = self.meta.get("model", {}).get("checkpoint", "?")
        if fingerprint.shape[1] != self.dim:
            raise HeadError(f"head {self.name!r} was trained on {trained_on!r} ({self.dim}-d "
                            f"embeddings); the model here, {model!r}, has {fingerprint.shape[1]}-d "
                            "embeddings: train it again with this model")
        cosine = similarity(self.fingerprint, fingerprint)
        if cosine < MIN_COSINE:
            raise HeadError(f"head {self.name!r} was trained on {trained_on!r}, whose image "
                            f"embeddings differ from those of the model here, {model!r} (probe "
                            f"cosine {cosine:.3f} < {MIN_COSINE}): train it again with this model")

    def summary(self) -> dict:
        """What ``GET /v1/classifiers`` and ``moderation heads list`` show (plain types)."""
        meta = self.meta
        return {
            "name": self.name, "kind": "trained", "label_kind": self.label_set.kind,
            "description": self.label_set.description, "labels": list(self.label_set.label_names),
            "unsafe_labels": list(self.label_set.unsafe), "threshold": self.label_set.threshold,
            "version": self.version, "trained_on": meta.get("model", {}),
            "training": meta.get("training", {}), "metrics": meta.get("metrics", {}),
        }


def build_label_set(name: str, kind: str, labels: list[str], unsafe: list[str], threshold: float,
                    description: str = "") -> LabelSet:
    """The label set of a trained head (its labels have no prompts of their own to encode)."""
    check_name(name)
    return LabelSet(
        name=name, kind=kind,  # type: ignore[arg-type]
        labels=tuple(Label(str(n), (str(n),), (f"no {n}",) if kind == "attributes" else ())
                     for n in labels),
        unsafe=tuple(unsafe), threshold=threshold, description=description,
    )


def check_name(name: str, builtins: frozenset[str] | set[str] = frozenset()) -> None:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise HeadError(f"head name {name!r}: use 1-64 of a-z, 0-9, '_' and '-', starting with a "
                        "letter or digit")
    if name in RESERVED_NAMES or name in builtins:
        raise HeadError(f"head name {name!r} is taken by a built-in classifier; choose another")


def head_path(heads_dir: str | Path, name: str) -> Path:
    return Path(heads_dir).expanduser() / f"{name}{SUFFIX}"


def _file_bytes(head: TrainedHead) -> tuple[bytes, dict]:
    """The head file's content, and the JSON document in it."""
    from safetensors.numpy import save

    label_set = head.label_set
    doc = {**head.meta, "format": FORMAT, "name": label_set.name, "kind": label_set.kind,
           "labels": list(label_set.label_names), "unsafe_labels": list(label_set.unsafe),
           "threshold": label_set.threshold, "description": label_set.description}
    data = save({"weight": np.ascontiguousarray(head.weight, np.float32),
                 "bias": np.ascontiguousarray(head.bias, np.float32),
                 "fingerprint": np.ascontiguousarray(head.fingerprint, np.float32)},
                metadata={META_KEY: json.dumps(doc, sort_keys=True)})
    return data, doc


def head_version(head: TrainedHead) -> str:
    """The version ``save_head`` gives ``head`` (its file's content hash)."""
    return _version(_file_bytes(head)[0])


def save_head(head: TrainedHead, path: str | Path) -> TrainedHead:
    """Write ``head`` to ``path`` atomically; returns it with its ``version`` set."""
    path = Path(path).expanduser()
    data, doc = _file_bytes(head)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TrainedHead(head.label_set, head.weight, head.bias, head.fingerprint, doc, _version(data))


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def load_head(path: str | Path, builtins: frozenset[str] | set[str] = frozenset()) -> TrainedHead:
    """Read and check one head file; raises ``HeadError`` saying what is wrong with it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path).expanduser()
    where = path.name
    try:
        data = path.read_bytes()
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except OSError as exc:
        raise HeadError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise HeadError(f"{where}: not a whole safetensors file ({str(exc).splitlines()[0][:120]})") from None
    try:
        doc = json.loads(metadata[META_KEY])
        if doc.get("format") != FORMAT:
            raise HeadError(f"{where}: format {doc.get('format')!r}, expected {FORMAT!r}")
        weight, bias, fp = (np.asarray(tensors[k], np.float32) for k in ("weight", "bias", "fingerprint"))
        for key in ("model", "training", "metrics"):
            if not isinstance(doc.get(key, {}), dict):
                raise HeadError(f"{where}: {key!r} in its metadata is not an object")
    except HeadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise HeadError(f"{where}: not a head file (no {META_KEY!r} metadata with weight, bias and "
                        "fingerprint tensors); write heads with `moderation train`") from None
    name = str(doc.get("name"))
    if not path.name.endswith(SUFFIX) or path.name[: -len(SUFFIX)] != name:
        raise HeadError(f"{where}: holds head {name!r}; name the file {name}{SUFFIX}")
    try:
        check_name(name, builtins)
        label_set = build_label_set(name, doc.get("kind"), list(doc.get("labels") or []),
                                    list(doc.get("unsafe_labels") or []), float(doc.get("threshold", 0.5)),
                                    str(doc.get("description", "")))
    except (HeadError, ValueError, TypeError) as exc:
        raise HeadError(f"{where}: bad label set: {exc}") from None
    n = len(label_set.labels)
    if weight.ndim != 2 or weight.shape[0] != n or bias.shape != (n,) or fp.ndim != 2 \
            or fp.shape[1] != weight.shape[1]:
        raise HeadError(f"{where}: weight {weight.shape}, bias {bias.shape} and fingerprint {fp.shape} "
                        f"do not fit {n} labels")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all() and np.isfinite(fp).all()):
        raise HeadError(f"{where}: weights are not finite numbers")
    if max(np.abs(weight).max(initial=0), np.abs(bias).max(initial=0)) > MAX_WEIGHT:
        raise HeadError(f"{where}: weights beyond +-{MAX_WEIGHT:g}, which no fit of a head makes")
    return TrainedHead(label_set, weight, bias, fp, doc, _version(data))


class HeadStack:
    """Every head of a set in one matrix: one product scores an image against all of them,
    and each head's softmax (exclusive) or sigmoid (attributes) runs over its own columns in
    the same few array operations. What is left per head is the decision, on plain floats:
    20 heads cost about 1 % of a forward pass (``python -m bench.heads``).
    """

    def __init__(self, heads: Mapping[str, TrainedHead]) -> None:
        self.heads = dict(heads)
        if not self.heads:
            return
        sizes = [len(h.bias) for h in self.heads.values()]
        self.weight = np.concatenate([h.weight for h in self.heads.values()]).T.astype(np.float64)  # (dim, cols)
        self.bias = np.concatenate([h.bias for h in self.heads.values()]).astype(np.float64)
        self.starts = np.cumsum([0, *sizes[:-1]])
        self.sizes = np.array(sizes)
        self.exclusive = np.repeat([h.label_set.kind == "exclusive" for h in self.heads.values()], sizes)
        self.bounds = {name: (int(a), int(a + n)) for name, a, n in zip(self.heads, self.starts, sizes)}

    def probabilities(self, embedding: np.ndarray) -> np.ndarray:
        """Every head's label scores, side by side: ``(frames, columns)``."""
        z = np.atleast_2d(np.asarray(embedding, np.float64)) @ self.weight + self.bias
        top = np.repeat(np.maximum.reduceat(z, self.starts, axis=1), self.sizes, axis=1)
        e = np.exp(z - top)
        softmax = e / np.repeat(np.add.reduceat(e, self.starts, axis=1), self.sizes, axis=1)
        return np.where(self.exclusive, softmax, 0.5 + 0.5 * np.tanh(0.5 * z))

    def score(self, names: Sequence[str], embedding: np.ndarray,
              thresholds: Mapping[str, float] | None = None) -> dict[str, ClassifierResult]:
        """Results of the ``names`` heads for one image (``(dim,)`` or ``(frames, dim)``)."""
        if not names:
            return {}
        thresholds = thresholds or {}
        rows = np.round(self.probabilities(embedding), 6).tolist()
        out = {}
        for name in names:
            a, b = self.bounds[name]
            out[name] = decide(self.heads[name].label_set, [row[a:b] for row in rows], thresholds.get(name),
                               rounded=True)
        return out


@dataclass(frozen=True)
class HeadSet:
    """The heads a directory held when it was read: the ones that load, the refused files
    with why, and a version that changes whenever any head does. ``unreadable`` says why the
    directory itself could not be listed (then the set says nothing about its heads)."""

    heads: dict[str, TrainedHead] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # file name -> reason
    unreadable: str | None = None

    @cached_property
    def stack(self) -> HeadStack:
        return HeadStack(self.heads)

    @property
    def version(self) -> str:
        if not self.heads:
            return "none"
        joined = ";".join(f"{n}={h.version}" for n, h in sorted(self.heads.items()))
        return hashlib.sha256(joined.encode()).hexdigest()[:12]


def _head_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))


def directory_signature(heads_dir: str | Path | None) -> tuple:
    """Names, inodes, sizes and times of the head files: cheap to poll for changes (a rename
    over a file always makes a new inode, so a same-size replacement is seen too)."""
    if not heads_dir:
        return ()
    try:
        entries = _head_files(Path(heads_dir).expanduser())
    except OSError:
        return ("unreadable",)
    out = []
    for path in entries:
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while we looked
        out.append((path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return tuple(out)


def load_heads_dir(heads_dir: str | Path | None, fingerprint: np.ndarray, model: str,
                   builtins: frozenset[str] | set[str] = frozenset()) -> HeadSet:
    """Every ``*.head.safetensors`` in ``heads_dir`` that loads and fits the serving model
    (its ``fingerprint``); the others are refused with a reason, never raised. A directory
    that is missing or cannot be listed gives a set with ``unreadable`` set."""
    if not heads_dir:
        return HeadSet()
    folder = Path(heads_dir).expanduser()
    try:
        files = _head_files(folder)
    except FileNotFoundError:
        return HeadSet(unreadable=f"{folder}: the heads directory does not exist")
    except OSError as exc:
        return HeadSet(unreadable=f"{folder}: the heads directory cannot be read ({exc.strerror or exc})")
    heads: dict[str, TrainedHead] = {}
    refused: dict[str, str] = {}
    for path in files:
        try:
            head = load_head(path, builtins)
            head.check_model(fingerprint, model)
        except HeadError as exc:
            refused[path.name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the others
            refused[path.name] = f"{path.name}: cannot be used ({type(exc).__name__}: {exc})"
            continue
        heads[head.name] = head
    return HeadSet(heads, refused)
