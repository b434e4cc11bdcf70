package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// runOp performs one operation on the cache, for the kill scenarios: the
// test sets LAYERCACHE_KILL_AT to stop it at a step, then checks what it
// left behind and runs it again without.
func runOp(args []string) (torture.Result, error) {
	fs := flagSet("op")
	var (
		dir     = fs.String("dir", "", "cache directory")
		op      = fs.String("op", "", "operation")
		durable = fs.Bool("durable", false, "open the store with WithDurable")
		size    = fs.Int("size", 256<<10, "put: bytes to store")
		seed    = fs.Uint64("seed", 1, "put: seed of the bytes and of the read sizes")
		maxSize = fs.Int64("max-size", 1, "prune: size bound")
		refName = fs.String("ref-name", "torture/tag:1", "tag: the ref name")
		target  = fs.String("target", "", "tag: the digest to tag; get, inspect: the digest to read")
		images  specList
	)
	fs.Var(&images, "image", "pull, warm: the image (REF|DIGEST|SIZE)")
	if err := fs.Parse(args); err != nil {
		return torture.Result{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := []store.Option{store.WithLogger(log)}
	if *durable {
		opts = append(opts, store.WithDurable())
	}
	s, err := store.Open(*dir, opts...)
	if err != nil {
		return torture.Result{}, err
	}
	res := torture.Result{Ops: map[string]int{*op: 1}}
	rng := rand.New(rand.NewPCG(*seed, 7))
	switch *op {
	case torture.OpPut, torture.OpPutVerified:
		data := randomBytes(rng, *size)
		want := digest.FromBytes(data)
		r := &choppyReader{data: data, rng: rng}
		res.Digest = want.String()
		if *op == torture.OpPut {
			got, err := s.Put(ctx, r)
			if err != nil {
				return res, err
			}
			if got != want {
				res.Violations = append(res.Violations, fmt.Sprintf("put returned %s, want %s", got, want))
			}
		} else if err := s.PutVerified(ctx, want, int64(len(data)), r); err != nil {
			return res, err
		}
	case torture.OpPull, torture.OpWarm:
		if len(images) != 1 {
			return res, fmt.Errorf("-op %s needs one -image", *op)
		}
		if *op == torture.OpWarm {
			rep, err := remotecache.Warm(ctx, images[0].ref, s, cacheOptions(ctx, log)...)
			if err != nil {
				return res, err
			}
			if rep.Digest != images[0].digest.String() {
				res.Violations = append(res.Violations, fmt.Sprintf("warm resolved %s, want %s", rep.Digest, images[0].digest))
			}
			break
		}
		_, bad, err := pullImage(ctx, s, images[0], cacheOptions(ctx, log))
		res.Violations = append(res.Violations, bad...)
		if err != nil {
			return res, err
		}
	case torture.OpPrune:
		if _, err := s.Prune(ctx, store.Policy{MaxSize: *maxSize}); err != nil {
			return res, err
		}
	case torture.OpClear:
		if err := s.Clear(ctx); err != nil {
			return res, err
		}
	case torture.OpGet, torture.OpInspect:
		d, err := digest.Parse(*target)
		if err != nil {
			return res, err
		}
		var opts []store.ReadOption
		if *op == torture.OpInspect {
			opts = append(opts, store.Inspect)
		}
		b, err := s.Get(ctx, d, opts...)
		if err != nil {
			return res, err
		}
		if got := digest.FromBytes(b); got != d {
			res.Violations = append(res.Violations, fmt.Sprintf("%s %s returned bytes hashing to %s", *op, d, got))
		}
	case torture.OpTag:
		d, err := digest.Parse(*target)
		if err != nil {
			return res, err
		}
		if err := s.Tag(ctx, *refName, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 1}); err != nil {
			return res, err
		}
	default:
		return res, fmt.Errorf("unknown -op %q", *op)
	}
	return res, nil
}
