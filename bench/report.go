package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Results of a row.
const (
	resultPass  = "PASS"
	resultFail  = "FAIL"
	resultInfo  = "info"
	resultError = "ERROR"
)

// check is how a row turns its two figures into a ratio and a verdict.
type check struct {
	target string // as printed
	ratio  string // what the ratio is, as printed
	calc   func(a, b float64) float64
	pass   func(r float64) bool // nil: informational
}

// speedAtLeast: A must run at least x times as fast as B (ratio = B's time
// ÷ A's time). Used against the ideals ("≥ 0.85×") and against slower
// rivals ("≥ 2× faster").
func speedAtLeast(x float64, target string) check {
	return check{
		target: target,
		ratio:  "B time ÷ A time",
		calc:   func(a, b float64) float64 { return b / a },
		pass:   func(r float64) bool { return r >= x },
	}
}

// atMostTimes: A's figure must be at most x times B's (ratio = A ÷ B).
func atMostTimes(x float64, target, ratio string) check {
	return check{
		target: target,
		ratio:  ratio,
		calc:   func(a, b float64) float64 { return a / b },
		pass:   func(r float64) bool { return r <= x },
	}
}

// atMostValue: A's figure itself must be at most x.
func atMostValue(x float64, target string) check {
	return check{
		target: target,
		ratio:  "A",
		calc:   func(a, _ float64) float64 { return a },
		pass:   func(r float64) bool { return r <= x },
	}
}

// infoSpeed reports B time ÷ A time with no target.
func infoSpeed() check {
	return check{target: "—", ratio: "B time ÷ A time", calc: func(a, b float64) float64 { return b / a }}
}

// infoTimes reports A ÷ B with no target.
func infoTimes(ratio string) check {
	return check{target: "—", ratio: ratio, calc: func(a, b float64) float64 { return a / b }}
}

// row is one line of the results table: figure A compared with figure B,
// both taken in the same set of interleaved runs.
type row struct {
	ID      string  `json:"id"`
	Figure  string  `json:"figure"`
	Content string  `json:"content"`
	A       *stat   `json:"a"`
	B       *stat   `json:"b,omitempty"`
	Ratio   float64 `json:"ratio"`
	RatioOf string  `json:"ratioOf"`
	Target  string  `json:"target"`
	Result  string  `json:"result"`
	Error   string  `json:"error,omitempty"`
	// Busy is the share of the CPU other processes took while the set
	// of this row ran.
	Busy float64 `json:"busy"`
}

// figureRecord is a figure with the set it was measured in.
type figureRecord struct {
	Set  string  `json:"set"`
	Busy float64 `json:"busy"` // share of the CPU other processes took during the set
	*stat
}

func (b *bench) addRow(id, figure, content string, a, bb *stat, c check) {
	r := row{ID: id, Figure: figure, Content: content, A: a, B: bb, RatioOf: c.ratio, Target: c.target, Busy: b.lastBusy}
	var bm float64
	if bb != nil {
		bm = bb.Median
	}
	r.Ratio = c.calc(a.Median, bm)
	switch {
	case c.pass == nil:
		r.Result = resultInfo
	case c.pass(r.Ratio):
		r.Result = resultPass
	default:
		r.Result = resultFail
	}
	b.rows = append(b.rows, r)
}

// note adds a line under the table.
func (b *bench) note(s string) {
	b.notes = append(b.notes, strings.ReplaceAll(strings.TrimSpace(s), "\n", "; "))
}

// addError records a set that could not be measured, so that one broken
// figure does not hide the others.
func (b *bench) addError(id, figure, content string, err error) {
	b.logf("ERROR %s: %v", id, err)
	b.rows = append(b.rows, row{ID: id, Figure: figure, Content: content, Result: resultError, Error: err.Error()})
}

// formatStat prints a figure as median [min–max], with a throughput when
// it has bytes per run.
func formatStat(s *stat) string {
	if s == nil {
		return "—"
	}
	out := fmt.Sprintf("%s %s [%s–%s]", s.Name, formatValue(s.Median, s.Unit), formatValue(s.Min, s.Unit), formatValue(s.Max, s.Unit))
	if s.Unit == unitSeconds && s.Bytes > 0 && s.Median > 0 {
		out += fmt.Sprintf(" = %.2f GB/s", float64(s.Bytes)/s.Median/1e9)
	}
	if s.DiskRead >= 1<<20 {
		out += fmt.Sprintf("; %s read from disk", formatValue(float64(s.DiskRead), unitBytes))
	}
	return out
}

