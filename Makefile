# keyarc: the front door. `make run` and `make test` set up what they need on a fresh Debian machine.

GO      ?= go
STATE   ?= $(CURDIR)/.state
BIN     := $(CURDIR)/bin/keyarc
ADDR    ?= 127.0.0.1:8443
METRICS ?= 127.0.0.1:9180
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps run test test-short lint bench fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keyarc

# deps installs the tools the appliance and the tests use, when they are missing.
deps:
	@bash .ci/deps

# run provisions development tokens under $(STATE) if they are missing (`keyarc init --dev` never
# overwrites anything) and starts the appliance.
run: deps build
	$(BIN) init --dev --state $(STATE)
	$(BIN) serve --state $(STATE) --addr $(ADDR) --metrics-addr $(METRICS)

# test runs every test, with the race detector, against real SoftHSM tokens, a real SQLite file,
# the real binary and real clients (openssl, curl, pk12util).
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

test-short:
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: deps build
	$(BIN) bench

fuzz:
	@bash .ci/fuzz

clean:
	rm -rf bin
