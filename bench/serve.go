package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Figures of `layercache serve` (issue 16): the built CLI serving a cache
// directory as a registry mirror on loopback.

// serveProc is a `layercache serve` process.
type serveProc struct {
	addr string // HOST:PORT
	cmd  *exec.Cmd
	done chan struct{}
}

// hasServe reports whether the CLI has the serve command.
func (b *bench) hasServe(ctx context.Context) bool {
	return exec.CommandContext(ctx, b.cli, "serve", "--help").Run() == nil
}

// startServe starts `layercache --cache-dir dir serve` with upstream, and
// returns once it has said where it listens. Its access log is read and
// dropped.
func (b *bench) startServe(ctx context.Context, dir, upstream string) (*serveProc, error) {
	cmd := exec.CommandContext(ctx, b.cli, "--cache-dir", dir, "serve", "--addr", "127.0.0.1:0", "--upstream", upstream)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serveProc{cmd: cmd, done: make(chan struct{})}
	r := bufio.NewReader(stderr)
	line, err := r.ReadString('\n')
	go func() {
		io.Copy(io.Discard, r)
		cmd.Wait()
		close(p.done)
	}()
	const prefix = "layercache serve: listening on http://"
	rest, ok := strings.CutPrefix(line, prefix)
	if err != nil || !ok {
		p.stop()
		return nil, fmt.Errorf("layercache serve said %q (%v), want a line that starts with %q", line, err, prefix)
	}
	p.addr, _, _ = strings.Cut(rest, " ")
	return p, nil
}

// stop sends SIGTERM, as a service manager would, and waits.
func (p *serveProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// getBlobs GETs every blob of paths from host with client, one after the
// other, and checks each body's length.
func getBlobs(ctx context.Context, client *http.Client, host string, paths []string, sizes []int64) error {
	for i, p := range paths {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+p, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("GET %s%s: %w", host, p, err)
		}
		if resp.StatusCode != http.StatusOK || n != sizes[i] {
			return fmt.Errorf("GET %s%s: %s, %d bytes, want 200 and %d", host, p, resp.Status, n, sizes[i])
		}
	}
	return nil
}

