"""coe installed from a wheel into a fresh virtualenv, outside the repository: the package carries its
bundled pools, taxonomies and compositions, so the CLI and the builder work without a checkout."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.conftest import DATA_DIR, REPO

SCRIPT = """
import sys
from pathlib import Path
import coe
assert coe.__file__.startswith(sys.prefix), coe.__file__   # the wheel, not the checkout
from coe.compose import CompositionSpec, SplitProfile, compose
from coe.datasets import load_mmlu_pro
spec = CompositionSpec(pool="replay-mmlu-pro-ref8", router="best-single",
                       profile=SplitProfile(bench="mmlu-pro", split="random:60:0"))
answer = compose(spec).ask_batch(load_mmlu_pro("test", Path(sys.argv[1]))[:1])[0]
print("routed to", answer.experts[0], "answer", answer.choice)
from coe.resources import bundled_pools, taxonomy_files, bundled_compositions
print(sorted(bundled_pools()), sorted(taxonomy_files()), len(bundled_compositions()))
print((bundled_pools()["embedded-lora"].parent.parent / "adapters" / "smollm2-arithmetic" / "adapter.gguf").is_file())
"""


def test_a_wheel_installed_outside_the_checkout_runs_the_cli_and_composes(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."]
    subprocess.run(build, cwd=REPO, check=True, capture_output=True)
    (wheel,) = wheels.glob("coe-*.whl")
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    # coe's dependencies come from the test environment's site-packages, appended after the venv's own
    site_packages = next((target / "lib").glob("python3*/site-packages"))
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "COE_CACHE_DIR": str(tmp_path / "cache"),
        "COE_DATA_DIR": str(DATA_DIR),
        "HF_HUB_OFFLINE": "1",
    }
    help_text = subprocess.run(
        [target / "bin" / "coe", "--help"], cwd=workdir, env=env, capture_output=True, text=True, check=True
    )
    assert "Composition of Experts" in help_text.stdout
    pools = subprocess.run(
        [target / "bin" / "coe", "registry", "pools"], cwd=workdir, env=env, capture_output=True, text=True, check=True
    )
    assert "embedded-lora" in pools.stdout and "replay-mmlu-pro-ref8" in pools.stdout
    run = subprocess.run(
        [python, "-c", SCRIPT, str(DATA_DIR)], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    routed, bundled, adapters = run.stdout.strip().splitlines()
    assert routed.startswith("routed to ")
    shipped = "['embedded', 'embedded-lora', 'replay-mmlu-pro-next8', 'replay-mmlu-pro-ref8']"
    assert bundled == f"{shipped} ['gpqa', 'mmlu_pro'] 6"
    assert adapters == "True"
