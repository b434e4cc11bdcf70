package torture_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/layout"
)

// workers is how many processes share the cache at once.
const workers = 8

// loadImages are the images of the many-process runs: small, so that a
// run does many operations, and several, so that prunes and clears race
// with pulls of others.
var loadImages = [][]int64{{96 << 10, 160 << 10}, {64 << 10, 200 << 10, 32 << 10}, {128 << 10}}

// TestManyProcesses runs eight processes for a bounded time, each doing a
// random mix of warms and pulls from the local registry, gets, puts,
// deletes, prunes with a small size bound, clears and ref updates on one
// cache directory.
func TestManyProcesses(t *testing.T) {
	w := newWorld(t, loadImages...)
	res, lostRefs, corrupted := hammer(t, w, budget(0.35), false)
	report.add(t, row{
		scenario: "2. eight processes at once",
		ops:      res.TotalOps(), faults: "none",
		violations: len(res.Violations), lost: lostRefs + res.LostUpdates + corrupted,
		details: []string{
			"operations: " + torture.Counts(res.Ops),
			"errors: " + torture.Counts(res.Errors),
			fmt.Sprintf("lost updates: %d in %d read-backs of ref writes, %d in the final index.json (%d refs checked); corrupted blobs at the end: %d",
				res.LostUpdates, res.RefChecks, lostRefs, finalChecks(res), corrupted),
		},
	})
}

// TestRegistryFaultsUnderLoad is TestManyProcesses with a registry that
// fails one GET in five: error statuses, connections reset or cut short,
// flipped bytes, rewritten JSON. At the end `layercache verify` must find
// no corrupted blob.
func TestRegistryFaultsUnderLoad(t *testing.T) {
	w := newWorld(t, loadImages...)
	// Five kinds at 4.5% each: about one GET in five goes wrong.
	const rate = 0.045
	gets := func(r *http.Request) bool { return regtest.IsBlobGet(r) || regtest.IsManifestGet(r) }
	injections := []*regtest.Injection{
		w.proxy.Inject(regtest.Status(http.StatusInternalServerError).Only(gets).Rate(rate)),
		w.proxy.Inject(regtest.ResetAfter(4 << 10).Only(gets).Rate(rate)),
		w.proxy.Inject(regtest.TruncateAfter(1 << 10).Only(gets).Rate(rate)),
		w.proxy.Inject(regtest.FlipByte(100).Only(gets).Rate(rate)),
		w.proxy.Inject(regtest.MutateJSON(mutateDoc).Only(gets).Rate(rate)),
	}
	res, lostRefs, corrupted := hammer(t, w, budget(0.35), true)
	var fired int64
	var kinds []string
	for i, in := range injections {
		fired += in.Fired()
		kinds = append(kinds, fmt.Sprintf("%s=%d", []string{"status-500", "reset", "truncate", "flip-byte", "mutate-json"}[i], in.Fired()))
	}
	st := w.proxy.Stats()
	report.add(t, row{
		scenario: "6. registry faults (20%) under load",
		ops:      res.TotalOps(), faults: fmt.Sprintf("%d of %d GETs", fired, st.BlobGets+st.ManifestGets),
		violations: len(res.Violations), lost: lostRefs + res.LostUpdates + corrupted,
		details: []string{
			"operations: " + torture.Counts(res.Ops),
			"errors: " + torture.Counts(res.Errors),
			"faults: " + strings.Join(kinds, " "),
			fmt.Sprintf("layercache verify: %d corrupted; lost updates: %d in %d read-backs, %d in the final index.json (%d refs checked)",
				corrupted, res.LostUpdates, res.RefChecks, lostRefs, finalChecks(res)),
		},
	})
	if fired == 0 {
		t.Error("no fault was injected")
	}
}

// mutateDoc changes a JSON document the way a broken or hostile registry
// might: a layer's size or digest, a dropped layer, or a new field.
func mutateDoc(doc map[string]any) {
	if layers, ok := doc["layers"].([]any); ok && len(layers) > 0 {
		if l, ok := layers[0].(map[string]any); ok {
			l["size"] = json.Number("1")
			return
		}
	}
	doc["torture"] = "mutated"
}

