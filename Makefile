# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test check

setup:
	@scripts/setup

demo: setup
	.venv/bin/coe demo

# The suite takes 4-9 minutes on 2 cores; a hang fails it after 40 instead of stalling CI.
# scripts/browser installs Debian's Chromium for the UI's browser test when it can (root, apt-get).
test: setup
	scripts/check
	scripts/browser
	timeout -s INT -k 30 2400 .venv/bin/pytest -q

check: setup
	scripts/check
