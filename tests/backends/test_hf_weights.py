"""GGUF to Hugging Face folder conversion; the real conversion runs in tests/backends/test_vllm.py,
whose engine then answers from the converted SmolLM2."""

from pathlib import Path

import pytest

from coe.backends.hf_weights import COMPLETE_MARKER, export_hf_folder
from coe.errors import BackendUnavailableError


def test_a_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"ghost\.gguf does not exist"):
        export_hf_folder(tmp_path / "ghost.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_finished_export_is_reused_without_reading_the_gguf(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / COMPLETE_MARKER).write_text("done\n")
    assert export_hf_folder(tmp_path / "gone.gguf", out) == out
