package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ocibuild/layercache/pkg/store"
)

// cliFigures: `layercache ls` and `layercache prune --max-size` over a
// cache of many small blobs, running the built binary as a user does.
func (b *bench) cliFigures(ctx context.Context) error {
	master := filepath.Join(b.work, "cli-master")
	total, err := fillSmallBlobs(ctx, master, b.sizes.cliBlobs)
	if err != nil {
		return err
	}
	defer os.RemoveAll(master)
	pruneDir := filepath.Join(b.work, "cli-prune")
	defer os.RemoveAll(pruneDir)
	maxSize := fmt.Sprint(total / 2)
	cli := func(args ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			cmd := exec.CommandContext(ctx, b.cli, args...)
			var stderr limitedBuffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s %v: %w: %s", b.cli, args, err, stderr.String())
			}
			return nil
		}
	}
	ls := variant{name: "layercache ls", unit: unitSeconds, run: timed(cli("--cache-dir", master, "ls"))}
	// The machine's own listing of the same folder: ls -l (a stat per
	// file, sorted, one line each) and find -printf (the same without
	// sorting), run the same way, their output read through a pipe.
	blobs := filepath.Join(master, "blobs", "sha256")
	tool := func(name string, args ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			cmd := exec.CommandContext(ctx, name, args...)
			var stderr limitedBuffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s %v: %w: %s", name, args, err, stderr.String())
			}
			return nil
		}
	}
	lsl := variant{name: "ls -l", unit: unitSeconds, run: timed(tool("ls", "-l", blobs))}
	find := variant{name: "find -printf", unit: unitSeconds, run: timed(tool("find", blobs, "-type", "f", "-printf", "%f\t%s\t%TY-%Tm-%Td\n"))}
	prune := variant{name: "layercache prune --max-size (half)", unit: unitSeconds,
		// Each run prunes a fresh copy: hard links of the master's files,
		// so the copy costs no data and the master is never touched.
		prep: func(context.Context) error { return linkTree(master, pruneDir) },
		run:  timed(cli("--cache-dir", pruneDir, "prune", "--max-size", maxSize))}
	st, err := b.sample(ctx, "CLI", ls, lsl, find, prune)
	if err != nil {
		return err
	}
	n := fmt.Sprintf("%d", b.sizes.cliBlobs)
	b.addRow("7", "`layercache ls` over "+n+" small blobs (A) vs `ls -l` of their folder (B)", "small", st[0], st[1], atMostTimes(1.5, "≤ 1.5", "A time ÷ B time"))
	b.addRow("7'", "`layercache prune --max-size` over "+n+" small blobs, evicting half the bytes (A)", "small", st[3], nil, atMostValue(1, "≤ 1 s"))
	b.addRow("7''", "`layercache ls` over "+n+" small blobs (A) vs `find -printf` of their folder (B)", "small", st[0], st[2], infoTimes("A time ÷ B time"))
	return nil
}

// fillSmallBlobs puts n random blobs of 512 B to 8 KiB into a store in
// dir, with last uses spread over the past month so that prune has an
// order to follow. It returns their total size.
func fillSmallBlobs(ctx context.Context, dir string, n int) (int64, error) {
	if err := os.RemoveAll(dir); err != nil {
		return 0, err
	}
	s, err := store.Open(dir)
	if err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 8<<10)
	now := time.Now()
	var total int64
	for i := 0; i < n; i++ {
		size := 512 + rng.IntN(len(buf)-512+1)
		for j := range size {
			buf[j] = byte(rng.Uint32())
		}
		d, err := s.Put(ctx, bytes.NewReader(buf[:size]))
		if err != nil {
			return 0, err
		}
		t := now.Add(-time.Duration(rng.Int64N(int64(30 * 24 * time.Hour))))
		if err := os.Chtimes(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()), t, t); err != nil {
			return 0, err
		}
		total += int64(size)
	}
	return total, nil
}

// linkTree makes dst a copy of src made of hard links.
func linkTree(src, dst string) error {
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		return os.Link(path, target)
	})
}
