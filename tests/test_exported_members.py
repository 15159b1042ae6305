import subprocess
import sys

import coe


def test_all_is_exactly_the_public_api() -> None:
    public = {name for name in dir(coe) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(coe, name)).__name__ == "module"}
    assert set(coe.__all__) == public - modules


def test_import_coe_leaves_heavy_packages_out() -> None:
    heavy = [
        "torch",
        "transformers",
        "sentence_transformers",
        "model2vec",
        "skeletoken",
        "tokenizers",
        "faiss",
        "xllamacpp",
        "litellm",
        "sqlalchemy",
        "vllm",
        "streamlit",
        "ray",
        "fastapi",
        "uvicorn",
    ]
    code = f"import sys, coe; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
