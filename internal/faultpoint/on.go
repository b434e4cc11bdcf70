//go:build layercache_faultpoint

package faultpoint

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Enabled reports whether this build kills at fault points.
const Enabled = true

// plan is what LAYERCACHE_KILL_AT asks for; it is parsed once.
type plan struct {
	step   string  // the step to kill at; "" in random mode
	nth    int64   // kill at the nth hit of step (1 by default)
	offset int64   // with HitBytes, kill once n >= offset; -1 if unused
	prob   float64 // random mode: chance per hit
	rng    *rand.Rand

	mu   sync.Mutex
	hits int64
}

var (
	once    sync.Once
	current *plan // nil when LAYERCACHE_KILL_AT is unset or invalid
)

func load() {
	v := os.Getenv(EnvVar)
	if v == "" {
		return
	}
	p, err := parse(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultpoint: %s=%q: %v; not killing\n", EnvVar, v, err)
		return
	}
	current = p
}

func parse(v string) (*plan, error) {
	if rest, ok := strings.CutPrefix(v, "random:"); ok {
		seed, prob, ok := strings.Cut(rest, ":")
		if !ok {
			return nil, fmt.Errorf("want random:<seed>:<prob>")
		}
		s, err := strconv.ParseUint(seed, 10, 64)
		if err != nil {
			return nil, err
		}
		p, err := strconv.ParseFloat(prob, 64)
		if err != nil || p < 0 || p > 1 {
			return nil, fmt.Errorf("probability %q is not in [0,1]", prob)
		}
		return &plan{prob: p, offset: -1, rng: rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))}, nil
	}
	p := &plan{step: v, nth: 1, offset: -1}
	if step, n, ok := strings.Cut(v, "@"); ok {
		nth, err := strconv.ParseInt(n, 10, 64)
		if err != nil || nth < 1 {
			return nil, fmt.Errorf("bad hit count %q", n)
		}
		p.step, p.nth = step, nth
	} else if step, k, ok := strings.Cut(v, "+"); ok {
		off, err := strconv.ParseInt(k, 10, 64)
		if err != nil || off < 0 {
			return nil, fmt.Errorf("bad byte offset %q", k)
		}
		p.step, p.offset = step, off
	}
	return p, nil
}

// Hit kills the process if LAYERCACHE_KILL_AT names this step (or, in
// random mode, if the dice say so).
func Hit(name string) { hit(name, -1) }

// HitBytes is Hit for write loops: n is how many bytes the step has
// written so far, which a "<step>+<K>" plan compares with its offset K.
func HitBytes(name string, n int64) { hit(name, n) }

func hit(name string, n int64) {
	once.Do(load)
	p := current
	if p == nil {
		return
	}
	p.mu.Lock()
	kill := false
	switch {
	case p.rng != nil:
		kill = p.rng.Float64() < p.prob
	case name != p.step:
	case p.offset >= 0:
		kill = n >= p.offset
	default:
		p.hits++
		kill = p.hits == p.nth
	}
	if !kill {
		p.mu.Unlock()
		return
	}
	// Keep the lock: no other goroutine gets past a fault point while the
	// process dies.
	fmt.Fprintf(os.Stderr, "faultpoint: SIGKILL at %s (n=%d)\n", name, n)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; wait for it to land
}
