package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/pkg/store"
)

// runReadOnly makes -dir a read-only bind mount of itself, in this
// process's private mount namespace, and pulls an image the cache holds
// (every blob must be served from it) and one it does not (every blob from
// the registry): both succeed, with one warning in all.
func runReadOnly(args []string) (torture.Result, error) {
	fs := flagSet("readonly")
	var (
		dir       = fs.String("dir", "", "the cache directory")
		hit, miss specList
	)
	fs.Var(&hit, "hit", "an image the cache holds (REF|DIGEST|SIZE)")
	fs.Var(&miss, "miss", "an image the cache does not hold (REF|DIGEST|SIZE)")
	if err := fs.Parse(args); err != nil {
		return torture.Result{}, err
	}
	if len(hit) != 1 || len(miss) != 1 {
		return torture.Result{}, errors.New("want one -hit and one -miss")
	}
	res := torture.Result{Ops: map[string]int{}, Errors: map[string]int{}, Mode: "read-only bind mount"}
	if err := syscall.Mount(*dir, *dir, "", syscall.MS_BIND, ""); err != nil {
		res.Skipped = fmt.Sprintf("bind mount of %s: %v", *dir, err)
		return res, nil
	}
	if err := syscall.Mount("", *dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		res.Skipped = fmt.Sprintf("remounting %s read-only: %v", *dir, err)
		return res, nil
	}
	bad := func(format string, args ...any) {
		res.Violations = append(res.Violations, fmt.Sprintf(format, args...))
	}
	// As root, only the mount makes the directory read-only.
	if err := os.WriteFile(filepath.Join(*dir, "probe"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		bad("writing into the read-only mount: got %v, want EROFS", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := store.Open(*dir, store.WithLogger(log))
	if err != nil {
		return res, fmt.Errorf("opening a read-only cache: %w", err)
	}
	for _, img := range []imageSpec{hit[0], miss[0]} {
		res.Ops[torture.OpPull]++
		p, pbad, err := pullImage(ctx, s, img, cacheOptions(ctx, log))
		res.Violations = append(res.Violations, pbad...)
		if err != nil {
			bad("pull of %s from a read-only cache: %v", img.ref, err)
			continue
		}
		if img == hit[0] {
			// Every blob of the hit is served from the store itself.
			for _, d := range append([]digest.Digest{p.manifest, p.config}, p.layers...) {
				res.Ops[torture.OpGet]++
				b, err := s.Get(ctx, d)
				if err != nil || digest.FromBytes(b) != d {
					bad("get %s from a read-only cache: %v", d, err)
				}
			}
		}
	}
	warnings := strings.Count(logs.String(), "level=WARN")
	res.Faults = warnings
	if warnings != 1 || !strings.Contains(logs.String(), "read-only") {
		bad("want exactly one warning, about the read-only cache; got %d:\n%s", warnings, logs.String())
	}
	return res, nil
}
