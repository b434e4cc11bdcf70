// Command tortured is the helper process of layercache's torture suite
// (package torture). The tests build it with -tags layercache_faultpoint,
// so that LAYERCACHE_KILL_AT can kill it at a chosen step, and run it as:
//
//	tortured op -dir DIR -op put|putverified|pull|warm|get|inspect|prune|clear|tag ...
//	tortured worker -dir DIR -coord DIR -id N -duration D -image SPEC...
//	tortured fulldisk -dir MOUNTPOINT -kib N -image SPEC -put-size N
//	tortured readonly -dir DIR -hit SPEC -miss SPEC
//
// SPEC is REF|DIGEST|SIZE: an image reference (through the test's proxy),
// the digest of its manifest, and the manifest's size. Each mode prints a
// torture.Result as the last line of stdout and exits 0, or prints an
// error on stderr and exits 1. fulldisk and readonly need a private mount
// namespace, which the test sets up (SysProcAttr.Unshareflags).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tortured op|worker|fulldisk|readonly [flags]")
		os.Exit(2)
	}
	modes := map[string]func([]string) (torture.Result, error){
		"op":       runOp,
		"worker":   runWorker,
		"fulldisk": runFullDisk,
		"readonly": runReadOnly,
	}
	run, ok := modes[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "tortured: unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
	res, err := run(os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "tortured %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tortured: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("\n%s\n", b)
}

// imageSpec is an image the test pushed: a reference and what its
// manifest must be.
type imageSpec struct {
	ref    name.Reference
	digest digest.Digest
	size   int64
}

func parseSpec(s string) (imageSpec, error) {
	parts := strings.Split(s, "|")
	if len(parts) != 3 {
		return imageSpec{}, fmt.Errorf("image spec %q: want REF|DIGEST|SIZE", s)
	}
	ref, err := name.ParseReference(parts[0], name.Insecure)
	if err != nil {
		return imageSpec{}, err
	}
	d, err := digest.Parse(parts[1])
	if err != nil {
		return imageSpec{}, err
	}
	size, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return imageSpec{}, err
	}
	return imageSpec{ref: ref, digest: d, size: size}, nil
}

// specList is a repeatable -image flag.
type specList []imageSpec

func (l *specList) String() string { return fmt.Sprint(len(*l)) }

func (l *specList) Set(s string) error {
	sp, err := parseSpec(s)
	if err != nil {
		return err
	}
	*l = append(*l, sp)
	return nil
}

// fastBackoff retries 10 ms apart, so that faults fail fast.
var fastBackoff = remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 3}

// cacheOptions are the remotecache options of every pull: plain HTTP, no
// proxy from the environment, short retries.
func cacheOptions(ctx context.Context, log *slog.Logger) []remotecache.Option {
	return []remotecache.Option{
		remotecache.WithContext(ctx),
		remotecache.WithTransport(&http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}),
		remotecache.WithRemote(remote.WithRetryBackoff(fastBackoff)),
		remotecache.WithLogger(log),
	}
}

// randomBytes returns n bytes from rng.
func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// choppyReader returns data in reads of random sizes, so that write loops
// (and the byte offsets they are killed at) vary.
type choppyReader struct {
	data []byte
	rng  *rand.Rand
}

func (r *choppyReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), 1+r.rng.IntN(96<<10))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// hashAll reads r to its end and returns the sha256 digest and length of
// what it read.
func hashAll(r io.Reader) (digest.Digest, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, err
	}
	return digest.Digest("sha256:" + hex.EncodeToString(h.Sum(nil))), n, nil
}

// flagSet returns a flag set that reports errors instead of exiting.
func flagSet(mode string) *flag.FlagSet {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}
