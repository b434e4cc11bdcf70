# layercache: the one test command is `make test`; .ci/run calls it.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
FUZZTIME    ?= 8s

.PHONY: test lint unit fuzz integration torture demo bench bench-quick tools

## test: lint, race tests of every module, short fuzzing. What CI runs.
test: lint unit fuzz integration

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

## fuzz: a short run of each fuzz target over its checked-in corpus
## (FUZZTIME each, six targets: under a minute in all).
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzBlobPath$$' -fuzztime=$(FUZZTIME) ./layout
	$(GO) test -run='^$$' -fuzz='^FuzzIndex$$' -fuzztime=$(FUZZTIME) ./layout
	$(GO) test -run='^$$' -fuzz='^FuzzCommandLine$$' -fuzztime=$(FUZZTIME) ./cmd/layercache
	$(GO) test -run='^$$' -fuzz='^FuzzManifest$$' -fuzztime=$(FUZZTIME) ./pkg/remotecache
	$(GO) test -run='^$$' -fuzz='^FuzzUncompressed$$' -fuzztime=$(FUZZTIME) ./pkg/remotecache
	cd integration && $(GO) test -run='^$$' -fuzz='^FuzzMutatedJSON$$' -fuzztime=$(FUZZTIME) ./torture

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
