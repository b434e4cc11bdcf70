package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machine describes where and how the benchmark ran.
type machine struct {
	CPU         string    `json:"cpu"`
	Cores       int       `json:"cores"`
	MemTotal    string    `json:"memTotal"`
	Kernel      string    `json:"kernel"`
	GoVersion   string    `json:"goVersion"`
	GOOS        string    `json:"goos"`
	GOARCH      string    `json:"goarch"`
	Date        time.Time `json:"date"`
	LoadStart   string    `json:"loadAvgStart"`
	LoadEnd     string    `json:"loadAvgEnd"`
	ForeignCPU  float64   `json:"foreignCPU"` // share of all cores used by other processes, approximately
	Elapsed     float64   `json:"elapsedSeconds"`
	cpuStart    cpuTimes
	wallStart   time.Time
	ForeignNote string `json:"foreignNote"`
	// Source is the layercache commit measured, and whether the library
	// had uncommitted changes.
	Source string `json:"source"`
	// HashStart and HashEnd are sha256 in memory, in GB/s, at the start
	// and the end of the run: a host that is slower than usual (a busy
	// neighbour of a VM, which the load of this machine does not show)
	// is seen here.
	HashStart float64 `json:"sha256GBpsStart"`
	HashEnd   float64 `json:"sha256GBpsEnd"`
}

// hashSpeed measures sha256 over 32 MiB in memory: the best of five
// rounds, in GB/s. Issue 5 gives 1.48 for its reference machine.
func hashSpeed() float64 {
	buf := make([]byte, 32<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	best := 0.0
	for range 5 {
		start := time.Now()
		sha256.Sum256(buf)
		best = max(best, float64(len(buf))/time.Since(start).Seconds()/1e9)
	}
	return best
}

func describeMachine() machine {
	m := machine{
		CPU:       cpuModel(),
		Cores:     runtime.NumCPU(),
		MemTotal:  memTotal(),
		Kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		GoVersion: runtime.Version(),
		GOOS:      runtime.GOOS,
		GOARCH:    runtime.GOARCH,
		Date:      time.Now().UTC().Truncate(time.Second),
		LoadStart: loadAvg(),
		Source:    sourceVersion(),
		HashStart: hashSpeed(),
		cpuStart:  readCPUTimes(),
		wallStart: time.Now(),
	}
	return m
}

// finish records the load at the end and how much CPU other processes
// took during the run: all busy CPU time of the machine minus that of the
// harness and its waited-for children (the registry included).
func (m *machine) finish() {
	m.LoadEnd = loadAvg()
	m.HashEnd = hashSpeed()
	wall := time.Since(m.wallStart).Seconds()
	m.Elapsed = wall
	end := readCPUTimes()
	busy := end.busy - m.cpuStart.busy
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	own := tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
	if wall > 0 && end.ok && m.cpuStart.ok {
		m.ForeignCPU = max(0, (busy-own)/(wall*float64(m.Cores)))
	}
	m.ForeignNote = "share of all cores busy outside the harness and its children (kernel writeback included)"
}

// sourceVersion describes the checkout the harness runs in: the commit,
// and the library directories with uncommitted changes. The figures are
// of the code as it was at the start of the run.
func sourceVersion() string {
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown (not a git checkout)"
	}
	v := "commit " + strings.TrimSpace(string(out))
	dirty, err := exec.Command("git", "status", "--porcelain", "--", "layout", "pkg", "cmd", "go.mod", "go.sum").Output()
	if err == nil && len(dirty) > 0 {
		var files []string
		for _, line := range strings.Split(string(dirty), "\n") {
			if len(line) > 3 { // "XY path"
				files = append(files, line[3:])
			}
		}
		v += fmt.Sprintf(" + uncommitted changes to %d files (%s)", len(files), strings.Join(files, ", "))
	}
	return v
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

type cpuTimes struct {
	busy float64 // seconds
	ok   bool
}

// readCPUTimes reads the machine's busy CPU time from /proc/stat.
func readCPUTimes() cpuTimes {
	line, _, _ := strings.Cut(readFile("/proc/stat"), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuTimes{}
	}
	var busy float64
	for i, s := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 7 { // guest times are already in user
			break
		}
		v, _ := strconv.ParseFloat(s, 64)
		busy += v
	}
	return cpuTimes{busy: busy / 100, ok: true} // USER_HZ is 100 on Linux
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func memTotal() string {
	for _, line := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return fmt.Sprintf("%.1f GiB", kb/(1<<20))
		}
	}
	return "unknown"
}

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuMeter measures how much CPU other processes take over a span of time:
// the machine's busy time (/proc/stat) minus the harness's, its waited-for
// children's and the registry child's.
type cpuMeter struct {
	busy, own float64
	wall      time.Time
	ok        bool
}

func (b *bench) startMeter() cpuMeter {
	c := readCPUTimes()
	return cpuMeter{busy: c.busy, own: b.ownCPU(), wall: time.Now(), ok: c.ok}
}

// foreign returns the share of all cores that other processes used since
// m started.
func (b *bench) foreign(m cpuMeter) float64 {
	c := readCPUTimes()
	wall := time.Since(m.wall).Seconds()
	if !m.ok || !c.ok || wall <= 0 {
		return 0
	}
	return max(0, (c.busy-m.busy-(b.ownCPU()-m.own))/(wall*float64(numCPU())))
}

// ownCPU is the CPU time of the harness, of its finished children and of
// the running registry child.
func (b *bench) ownCPU() float64 {
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	own := tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
	if b.reg != nil && b.reg.cmd.Process != nil && b.reg.cmd.ProcessState == nil {
		// Fields 14 and 15 of /proc/PID/stat, after the command name
		// in parentheses: utime and stime in clock ticks.
		stat := readFile(fmt.Sprintf("/proc/%d/stat", b.reg.cmd.Process.Pid))
		if i := strings.LastIndexByte(stat, ')'); i >= 0 {
			if f := strings.Fields(stat[i+1:]); len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				s, _ := strconv.ParseFloat(f[12], 64)
				own += (u + s) / 100
			}
		}
	}
	return own
}

// waitIdle waits until other processes take less than busyMachine of the
// CPU over one second, or until limit has passed.
func (b *bench) waitIdle(ctx context.Context, limit time.Duration) {
	if limit <= 0 {
		return
	}
	deadline := time.Now().Add(limit)
	for {
		m := b.startMeter()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		f := b.foreign(m)
		if f <= busyMachine {
			return
		}
		if time.Now().After(deadline) {
			b.logf("machine still busy (%.0f%% of the CPU taken by others); measuring anyway", 100*f)
			return
		}
	}
}
