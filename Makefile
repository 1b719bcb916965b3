# The operator's and CI's entry points. Each target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests and the demo run for real: sipp, kamailio, espeak-ng, sox;
# systemd's syscall groups and libseccomp, to run the daemon under its unit's
# seccomp rules (sipclient/lab/confine.py).
DEB_PEERS := sip-tester kamailio espeak-ng sox libsndfile1 systemd libseccomp2
PEER_CMDS := sipp kamailio espeak-ng sox systemd-analyze

.PHONY: install deps test lint demo bench corpus bench-classify library clean

install: deps $(STAMP)

# apt-get only when a peer is missing, so a box that has them needs no network.
deps:
	@missing=""; for c in $(PEER_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian peers (missing:$$missing)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update && apt-get install -y --no-install-recommends $(DEB_PEERS) python3-venv; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: install
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check sipclient tests bench
	$(BIN)/mypy sipclient

demo: install
	$(BIN)/sipclient demo

# Benchmarks print figures and write them to bench/out/; they never fail on a time.
bench: install
	$(BIN)/python bench/server_leases.py
	$(BIN)/python bench/server_push.py
	$(BIN)/python bench/sip_parse.py
	$(BIN)/python bench/registrations.py
	$(BIN)/python bench/calls.py
	$(BIN)/python bench/rtp.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/e2e.py --lines 24

corpus: install
	$(BIN)/python bench/corpus/make.py --out bench/corpus/out

bench-classify: corpus
	$(BIN)/python bench/classify.py

library: corpus
	$(BIN)/python bench/corpus/build_library.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
