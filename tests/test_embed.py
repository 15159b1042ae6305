"""The encoder's disk cache and the vector index, with the real MiniLM model."""

from pathlib import Path

import numpy as np
import pytest

from coe.embed import MAX_SHARDS, EmbeddingCache, Encoder, VectorIndex

TEXTS = [
    "What is the derivative of x squared?",
    "Which organelle makes ATP?",
    "Is a verbal contract binding?",
]


def test_vectors_are_normalised_and_similar_texts_are_near(minilm: Encoder) -> None:
    vectors = minilm.encode([*TEXTS, "How do you differentiate x to the power two?"])
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarities = vectors[3] @ vectors[:3].T
    assert int(np.argmax(similarities)) == 0


def test_a_second_run_over_the_same_texts_computes_nothing(minilm: Encoder, tmp_path: Path) -> None:
    minilm.encode(TEXTS[:1])  # load the weights once; the caches under test are fresh
    first = minilm.with_cache(tmp_path)
    vectors = first.encode(TEXTS)
    assert first.n_encoded == 3
    second = Encoder(cache_dir=tmp_path)
    np.testing.assert_array_equal(second.encode(TEXTS), vectors)
    assert second.n_encoded == 0


def test_only_misses_are_encoded_and_duplicates_once(minilm: Encoder, tmp_path: Path) -> None:
    encoder = minilm.with_cache(tmp_path)
    encoder.encode(TEXTS[:2])
    vectors = encoder.encode([TEXTS[2], TEXTS[0], TEXTS[2]])
    assert encoder.n_encoded == 3
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_without_a_cache_dir_nothing_is_written(minilm: Encoder, tmp_path: Path) -> None:
    encoder = minilm.with_cache(None)
    encoder.encode(TEXTS)
    encoder.encode(TEXTS)
    assert encoder.n_encoded == 3
    assert not list(tmp_path.iterdir())


def test_cache_keeps_few_files_and_survives_many_small_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = {}
    for run in range(MAX_SHARDS + 3):
        cache = EmbeddingCache(tmp_path)
        keys = [f"{run:02d}-{i}" for i in range(5)]
        vectors = rng.random((5, 8), dtype=np.float32)
        cache.put(keys, vectors)
        written.update(zip(keys, vectors, strict=True))
    reloaded = EmbeddingCache(tmp_path)
    assert len(reloaded) == len(written)
    assert len(list(tmp_path.glob("*.npy"))) <= 2 * (MAX_SHARDS + 1)
    keys = sorted(written)
    np.testing.assert_array_equal(reloaded.get(keys), np.stack([written[key] for key in keys]))
    merged = EmbeddingCache(tmp_path)
    assert len(merged) == len(written)
    assert len(list(tmp_path.glob("*.keys.npy"))) <= 4


def test_a_half_written_shard_is_ignored(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put(["a"], np.ones((1, 4), dtype=np.float32))
    (tmp_path / "orphan.keys.npy").write_bytes(b"")  # keys without vectors: a writer died mid-way
    assert EmbeddingCache(tmp_path).missing(["a", "b"]) == ["b"]


def test_index_returns_nearest_first_and_caps_k_at_its_size() -> None:
    vectors = np.eye(3, dtype=np.float32)
    similarities, found = VectorIndex(vectors).search(np.array([[0.1, 0.9, 0.0]], dtype=np.float32), 5)
    assert found.tolist() == [[1, 0, 2]]
    assert similarities[0, 0] == pytest.approx(0.9)
