# The two set-up commands of the README: `make up` runs the system, `make test` runs the tests.
# Each creates .venv and installs what is missing (Python packages, etcd) first.
.PHONY: up test chaos bench lint proto

up:
	@scripts/bootstrap.sh
	.venv/bin/callroute up

test:
	@scripts/bootstrap.sh
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint:
	@scripts/bootstrap.sh
	.venv/bin/ruff check controlplane agents chaos tests
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
