# keyarc: the front door. `make run` and `make test` set up what they need on a fresh Debian machine.

GO      ?= go
STATE   ?= $(CURDIR)/.state
BIN     := $(CURDIR)/bin/keyarc
ADDR    ?= 127.0.0.1:8443
METRICS ?= 127.0.0.1:9180
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all check-go build wasm deps run cluster test test-short lint bench fuzz clean

all: build

# check-go stops with what to install when Go is missing or older than 1.21. From 1.21 on, Go
# fetches the toolchain go.mod asks for through the module proxy by itself (GOTOOLCHAIN=auto).
GO_INSTALL := install Go 1.21 or newer: https://go.dev/dl/ (unpack it into /usr/local and add /usr/local/go/bin to PATH), or your distribution's golang package if it is 1.21 or newer; it then fetches Go $(shell sed -n 's/^go //p' go.mod) for this module through the module proxy
check-go:
	@v=$$(GOTOOLCHAIN=local $(GO) version 2>/dev/null | sed -n 's/^go version go\([0-9]*\)\.\([0-9]*\).*/\1 \2/p'); \
	if [ -z "$$v" ]; then echo "make: Go is not installed (no '$(GO)' on PATH); $(GO_INSTALL)" >&2; exit 1; fi; \
	set -- $$v; if [ "$$1" -lt 1 ] || { [ "$$1" -eq 1 ] && [ "$$2" -lt 21 ]; }; then \
	  echo "make: Go $$1.$$2 is too old to build keyarc; $(GO_INSTALL)" >&2; exit 1; fi

build: check-go wasm
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keyarc

# wasm builds the enrollment page's WebAssembly, gzips it once here (the appliance sends that
# copy to browsers instead of compressing megabytes in a request's time), and copies the Go
# release's loader next to it; all are embedded in the binary and git-ignored. Fixed flags, no
# VCS stamp, no local paths, no name or time in the gzip header: the same source and Go release
# give the same bytes (TestWasmReproducible).
WEB := cmd/keyarc/internal/web/static
WASM_FLAGS := -trimpath -buildvcs=false -ldflags="-s -w"
wasm: check-go
	GOOS=js GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(WEB)/keyarc.wasm ./cmd/keyarc/internal/web/wasm
	gzip -9 -n -c $(WEB)/keyarc.wasm > $(WEB)/keyarc.wasm.gz
	cp "$$($(GO) env GOROOT)/lib/wasm/wasm_exec.js" $(WEB)/wasm_exec.js

# deps installs the tools the appliance and the tests use, when they are missing.
deps:
	@bash .ci/deps

# run provisions development tokens under $(STATE) if they are missing (`keyarc init --dev` never
# overwrites anything) and starts the appliance.
run: check-go deps build
	$(BIN) init --dev --state $(STATE)
	$(BIN) serve --state $(STATE) --addr $(ADDR) --metrics-addr $(METRICS)

# cluster runs three nodes on one machine (127.0.0.1:8443-8445, metrics :9180-9182, public
# :8080-8082), sharing a PostgreSQL server and a SoftHSM token behind `p11-kit server`, all kept
# under .state-cluster/ (provisioned on the first run). Ctrl-C stops everything it started.
# Clients: --state .state-cluster --as admin --server https://127.0.0.1:8444 picks a node.
cluster: check-go deps build
	@STATE=$(CURDIR)/.state-cluster BIN=$(BIN) bash .ci/cluster

# test runs every test, with the race detector, against real SoftHSM tokens, a real SQLite file,
# the real binary (itself built with -race: KEYARC_E2E_RACE) and real clients (openssl, curl, pk12util).
# The end-to-end tests mostly wait (appliances starting, expiries, leases): four at a time
# instead of one per core keeps the machine busy without crowding it.
test: check-go deps wasm
	$(GO) vet ./...
	KEYARC_E2E_RACE=1 $(GO) test -race -count=1 -parallel 4 -timeout 20m ./...

test-short:
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: deps build
	$(BIN) bench
	KEYARC_CRL_MILLION=1 $(GO) test -count=1 -run 'TestCRLMillion|TestStreamMillionRevoked' -v ./escrow/ ./escrow/store/sqlite/
	$(GO) test -run '^$$' -bench PresignSoftHSM -benchtime 1x -count 3 ./escrow/ocsp/presign/

fuzz:
	@bash .ci/fuzz

clean:
	rm -rf bin
