# layercache: the one test command is `make test`; .ci/run calls it.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
# FUZZN scales the number of inputs each fuzz target runs (see fuzz).
FUZZN       ?= 1

.PHONY: test deps lint unit fuzz integration torture demo bench bench-quick tools

## test: installs what the tests need, then lint, race tests of every
## module, short fuzzing and the end-to-end tests. What CI runs.
test: deps
	$(MAKE) lint unit fuzz ko integration

## deps: skopeo, the Go modules and the test registry's build
## (.ci/install-deps.sh). Idempotent: a few seconds when all is there.
deps:
	bash .ci/install-deps.sh

tools: $(STATICCHECK)

$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

## lint: gofmt, go vet and staticcheck on the library and the integration module.
lint: $(STATICCHECK)
	@bad=$$(gofmt -l . ); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	cd integration && $(GO) vet ./... && $(STATICCHECK) ./...

## unit: race tests of the root module (library, CLI, examples), and of
## the fault points in the build that has them on.
unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -tags layercache_faultpoint ./internal/faultpoint

## fuzz: a short run of each fuzz target over its checked-in corpus, a
## fixed number of inputs each (a few seconds each here; FUZZN=10 runs ten
## times as many; a positive integer). Counts, not durations: with
## -fuzztime=8s, Go 1.26's fuzz coordinator can report its own deadline,
## "context deadline exceeded", as a failure (go.dev/issue/75804), which
## slow targets on a busy 2-core runner hit. Minimizing a new input is
## bounded by count too. Nothing bounds the time but the count.
FUZZ = $(GO) test -run='^$$' -fuzzminimizetime=50x
fuzz:
	$(FUZZ) -fuzz='^FuzzBlobPath$$' -fuzztime=$$((100000 * $(FUZZN)))x ./layout
	$(FUZZ) -fuzz='^FuzzIndex$$' -fuzztime=$$((3000 * $(FUZZN)))x ./layout
	$(FUZZ) -fuzz='^FuzzCommandLine$$' -fuzztime=$$((10000 * $(FUZZN)))x ./cmd/layercache
	$(FUZZ) -fuzz='^FuzzManifest$$' -fuzztime=$$((1500 * $(FUZZN)))x ./pkg/remotecache
	$(FUZZ) -fuzz='^FuzzUncompressed$$' -fuzztime=$$((400 * $(FUZZN)))x ./pkg/remotecache
	cd integration && $(FUZZ) -fuzz='^FuzzMutatedJSON$$' -fuzztime=$$((1000 * $(FUZZN)))x ./torture

## ko: go vet, staticcheck and race tests of the ko adapter
## (contrib/kocache) and of its end-to-end test, which builds and publishes
## an image with ko's own packages against registry processes
## (integration/ko). Modules of their own, to keep ko's dependencies out of
## the others; gofmt checks them in lint. About a minute once the Go build
## cache holds ko and the standard library for linux/arm64.
.PHONY: ko
ko: $(STATICCHECK)
	cd contrib/kocache && $(GO) vet ./... && $(STATICCHECK) ./... && $(GO) test -race -count=1 ./...
	cd integration/ko && $(GO) vet ./... && $(STATICCHECK) ./... && $(GO) test -race -count=1 ./...

## integration: end-to-end tests against a real distribution registry
## process, and the short torture suite (integration/torture), whose table
## is printed at the end.
TORTURE_REPORT := $(CURDIR)/_build/torture/report.txt
integration:
	@rm -f $(TORTURE_REPORT)
	cd integration && LAYERCACHE_TORTURE_REPORT=$(TORTURE_REPORT) $(GO) test -race -count=1 ./...
	@cat $(TORTURE_REPORT) 2>/dev/null || echo "(no torture report at $(TORTURE_REPORT))"

## torture: the long torture suite (issue 6): kills at every step and at
## random byte offsets, 8 processes at once, a full disk, a read-only
## mount, hostile inputs, registry faults under load. TORTURE_DURATION is
## its time budget; it ends with the table.
TORTURE_DURATION ?= 10m
torture:
	@rm -f $(TORTURE_REPORT)
	cd integration && LAYERCACHE_TORTURE_REPORT=$(TORTURE_REPORT) $(GO) test -race -count=1 -timeout 60m ./torture -torture.duration=$(TORTURE_DURATION)
	@cat $(TORTURE_REPORT) 2>/dev/null || echo "(no torture report at $(TORTURE_REPORT))"

## demo: the quick start (an in-process registry, warmed cold then warm).
demo:
	$(GO) run ./cmd/layercache demo

## bench: the benchmark harness of bench/ (issue 5): ~256 MiB images, 5 runs
## per figure, 6-8 minutes on 2 cores. Keep the machine otherwise idle. Prints a
## markdown table and writes bench/results/<timestamp>.json.
## BENCH_FLAGS passes flags, e.g. BENCH_FLAGS='-only "cold pull" -profile /tmp/prof'.
BENCH_BIN   := _build/bench
BENCH_FLAGS ?=
bench:
	$(GO) build -o $(BENCH_BIN)/ ./bench ./bench/rusage ./cmd/layercache
	$(BENCH_BIN)/bench -cli $(BENCH_BIN)/layercache -rusage $(BENCH_BIN)/rusage $(BENCH_FLAGS)

## bench-quick: the same figures on ~32 MiB images, 3 runs, under a minute.
bench-quick:
	$(GO) build -o $(BENCH_BIN)/ ./bench ./bench/rusage ./cmd/layercache
	$(BENCH_BIN)/bench -quick -cli $(BENCH_BIN)/layercache -rusage $(BENCH_BIN)/rusage $(BENCH_FLAGS)