// hammer runs the workers on one cache for d and checks the cache at the
// end. It returns the merged results (with the violations found here
// added), the refs lost from the final index.json, and the blobs
// `layercache verify` found corrupted.
func hammer(t *testing.T, w *world, d time.Duration, faulty bool) (torture.Result, int, int) {
	_, cli := helpers(t)
	dir := filepath.Join(t.TempDir(), "cache")
	coord := t.TempDir()
	args := func(id int) []string {
		a := []string{"worker", "-dir", dir, "-coord", coord, "-id", fmt.Sprint(id),
			"-duration", d.String(), "-seed", fmt.Sprint(time.Now().UnixNano()), "-max-size", fmt.Sprint(2 << 20)}
		if faulty {
			a = append(a, "-faulty")
		}
		for _, img := range w.images {
			a = append(a, "-image", img.spec())
		}
		return a
	}
	ctx, cancel := context.WithTimeout(t.Context(), d+5*time.Minute)
	defer cancel()
	runs := make([]run, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() { runs[i] = runHelper(ctx, t, "", nil, args(i)...) })
	}
	wg.Wait()

	var res torture.Result
	res.Add(torture.Result{})
	var states []torture.RefState
	for i, r := range runs {
		switch {
		case r.killed:
			res.Violations = append(res.Violations, fmt.Sprintf("worker %d was killed", i))
		case r.err != nil:
			res.Violations = append(res.Violations, fmt.Sprintf("worker %d crashed: %v", i, r.err))
		default:
			res.Add(r.res)
			states = append(states, r.res.Refs...)
		}
	}

	// The cache at rest: a fresh open finds it sound.
	st, bad := inspect(t, dir)
	res.Violations = append(res.Violations, bad...)

	// No ref is lost except by a prune or a clear: a ref whose last write
	// succeeded with no prune or clear running, and none started since,
	// is in index.json as written; an untagged one is not.
	lostRefs := 0
	starts := torture.Generation(coord, torture.StartsFile)
	for _, s := range states {
		if !s.Unsure && (s.Digest == "" || s.Quiet && s.Gen == starts) {
			res.Faults++ // counted as final checks; see finalChecks
		}
		got, present := st.refs[s.Name]
		switch {
		case s.Unsure:
		case s.Digest == "" && present:
			lostRefs++
			res.Violations = append(res.Violations, fmt.Sprintf("ref %s was untagged last, and index.json has it at %s", s.Name, got))
		case s.Digest != "" && present && got != digest.Digest(s.Digest):
			lostRefs++
			res.Violations = append(res.Violations, fmt.Sprintf("ref %s was tagged to %s last, and index.json has %s", s.Name, s.Digest, got))
		case s.Digest != "" && !present && s.Quiet && s.Gen == starts:
			lostRefs++
			res.Violations = append(res.Violations, fmt.Sprintf("ref %s (tagged to %s with no prune or clear since) is missing from index.json", s.Name, s.Digest))
		}
	}

	// Zero bad bytes in the store, as the command says it.
	out, err := exec.CommandContext(ctx, cli, "verify", "--json", "--cache-dir", dir).Output()
	var v struct {
		Blobs     int `json:"blobs"`
		Corrupted []struct {
			Digest string `json:"digest"`
			Error  string `json:"error"`
		} `json:"corrupted"`
	}
	if jerr := json.Unmarshal(out, &v); jerr != nil {
		res.Violations = append(res.Violations, fmt.Sprintf("layercache verify: %v, %v: %s", err, jerr, out))
	}
	for _, c := range v.Corrupted {
		res.Violations = append(res.Violations, "layercache verify: corrupted "+c.Digest+": "+c.Error)
	}
	if err == nil && len(v.Corrupted) > 0 {
		res.Violations = append(res.Violations, "layercache verify exited 0 with corrupted blobs")
	}
	t.Logf("%d workers for %v: %d operations; %d blobs verified at the end, %d refs; ingest/ holds %d entries",
		workers, d, res.TotalOps(), v.Blobs, len(st.refs), countIngest(dir))
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	for i, r := range runs {
		if r.err != nil || r.killed {
			t.Logf("worker %d stderr:\n%s", i, tail(r.stderr))
		}
	}
	return res, lostRefs, len(v.Corrupted)
}

// finalChecks is how many refs the final check of index.json could hold
// to their last write; hammer counts them in Faults, which the workers of
// a many-process run leave at zero.
func finalChecks(r torture.Result) int { return r.Faults }

func countIngest(dir string) int {
	entries, _ := filepath.Glob(filepath.Join(dir, layout.IngestDir, "*"))
	return len(entries)
}
