package torture_test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// duration is the time budget of the whole suite, shared out between the
// scenarios that run for a bounded time (see budget). The short default
// keeps `make test` quick; `make torture` passes 10m.
var duration = flag.Duration("torture.duration", 30*time.Second,
	"time budget of the torture suite: the many-process runs and the random kills share it")

// budget returns a share of the suite's time budget.
func budget(share float64) time.Duration {
	return time.Duration(float64(*duration) * share)
}

// reportEnv names a file that TestMain writes the table to, besides
// printing it, so that `make` can show it even when go test keeps the
// output of passing packages to itself.
const reportEnv = "LAYERCACHE_TORTURE_REPORT"

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if table := report.table(); table != "" {
		fmt.Print(table)
		if path := os.Getenv(reportEnv); path != "" {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
				_ = os.WriteFile(path, []byte(table), 0o644)
			}
		}
	}
	bins.cleanup()
	os.Exit(code)
}

// row is one line of the final table.
type row struct {
	scenario   string
	ops        int
	faults     string
	violations int
	lost       int
	details    []string
}

// collector gathers the rows of the scenarios that ran.
type collector struct {
	mu   sync.Mutex
	rows []row
}

var report collector

func (c *collector) add(t *testing.T, r row) {
	t.Helper()
	c.mu.Lock()
	c.rows = append(c.rows, r)
	c.mu.Unlock()
	t.Logf("%s: %d operations, faults %s, %d invariant violations, %d lost", r.scenario, r.ops, r.faults, r.violations, r.lost)
	for _, d := range r.details {
		t.Logf("  %s", d)
	}
}

func (c *collector) table() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.rows) == 0 {
		return ""
	}
	rows := append([]row(nil), c.rows...)
	// Scenarios in the order, whatever order they finished in.
	for i := 1; i < len(rows); i++ {
		for j := i; j > 0 && rows[j].scenario < rows[j-1].scenario; j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nlayercache torture suite (-torture.duration=%v, race=%v, GOMAXPROCS=%d)\n\n", *duration, raceEnabled, runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "| %-44s | %10s | %-28s | %20s | %9s |\n", "scenario", "operations", "faults injected", "invariant violations", "data lost")
	fmt.Fprintf(&b, "|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 46), strings.Repeat("-", 12), strings.Repeat("-", 30), strings.Repeat("-", 22), strings.Repeat("-", 11))
	var ops, viol, lost int
	for _, r := range rows {
		fmt.Fprintf(&b, "| %-44s | %10d | %-28s | %20d | %9d |\n", r.scenario, r.ops, r.faults, r.violations, r.lost)
		ops, viol, lost = ops+r.ops, viol+r.violations, lost+r.lost
	}
	fmt.Fprintf(&b, "| %-44s | %10d | %-28s | %20d | %9d |\n", "total", ops, "", viol, lost)
	b.WriteString("\n")
	for _, r := range rows {
		if len(r.details) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s:\n", r.scenario)
		for _, d := range r.details {
			fmt.Fprintf(&b, "  %s\n", d)
		}
	}
	return b.String()
}

// binaries are the programs the suite runs, built once per test binary.
type binaries struct {
	once     sync.Once
	dir      string
	tortured string
	cli      string
	err      error
}

var bins binaries

// build compiles cmd/tortured with the fault points on (and the race
// detector if this test binary has it) and the layercache command, into a
// temporary directory.
func (b *binaries) build() {
	b.dir, b.err = os.MkdirTemp("", "torture-bin-")
	if b.err != nil {
		return
	}
	args := []string{"build", "-tags", "layercache_faultpoint", "-o", filepath.Join(b.dir, "tortured")}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/ocibuild/layercache/integration/torture/cmd/tortured")
	if b.err = goCmd("", args...); b.err != nil {
		return
	}
	b.tortured = filepath.Join(b.dir, "tortured")
	// The command lives in the root module, two levels up.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		b.err = err
		return
	}
	if b.err = goCmd(root, "build", "-o", filepath.Join(b.dir, "layercache"), "./cmd/layercache"); b.err != nil {
		return
	}
	b.cli = filepath.Join(b.dir, "layercache")
}

func goCmd(dir string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (b *binaries) cleanup() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// helpers returns the paths of tortured and layercache, building them on
// first use.
func helpers(t testing.TB) (tortured, cli string) {
	t.Helper()
	bins.once.Do(bins.build)
	if bins.err != nil {
		t.Fatalf("building the helpers: %v", bins.err)
	}
	return bins.tortured, bins.cli
}
