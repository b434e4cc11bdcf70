package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// runFullDisk puts a cache on a small file system (a tmpfs of -kib KiB
// mounted in this process's private mount namespace, or, where mounting is
// not allowed, a RLIMIT_FSIZE of that size) and checks that writes that do
// not fit fail cleanly: a clear error, nothing at a final name, no temp
// file left, while a pull-through still returns the image.
func runFullDisk(args []string) (torture.Result, error) {
	fs := flagSet("fulldisk")
	var (
		dir     = fs.String("dir", "", "an empty directory to mount the small file system on")
		kib     = fs.Int64("kib", 1024, "size of the file system in KiB")
		putSize = fs.Int("put-size", 2<<20, "bytes of the blob that does not fit")
		noMount = fs.Bool("no-mount", false, "use RLIMIT_FSIZE, not a tmpfs (outside a private mount namespace)")
		images  specList
	)
	fs.Var(&images, "image", "an image larger than the file system (REF|DIGEST|SIZE)")
	if err := fs.Parse(args); err != nil {
		return torture.Result{}, err
	}
	if len(images) != 1 {
		return torture.Result{}, errors.New("want one -image")
	}
	res := torture.Result{Ops: map[string]int{}, Errors: map[string]int{}, Mode: "tmpfs"}
	// The store says "disk full" whatever the errno: ENOSPC reads "no
	// space left on device", EFBIG "file too large".
	const full = "disk full"
	mountErr := errors.New("-no-mount")
	if !*noMount {
		mountErr = syscall.Mount("tmpfs", *dir, "tmpfs", 0, fmt.Sprintf("size=%dk", *kib))
	}
	if mountErr != nil {
		// No mounts here: a per-process file size limit fails writes
		// with EFBIG instead, which the cache treats the same way.
		res.Mode = fmt.Sprintf("RLIMIT_FSIZE of %d KiB (no tmpfs: %v)", *kib, mountErr)
		signal.Ignore(syscall.SIGXFSZ)
		lim := uint64(*kib) << 10
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
			return res, fmt.Errorf("setrlimit: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cacheDir := filepath.Join(*dir, "cache")
	s, err := store.Open(cacheDir, store.WithLogger(log))
	if err != nil {
		return res, err
	}
	bad := func(format string, args ...any) {
		res.Violations = append(res.Violations, fmt.Sprintf(format, args...))
	}

	// A blob that does not fit, through Put and through PutVerified.
	data := randomBytes(rand.New(rand.NewPCG(1, 2)), *putSize)
	d := digest.FromBytes(data)
	for _, op := range []string{torture.OpPut, torture.OpPutVerified} {
		res.Ops[op]++
		var err error
		if op == torture.OpPut {
			_, err = s.Put(ctx, bytes.NewReader(data))
		} else {
			err = s.PutVerified(ctx, d, int64(len(data)), bytes.NewReader(data))
		}
		switch {
		case err == nil:
			bad("%s of %d bytes on a %d KiB file system succeeded", op, len(data), *kib)
		case torture.Classify(err) != torture.ClassNoSpace || !strings.Contains(err.Error(), full):
			bad("%s on a full disk: error %q does not say the disk is full (%q)", op, err, full)
		default:
			res.Faults++
			res.Errors[op+"/"+torture.ClassNoSpace]++
			res.Notes = append(res.Notes, op+": "+err.Error())
		}
		checkNothingPartial(s, d, bad)
	}

	// The build path: the image comes from the registry, whatever the
	// cache could not keep.
	res.Ops[torture.OpPull]++
	_, pbad, err := pullImage(ctx, s, images[0], cacheOptions(ctx, log))
	res.Violations = append(res.Violations, pbad...)
	if err != nil {
		bad("pull-through on a full disk failed: %v", err)
	}
	if !strings.Contains(logs.String(), "disk is full") {
		bad("pull-through on a full disk: no warning says the disk is full; log:\n%s", logs.String())
	} else {
		res.Faults++
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "disk is full") {
				res.Notes = append(res.Notes, "pull warning: "+l)
			}
		}
	}
	checkNothingPartial(s, "", bad)

	// Warm needs the cache: it fails, and says why.
	res.Ops[torture.OpWarm]++
	if _, err := remotecache.Warm(ctx, images[0].ref, s, cacheOptions(ctx, log)...); err == nil {
		bad("warm of an image larger than the disk succeeded")
	} else if torture.Classify(err) != torture.ClassNoSpace || !strings.Contains(err.Error(), full) {
		bad("warm on a full disk: error %q does not say the disk is full", err)
	} else {
		res.Faults++
		res.Errors[torture.OpWarm+"/"+torture.ClassNoSpace]++
		res.Notes = append(res.Notes, "warm: "+err.Error())
	}
	checkNothingPartial(s, "", bad)

	// What fits still fits: the failed writes left no temp file taking
	// up the space.
	res.Ops[torture.OpPut]++
	small := randomBytes(rand.New(rand.NewPCG(3, 4)), 4<<10)
	if got, err := s.Put(ctx, bytes.NewReader(small)); err != nil {
		bad("a 4 KiB put after the failures: %v", err)
	} else if b, err := s.Get(ctx, got); err != nil || !bytes.Equal(b, small) {
		bad("a 4 KiB put after the failures reads back (%d bytes, %v)", len(b), err)
	}
	return res, nil
}

// checkNothingPartial reports as violations a file at the final name of d
// (if d is set), any stored blob that does not verify, and any temp file
// in ingest/.
func checkNothingPartial(s *store.Store, d digest.Digest, bad func(string, ...any)) {
	ctx := context.Background()
	if d != "" {
		path, _ := layout.Path(s.Dir()).BlobPath(d)
		if fi, err := os.Lstat(path); err == nil {
			bad("a failed write left %d bytes at the final name %s", fi.Size(), path)
		}
	}
	err := s.Walk(ctx, func(i store.Info) error {
		if _, err := s.Stat(ctx, i.Digest, store.VerifyFirst); err != nil {
			bad("stored blob does not verify: %v", err)
		}
		return nil
	})
	if err != nil {
		bad("walk: %v", err)
	}
	entries, err := os.ReadDir(layout.Path(s.Dir()).Join(layout.IngestDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		bad("ingest: %v", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			bad("a failed write left the temp file ingest/%s", e.Name())
		}
	}
}
