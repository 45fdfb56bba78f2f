# The two commands a user needs: `make run` and `make test`. Both install
# what is missing first (the venv with the pinned torch wheel, which is where
# libtorch comes from) and set what tch's build needs.
SHELL := /bin/bash
VENV  := $(CURDIR)/.venv
STAMP := $(VENV)/.vitrine-setup

export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export VITRINE_PYTHON := $(VENV)/bin/python

.PHONY: setup build run test lint openapi

$(STAMP): scripts/setup.sh requirements/torch.txt requirements/test.txt requirements/constraints.txt
	scripts/setup.sh

## setup: create .venv with torch==2.11.0 and the test references (idempotent)
setup: $(STAMP)

## build: release binary at target/release/vitrine
build: $(STAMP)
	cargo build --release --locked

## run: build and serve on :8080 with data under ./data (flags: ARGS="--help")
run: build
	./target/release/vitrine serve $(ARGS)

## test: the whole suite (unit, HTTP, parity against transformers)
# Only the library's unit tests and the integration-test binaries
# (tests/*/main.rs): each test binary links libtorch, which is most of a cold
# build, so neither the bench examples nor the test harness of the 5-line
# main.rs are built here; `make lint` (clippy --all-targets) still checks them.
test: $(STAMP)
	cargo test --locked --lib --test '*' -- --test-threads=2

## lint: formatting, clippy (warnings are errors) and the import rule (src/layering.rs)
lint: $(STAMP)
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo test --locked --lib layering

## openapi: regenerate openapi/openapi.json from the code
openapi: $(STAMP)
	cargo run --locked --quiet -- openapi > openapi/openapi.json
