# layercache: the one test command is `make test`; .ci/run calls it.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
FUZZTIME    ?= 10s

.PHONY: test lint unit fuzz integration demo bench bench-quick tools

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

## unit: race tests of the root module (library, CLI, examples).
unit:
	$(GO) test -race -count=1 ./...

## fuzz: a short run of each fuzz target over its checked-in corpus.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzBlobPath$$' -fuzztime=$(FUZZTIME) ./layout

## integration: end-to-end tests against a real distribution registry process.
integration:
	cd integration && $(GO) test -race -count=1 ./...

## demo: the quick start (an in-process registry, warmed cold then warm).
demo:
	$(GO) run ./cmd/layercache demo
