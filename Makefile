# The two set-up commands of the README: `make up` runs the system, `make test` runs the tests.
# Each creates .venv and installs what is missing (Python packages, etcd) first.
.PHONY: up test fuzz chaos bench lint proto

up:
	@scripts/bootstrap.sh
	.venv/bin/callroute up

test:
	@scripts/bootstrap.sh
	.venv/bin/python -m pytest -q -p no:cacheprovider --hypothesis-profile=ci

# Random exploration of the property tests (hypothesis), ten times their CI examples; not part of `make test`.
fuzz:
	@scripts/bootstrap.sh
	.venv/bin/python -m pytest -q -p no:cacheprovider --hypothesis-profile=fuzz -m hypothesis

lint:
	@scripts/bootstrap.sh
	.venv/bin/ruff check controlplane agents chaos bench devtools wire tests
	.venv/bin/mypy controlplane/core

proto:
	@scripts/bootstrap.sh
	.venv/bin/python -m controlplane.codegen

bench:
	@scripts/bootstrap.sh
	.venv/bin/callroute bench all

chaos:
	@scripts/bootstrap.sh
	.venv/bin/callroute chaos run all