func formatValue(v float64, unit string) string {
	switch unit {
	case unitSeconds:
		if v < 1 {
			return fmt.Sprintf("%.1f ms", v*1e3)
		}
		return fmt.Sprintf("%.3f s", v)
	case unitBytes:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case unitRatio:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// report is the JSON document of a run.
type report struct {
	Machine  machine        `json:"machine"`
	Mode     string         `json:"mode"`
	Runs     int            `json:"runs"`
	Registry string         `json:"registry"`
	Images   []imageJSON    `json:"images"`
	Rows     []row          `json:"rows"`
	Figures  []figureRecord `json:"figures"`
	Notes    []string       `json:"notes,omitempty"`
	Passed   int            `json:"passed"`
	Failed   int            `json:"failed"`
	Errors   int            `json:"errors"`
}

type imageJSON struct {
	Name              string  `json:"name"`
	Kind              string  `json:"kind"`
	Layers            int     `json:"layers"`
	LayerBytes        int64   `json:"layerBytes"`
	UncompressedBytes int64   `json:"uncompressedBytes"`
	Ratio             float64 `json:"compressionRatio"`
}

func (b *bench) report() report {
	r := report{Machine: b.machine, Mode: b.mode, Runs: b.runs, Registry: registryDescription, Rows: b.rows, Figures: b.figures, Notes: b.notes}
	for _, im := range b.imageList {
		r.Images = append(r.Images, imageJSON{
			Name: im.name, Kind: im.kind, Layers: len(im.layers), LayerBytes: im.layerBytes(),
			UncompressedBytes: im.uncompressedBytes(), Ratio: float64(im.uncompressedBytes()) / float64(im.layerBytes()),
		})
	}
	for _, row := range b.rows {
		switch row.Result {
		case resultPass:
			r.Passed++
		case resultFail:
			r.Failed++
		case resultError:
			r.Errors++
		}
	}
	return r
}

// busyMachine is the share of CPU taken by other processes above which the
// header warns that the figures are unreliable.
const busyMachine = 0.10

// registryDescription says how the registry serves, for the header.
const registryDescription = "ggcr pkg/registry registry.New() (blobs in memory) in a child process, over loopback"

// writeMarkdown prints the header and the table.
func writeMarkdown(w io.Writer, r report) {
	m := r.Machine
	fmt.Fprintf(w, "## layercache bench (%s mode)\n\n", r.Mode)
	fmt.Fprintf(w, "- machine: %s, %d cores, %s RAM, Linux %s\n", m.CPU, m.Cores, m.MemTotal, m.Kernel)
	fmt.Fprintf(w, "- Go: %s %s/%s; date: %s; elapsed: %.0f s\n", m.GoVersion, m.GOOS, m.GOARCH, m.Date.Format(time.RFC3339), m.Elapsed)
	fmt.Fprintf(w, "- layercache: %s\n", m.Source)
	fmt.Fprintf(w, "- load average: %s at start, %s at end; CPU taken by other processes: %.0f%% of the cores\n", m.LoadStart, m.LoadEnd, 100*m.ForeignCPU)
	fmt.Fprintf(w, "- host speed: sha256 in memory %.2f GB/s at start, %.2f GB/s at end (best of 5 over 32 MiB; compare runs only at like speeds)\n", m.HashStart, m.HashEnd)
	if m.ForeignCPU > busyMachine {
		fmt.Fprintf(w, "- **WARNING: other processes used %.0f%% of the CPU during the run: the figures are not those of an idle machine**\n", 100*m.ForeignCPU)
	}
	fmt.Fprintf(w, "- each figure: median [min–max] of %d runs after one warm-up, A and B interleaved; GB/s are of the bytes a figure returns (compressed for Compressed() and pulls, uncompressed for Uncompressed())\n", r.Runs)
	fmt.Fprintf(w, "- registry: %s\n", r.Registry)
	for _, im := range r.Images {
		fmt.Fprintf(w, "- image %s: %d layers, %s compressed, %s uncompressed (%.2f:1)\n", im.Name, im.Layers,
			formatValue(float64(im.LayerBytes), unitBytes), formatValue(float64(im.UncompressedBytes), unitBytes), im.Ratio)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| # | figure | content | A | B | ratio | target | result |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, row := range r.Rows {
		if row.Result == resultError {
			msg := strings.NewReplacer("|", "/", "\n", " ").Replace(row.Error)
			fmt.Fprintf(w, "| %s | %s | %s | — | — | — | — | ERROR: %s |\n", row.ID, row.Figure, row.Content, msg)
			continue
		}
		ratio := fmt.Sprintf("%.2f (%s)", row.Ratio, row.RatioOf)
		switch row.RatioOf {
		case "A":
			ratio = "—"
		}
		result := row.Result
		if row.Busy > busyMachine {
			result += fmt.Sprintf(" (busy %.0f%%)", 100*row.Busy)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", row.ID, row.Figure, row.Content,
			formatStat(row.A), formatStat(row.B), ratio, row.Target, result)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- note: %s\n", n)
	}
	fmt.Fprintf(w, "\n%d PASS, %d FAIL, %d ERROR", r.Passed, r.Failed, r.Errors)
	if busy := r.busyRows(); busy > 0 {
		fmt.Fprintf(w, "; %d rows measured while other processes took more than %.0f%% of the CPU (\"busy\")", busy, 100*busyMachine)
	}
	fmt.Fprintln(w)
}

func (r report) busyRows() int {
	n := 0
	for _, row := range r.Rows {
		if row.Busy > busyMachine {
			n++
		}
	}
	return n
}

// writeJSON writes the report to dir/<timestamp>.json and returns the path.
func writeJSON(dir string, r report) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, r.Machine.Date.Format("20060102T150405Z")+".json")
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}