// serveWarm: GETs of every layer of the random image, each blob whole,
// through `layercache serve` over a cache that holds them (every blob
// verified before its first byte), against the same GETs from a registry
// process that holds them: distribution, filesystem storage, when built,
// else the ggcr registry child (blobs in memory). Both read from the page
// cache, over loopback, with the same client.
func (b *bench) serveWarm(ctx context.Context) error {
	if !b.hasServe(ctx) {
		b.note("row 14: " + b.cli + " has no serve command")
		return nil
	}
	im, _, err := b.filledStore(ctx, kindRandom)
	if err != nil {
		return err
	}
	cacheDir := b.stores[kindRandom]
	regHost, regFiles, what := b.reg.host, []string(nil), "the ggcr registry child (blobs in memory; distribution not built: make deps)"
	if b.distribution != "" {
		dir := filepath.Join(b.work, "serve-registry")
		defer os.RemoveAll(dir)
		d, err := b.startMirrorOf(ctx, "", dir, false)
		if err != nil {
			return err
		}
		defer d.stop()
		// Copy the image into it: its blobs on its disk.
		dst, err := im.byTag(d.addr)
		if err != nil {
			return err
		}
		img, err := remote.Image(im.tag, remote.WithContext(ctx))
		if err != nil {
			return err
		}
		if err := remote.Write(dst, img, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("copying %s to distribution: %w", im.tag, err)
		}
		regHost, regFiles, what = d.addr, []string{d.storage}, "distribution "+distributionVersion+" (filesystem storage)"
	}
	s, err := b.startServe(ctx, cacheDir, b.reg.host)
	if err != nil {
		return err
	}
	defer s.stop()
	var paths []string
	var sizes []int64
	for _, l := range im.layers {
		paths = append(paths, fmt.Sprintf("/v2/bench/%s/blobs/%s", im.name, l.digest))
		sizes = append(sizes, l.size)
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	n := im.layerBytes()
	through := variant{name: "GET through layercache serve", unit: unitSeconds, bytes: n, files: []string{cacheDir},
		run: timed(func(ctx context.Context) error { return getBlobs(ctx, client, s.addr, paths, sizes) })}
	direct := variant{name: "GET from the registry", unit: unitSeconds, bytes: n, files: regFiles,
		run: timed(func(ctx context.Context) error { return getBlobs(ctx, client, regHost, paths, sizes) })}
	st, err := b.sample(ctx, "serve warm", through, direct)
	if err != nil {
		return err
	}
	b.addRow("14", fmt.Sprintf("warm blob GETs of %d layers, one after the other, same client: through `layercache serve`, every blob verified (A) vs from %s (B)", len(im.layers), what), kindRandom,
		st[0], st[1], speedAtLeast(0.8, "≥ 0.8"))
	return nil
}

// serveClients is how many clients pull one cold image through serve at
// once in row 15.
const serveClients = 8

// serveFleet: 8 clients (ggcr's remote.Image in goroutines, transports of
// their own, every layer read) pull one cold image through one
// `layercache serve` on an empty cache at once; the upstream's blob bytes
// ÷ the image's. The peer: the same clients through distribution in proxy
// mode, cold, when built.
func (b *bench) serveFleet(ctx context.Context) error {
	if !b.hasServe(ctx) {
		b.note("row 15: " + b.cli + " has no serve command")
		return nil
	}
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	base := filepath.Join(b.work, "serve-fleet")
	defer os.RemoveAll(base)
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	var host string // of the server the clients pull through
	fresh := func(serve bool) func(context.Context) error {
		return func(ctx context.Context) error {
			if stop != nil {
				stop()
				stop = nil
			}
			if serve {
				dir := filepath.Join(base, "cache")
				if err := freshStore(dir); err != nil {
					return err
				}
				s, err := b.startServe(ctx, dir, b.reg.host)
				if err != nil {
					return err
				}
				host, stop = s.addr, s.stop
			} else {
				m, err := b.startMirrorOf(ctx, b.reg.host, filepath.Join(base, "mirror"), false)
				if err != nil {
					return err
				}
				host, stop = m.addr, m.stop
			}
			return b.reg.reset()
		}
	}
	var serveF, peerF failures
	pull := func(failed *failures) func(ctx context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			ref, err := name.ParseReference(fmt.Sprintf("%s/bench/%s:latest", host, im.name), name.Insecure)
			if err != nil {
				return 0, err
			}
			var wg sync.WaitGroup
			errs := make([]error, serveClients)
			start := make(chan struct{})
			for i := range serveClients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tr := &http.Transport{DisableCompression: true}
					defer tr.CloseIdleConnections()
					<-start
					img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(tr))
					if err == nil {
						err = drainCompressed(img)
					}
					errs[i] = err
				}()
			}
			close(start)
			wg.Wait()
			for _, err := range errs {
				failed.runs++
				if err != nil {
					failed.failed++
					if failed.first == "" {
						failed.first = err.Error()
					}
				}
			}
			c, err := b.reg.counters()
			return float64(c.BlobBytes) / float64(im.blobBytes()), err
		}
	}
	vs := []variant{{name: fmt.Sprintf("%d clients through layercache serve", serveClients), unit: unitRatio, prep: fresh(true), run: pull(&serveF)}}
	if b.distribution != "" {
		vs = append(vs, variant{name: fmt.Sprintf("%d clients through distribution proxy mode", serveClients), unit: unitRatio, prep: fresh(false), run: pull(&peerF)})
	}
	st, err := b.sample(ctx, "serve fleet", vs...)
	if err != nil {
		return err
	}
	var peer *stat
	vsPeer := ""
	if len(st) > 1 {
		peer, vsPeer = st[1], " vs through distribution proxy mode, cold (B)"
	}
	c := check{
		target: "1.0, no client fails",
		ratio:  "A",
		calc:   func(a, _ float64) float64 { return a },
		pass:   func(r float64) bool { return r <= 1.01 && serveF.failed == 0 },
	}
	b.addRow("15", fmt.Sprintf("%d clients (remote.Image, every layer read) pull one cold %d-layer image at once: upstream blob bytes ÷ image bytes, through `layercache serve` (A)%s", serveClients, len(im.layers), vsPeer), kindRandom,
		st[0], peer, c)
	if serveF.failed > 0 {
		b.note("row 15, layercache serve: " + serveF.String())
	}
	if peerF.failed > 0 {
		b.note("row 15, distribution: " + peerF.String())
	}
	return nil
}
