# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test check

setup:
	@scripts/setup

demo: setup
	.venv/bin/coe demo

test: setup
	scripts/check
	.venv/bin/pytest -q

check: setup
	scripts/check
