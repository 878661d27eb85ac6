# FoloVLLM: `make demo` and `make test` work on a fresh machine (each creates the venv first).
PYTHON      ?= python3
VENV        := .venv
VPY         := $(abspath $(VENV))/bin/python
# The CPU build of torch by default; on a CUDA machine: make setup TORCH_SPEC=torch. --no-compile:
# Python writes the bytecode of what is imported when it is first imported, not of every file up front
TORCH_SPEC  ?= torch==2.13.0
STAMP       := $(VENV)/.installed
# Every m<number>_<name> directory, by number (m10 after m9, not after m1).
MILESTONES  := $(shell ls -d m[0-9]*_*/ 2>/dev/null | sed 's:/$$::' | grep -E '^m[0-9]+_' | sort -t_ -k1.2,1n)
NEWEST      := $(lastword $(MILESTONES))
# A milestone by its number: m3 -> m3_paged (the underscore keeps m1 from matching m10_tp)
mdir         = $(or $(patsubst %/,%,$(firstword $(wildcard $(1)_*/))),$(error no milestone $(1)_*))
PYTEST_ARGS ?= -q
# Python caches the bytecode of each module it imports (.pyc, under __pycache__/, ignored by git).
# Where the environment turns that off (PYTHONDONTWRITEBYTECODE), every process of make test
# would compile torch and transformers again, and make test starts dozens of processes.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo serve test test-root lineage lint format coverage check docs docs-serve clean help

help:
	@echo "make demo | serve [ARGS=...] | test | test-mK | run-mK [ARGS=...] | bench-mK | diff-mK | lint | format | coverage | check | docs | docs-serve"
	@echo "milestones: $(MILESTONES)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --no-compile "$(TORCH_SPEC)"
	$(VPY) -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,docs,serve]"
	@touch $(STAMP)

demo: $(STAMP)
	cd $(NEWEST) && PYTHONPATH=. $(VPY) -m folovllm demo

# The OpenAI-compatible server of the newest milestone (m9+): make serve ARGS="--model folo-tiny --port 8000"
serve: $(STAMP)
	cd $(NEWEST) && PYTHONPATH=. $(VPY) -m folovllm serve $(ARGS)

# The lineage check and a strict docs build (quick), then every milestone's suite in its own
# process (only that milestone's folovllm importable) and the repository's own tests (tests/:
# cross-milestone, tools, docs), TEST_JOBS side by side (tools/run_suites.py; TEST_JOBS=1: one
# after another). A test module that, with every engine file it uses, is byte-identical to an
# earlier milestone's is not run again: its result there counts (tools/run_suites.py --plan says
# which and why; SUITE_ARGS=--no-reuse runs everything). make test-mK always runs one whole suite.
# Everything runs even when something fails; the last line sums up the tests.
TEST_JOBS   ?= 2
SUITE_ARGS  ?=
LINEAGE_CMD  = $(VPY) tools/milestones.py check
DOCS_CMD     = $(VPY) tools/milestones.py diffs && $(VPY) -m mkdocs build --strict --site-dir site
test: $(STAMP)
	status=0; \
	$(LINEAGE_CMD) || status=1; \
	{ $(DOCS_CMD); } || status=1; \
	$(VPY) tools/run_suites.py $(MILESTONES) --with-root-tests --jobs $(TEST_JOBS) $(SUITE_ARGS) -- $(PYTEST_ARGS) || status=1; \
	exit $$status

test-root: $(STAMP)
	$(VPY) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

lineage: $(STAMP)
	$(LINEAGE_CMD)

test-m%: $(STAMP)
	cd $(call mdir,m$*) && PYTHONPATH=. $(VPY) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

run-m%: $(STAMP)
	cd $(call mdir,m$*) && PYTHONPATH=. $(VPY) -m folovllm $(or $(ARGS),demo)

bench-m%: $(STAMP)
	cd $(call mdir,m$*) && PYTHONPATH=. $(VPY) bench.py $(ARGS)

diff-m%: $(STAMP)
	@$(VPY) tools/milestones.py diff m$* $(ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: $(STAMP)
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

coverage: $(STAMP)
	cd $(NEWEST) && PYTHONPATH=. $(VPY) -m pytest tests -p no:cacheprovider --cov=folovllm --cov-report=term-missing

check: lint test

docs: $(STAMP)
	$(DOCS_CMD)

docs-serve: $(STAMP)
	$(VPY) tools/milestones.py diffs
	$(VPY) -m mkdocs serve

# Exercises: make exercise-m3 FN=KVCacheManager.allocate_slots copies m3 to EXERCISE_DIR with that
# function's body removed; make check-exercise runs the milestone's tests against it (tools/exercise.py).
EXERCISE_DIR ?= $(or $(TMPDIR),/tmp)/folovllm-exercise

exercise-m%: $(STAMP)
	@test -n "$(FN)" || { echo "usage: make exercise-m$* FN=Class.method   (list: $(VPY) tools/exercise.py list)"; exit 2; }
	$(VPY) tools/exercise.py make m$* $(FN) --dir $(EXERCISE_DIR)

.PHONY: check-exercise
check-exercise: $(STAMP)
	$(VPY) tools/exercise.py check --dir $(EXERCISE_DIR)

clean:
	rm -rf site learn/diffs .pytest_cache .ruff_cache .coverage htmlcov
