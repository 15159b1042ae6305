"""The encoders' disk cache and the vector index, with the real MiniLM model and the static encoder
distilled from it."""

import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from coe.embed import (
    ENCODERS,
    MAX_SHARDS,
    MINILM,
    STATIC,
    EmbeddingCache,
    Encoder,
    EncoderName,
    StaticEncoder,
    VectorIndex,
    make_encoder,
    minilm_source,
)
from coe.errors import UnknownNameError

TEXTS = [
    "What is the derivative of x squared?",
    "Which organelle makes ATP?",
    "Is a verbal contract binding?",
]


@pytest.mark.parametrize(("fixture", "dim"), [("minilm", 384), ("static_encoder", 256)])
def test_vectors_are_normalised_and_similar_texts_are_near(
    fixture: str, dim: int, request: pytest.FixtureRequest
) -> None:
    encoder: Encoder = request.getfixturevalue(fixture)
    vectors = encoder.with_cache(None).encode([*TEXTS, "How do you differentiate x to the power two?"])
    assert vectors.shape == (4, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarities = vectors[3] @ vectors[:3].T
    assert int(np.argmax(similarities)) == 0


def test_the_static_encoder_is_distilled_from_the_local_minilm_package(static_encoder: StaticEncoder) -> None:
    assert Path(minilm_source()).is_dir()  # the weights package, not a hub name: the session is offline
    assert static_encoder.cache_dir is not None
    table = static_encoder.cache_dir / "encoders" / STATIC
    assert (table / "model.safetensors").stat().st_size > 10_000_000  # ~30k tokens × 256 float32
    assert not list(table.parent.glob(".*.partial"))


def test_a_stored_distillation_is_loaded_not_redone(static_encoder: StaticEncoder, tmp_path: Path) -> None:
    assert static_encoder.cache_dir is not None
    shutil.copytree(static_encoder.cache_dir / "encoders", tmp_path / "encoders")
    # Nothing to distil from: the encoder can only work by loading the stored table.
    loaded = StaticEncoder(source=str(tmp_path / "no-model-here"), cache_dir=tmp_path)
    np.testing.assert_array_equal(loaded.encode(TEXTS), static_encoder.with_cache(None).encode(TEXTS))
    assert loaded.n_encoded == 3


def test_static_vectors_do_not_depend_on_the_batch(static_encoder: StaticEncoder) -> None:
    texts = [*TEXTS, "A much longer question about contracts, offers, acceptance and consideration in law?"]
    together = static_encoder.with_cache(None).encode(texts)
    one_by_one = np.concatenate([static_encoder.with_cache(None).encode([text]) for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)


def test_each_encoder_keeps_its_own_cache(minilm: Encoder, static_encoder: StaticEncoder, tmp_path: Path) -> None:
    minilm.with_cache(tmp_path).encode(TEXTS)
    static_encoder.with_cache(tmp_path).encode(TEXTS)
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == sorted([MINILM, STATIC])
    again = make_encoder("static", cache_dir=tmp_path)
    assert again.encode(TEXTS).shape == (3, 256) and again.n_encoded == 0


def test_encoders_are_chosen_by_name() -> None:
    assert set(ENCODERS) == set(get_args(EncoderName)) == {"minilm", "static"}
    assert type(make_encoder("static")) is StaticEncoder and type(make_encoder("minilm")) is Encoder
    with pytest.raises(UnknownNameError, match="unknown encoder 'bert'; known: minilm, static"):
        make_encoder("bert")


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


def test_small_puts_are_written_together_by_flush_or_when_the_cache_goes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path)
    batches = [([f"{b}-{i}" for i in range(4)], rng.random((4, 8), dtype=np.float32)) for b in range(10)]
    for keys, vectors in batches:
        cache.put(keys, vectors)
    assert len(list(tmp_path.glob("*.keys.npy"))) == 1  # the first put, written at once; the rest held
    assert len(EmbeddingCache(tmp_path)) == 4
    cache.flush()
    assert len(list(tmp_path.glob("*.keys.npy"))) == 2
    reloaded = EmbeddingCache(tmp_path)
    keys = [key for batch_keys, _ in batches for key in batch_keys]
    np.testing.assert_array_equal(reloaded.get(keys), np.concatenate([vectors for _, vectors in batches]))
    cache.put(["late"], np.ones((1, 8), dtype=np.float32))
    del cache  # collected: what it held is written
    assert EmbeddingCache(tmp_path).missing(["late"]) == []
