package cachedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// tempDir returns a fresh temporary directory with symbolic links resolved,
// so that paths compare equal to what os.Getwd reports after t.Chdir (on
// macOS, /var is a link to /private/var).
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// mkTree creates entries under root. Each entry is a slash-separated path
// relative to root: "a/b" is an empty regular file, "a/b/" a directory, and
// "a/b -> target" a symbolic link to target. Parents are created as needed.
// A test that needs symbolic links is skipped where they cannot be made.
func mkTree(t *testing.T, root string, entries ...string) {
	t.Helper()
	for _, e := range entries {
		name, target, isLink := strings.Cut(e, " -> ")
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case isLink:
			if err := os.Symlink(filepath.FromSlash(target), p); err != nil {
				t.Skipf("cannot create symbolic links here: %v", err)
			}
		case strings.HasSuffix(name, "/"):
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// under returns the absolute form of the slash-separated path rel below
// root, or "" if rel is "" (a field that must be unset).
func under(root, rel string) string {
	if rel == "" {
		return ""
	}
	return filepath.Join(root, filepath.FromSlash(rel))
}

// checkAbsClean fails unless every path in r is absolute and clean.
func checkAbsClean(t *testing.T, r Resolution) {
	t.Helper()
	for _, p := range []struct{ field, path string }{
		{"Dir", r.Dir}, {"WorkDir", r.WorkDir}, {"ProjectRoot", r.ProjectRoot},
	} {
		if p.path == "" && p.field == "ProjectRoot" {
			continue
		}
		if !filepath.IsAbs(p.path) || filepath.Clean(p.path) != p.path {
			t.Errorf("%s = %q, want an absolute, clean path", p.field, p.path)
		}
	}
}

// wantResolution is a Resolution whose paths are slash-separated and
// relative to the test's temporary directory.
type wantResolution struct {
	dir         string
	source      Source
	envVar      string
	projectRoot string
	marker      string
}

func TestOptions_Resolve(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		tree   []string
		// env is set with t.Setenv after DefaultEnvVar is set to "". A
		// "$TMP" in a value is replaced by the temporary directory.
		env map[string]string
		// opts.WorkDir is replaced by workDir below the temporary directory.
		opts Options
		// workDir is joined to the temporary directory by concatenation,
		// not filepath.Join, so that an unclean value stays unclean.
		workDir string
		want    wantResolution
	}{
		// Rule 1: the environment variable.
		{
			name:    "env/absolute",
			reason:  "an explicit override beats a project root",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{DefaultEnvVar: "$TMP/ci-cache"},
			workDir: "proj",
			want:    wantResolution{dir: "ci-cache", source: SourceEnv, envVar: DefaultEnvVar},
		},
		{
			name:    "env/unclean",
			reason:  "the result is clean even if the variable is not",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{DefaultEnvVar: "$TMP/x/../ci//cache/"},
			workDir: "proj",
			want:    wantResolution{dir: "ci/cache", source: SourceEnv, envVar: DefaultEnvVar},
		},
		{
			name:    "env/empty",
			reason:  "a variable set to the empty string counts as unset",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{DefaultEnvVar: ""},
			workDir: "proj",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "env/relative",
			reason:  "a relative value is resolved against WorkDir, not the process's working directory",
			tree:    []string{"proj/go.mod", "proj/sub/"},
			env:     map[string]string{DefaultEnvVar: "cache"},
			workDir: "proj/sub",
			want:    wantResolution{dir: "proj/sub/cache", source: SourceEnv, envVar: DefaultEnvVar},
		},
		{
			name:    "env/relative-dotdot",
			reason:  "a relative value may leave WorkDir, and is cleaned",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{DefaultEnvVar: "../shared//cache"},
			workDir: "proj",
			want:    wantResolution{dir: "shared/cache", source: SourceEnv, envVar: DefaultEnvVar},
		},
		{
			name:    "env/custom-name",
			reason:  "a custom EnvVar is read, and the default variable is then ignored",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{"MYTOOL_CACHE_DIR": "$TMP/mine", DefaultEnvVar: "$TMP/default"},
			opts:    Options{EnvVar: "MYTOOL_CACHE_DIR"},
			workDir: "proj",
			want:    wantResolution{dir: "mine", source: SourceEnv, envVar: "MYTOOL_CACHE_DIR"},
		},
		{
			name:    "env/custom-name-unset",
			reason:  "with a custom EnvVar unset, the default variable does not count either",
			tree:    []string{"proj/go.mod"},
			env:     map[string]string{"MYTOOL_CACHE_DIR": "", DefaultEnvVar: "$TMP/default"},
			opts:    Options{EnvVar: "MYTOOL_CACHE_DIR"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},

		// Rule 2: the project root.
		{
			name:    "root/workdir-is-root",
			reason:  "the walk starts at WorkDir itself",
			tree:    []string{"proj/go.mod"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/walk-up",
			reason:  "a build step in a subdirectory shares the project's cache",
			tree:    []string{"proj/go.mod", "proj/cmd/tool/"},
			workDir: "proj/cmd/tool",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/nearest-wins",
			reason:  "in a monorepo the nested project gets its own cache",
			tree:    []string{"outer/go.mod", "outer/inner/go.mod", "outer/inner/pkg/"},
			workDir: "outer/inner/pkg",
			want:    wantResolution{dir: "outer/inner/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer/inner", marker: "go.mod"},
		},
		{
			name:    "root/nearest-wins-mixed-markers",
			reason:  "the nearest root wins whichever marker it holds: an Elixir app inside a rebar3 umbrella",
			tree:    []string{"outer/rebar.config", "outer/apps/web/mix.exs", "outer/apps/web/lib/"},
			workDir: "outer/apps/web/lib",
			want:    wantResolution{dir: "outer/apps/web/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer/apps/web", marker: "mix.exs"},
		},
		{
			name:    "root/workdir-unclean",
			reason:  "an unclean WorkDir is cleaned before the walk, and every path in the result is clean",
			tree:    []string{"proj/go.mod", "proj/sub/"},
			workDir: "proj/./sub/../sub//",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/workdir-missing",
			reason:  "a WorkDir that does not exist yet is walked up as a path",
			tree:    []string{"proj/go.mod"},
			workDir: "proj/not/yet",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/first-marker-in-list",
			reason:  "when one directory holds several markers, the first in Markers is reported",
			tree:    []string{"proj/rebar.config", "proj/go.mod"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/first-marker-in-custom-list",
			reason:  "the order is that of a custom Markers too",
			tree:    []string{"proj/rebar.config", "proj/go.mod"},
			opts:    Options{Markers: []string{"rebar.config", "go.mod"}},
			workDir: "proj",
			want:    wantResolution{dir: "proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "proj", marker: "rebar.config"},
		},
		{
			name:    "root/dir-named-marker",
			reason:  "a directory named go.mod is no marker: the walk goes on to the outer root",
			tree:    []string{"outer/rebar.config", "outer/proj/go.mod/"},
			workDir: "outer/proj",
			want:    wantResolution{dir: "outer/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer", marker: "rebar.config"},
		},
		{
			name:    "root/symlink-to-file",
			reason:  "a symbolic link to a regular file is a marker (os.Stat follows it)",
			tree:    []string{"outer/rebar.config", "outer/real.mod", "outer/proj/go.mod -> ../real.mod"},
			workDir: "outer/proj",
			want:    wantResolution{dir: "outer/proj/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer/proj", marker: "go.mod"},
		},
		{
			name:    "root/symlink-to-dir",
			reason:  "a symbolic link to a directory is no marker",
			tree:    []string{"outer/rebar.config", "outer/dir/", "outer/proj/go.mod -> ../dir"},
			workDir: "outer/proj",
			want:    wantResolution{dir: "outer/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer", marker: "rebar.config"},
		},
		{
			name:    "root/dangling-symlink",
			reason:  "a dangling symbolic link is no marker",
			tree:    []string{"outer/rebar.config", "outer/proj/go.mod -> ../missing"},
			workDir: "outer/proj",
			want:    wantResolution{dir: "outer/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer", marker: "rebar.config"},
		},
		{
			name:    "root/custom-markers",
			reason:  "custom Markers replace the defaults rather than extend them: go.mod no longer counts",
			tree:    []string{"outer/WORKSPACE", "outer/proj/go.mod"},
			opts:    Options{Markers: []string{"WORKSPACE"}},
			workDir: "outer/proj",
			want:    wantResolution{dir: "outer/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "outer", marker: "WORKSPACE"},
		},
		{
			name:    "root/custom-marker-path",
			reason:  "a marker may be a relative path below the directory being tested",
			tree:    []string{"repo/.git/HEAD", "repo/src/"},
			opts:    Options{Markers: []string{".git/HEAD"}},
			workDir: "repo/src",
			want:    wantResolution{dir: "repo/_build/ocibuild_cache", source: SourceProjectRoot, projectRoot: "repo", marker: ".git/HEAD"},
		},
		{
			name:    "root/custom-subpath",
			reason:  "SubPath replaces _build/ocibuild_cache under the project root",
			tree:    []string{"proj/go.mod"},
			opts:    Options{SubPath: ".mytool/cache"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/.mytool/cache", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},
		{
			name:    "root/custom-subpath-unclean",
			reason:  "a SubPath with . and inner .. that stays below the root is cleaned, not rejected",
			tree:    []string{"proj/go.mod"},
			opts:    Options{SubPath: "./a//b/../c/"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/a/c", source: SourceProjectRoot, projectRoot: "proj", marker: "go.mod"},
		},

		// Rule 3: the working directory. These cases turn rule 2 off, so they
		// do not depend on what lies above the temporary directory; see
		// TestOptions_Resolve_noMarker for the defaults.
		{
			name:    "workdir/markers-off",
			reason:  "a non-nil empty Markers turns rule 2 off",
			tree:    []string{"proj/go.mod", "proj/sub/"},
			opts:    Options{Markers: []string{}},
			workDir: "proj/sub",
			want:    wantResolution{dir: "proj/sub/_build/ocibuild_cache", source: SourceWorkDir},
		},
		{
			name:    "workdir/custom-subpath",
			reason:  "SubPath applies to the working-directory fallback too",
			tree:    []string{"proj/"},
			opts:    Options{Markers: []string{}, SubPath: "cache"},
			workDir: "proj",
			want:    wantResolution{dir: "proj/cache", source: SourceWorkDir},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := tempDir(t)
			mkTree(t, tmp, tc.tree...)
			t.Setenv(DefaultEnvVar, "")
			for k, v := range tc.env {
				t.Setenv(k, strings.ReplaceAll(v, "$TMP", tmp))
			}
			opts := tc.opts
			opts.WorkDir = tmp + string(filepath.Separator) + filepath.FromSlash(tc.workDir)

			got, err := opts.Resolve()
			if err != nil {
				t.Fatalf("Resolve() error: %v (%s)", err, tc.reason)
			}
			want := Resolution{
				Dir:         under(tmp, tc.want.dir),
				Source:      tc.want.source,
				WorkDir:     under(tmp, tc.workDir),
				EnvVar:      tc.want.envVar,
				ProjectRoot: under(tmp, tc.want.projectRoot),
				Marker:      tc.want.marker,
			}
			if got != want {
				t.Errorf("Resolve() =\n\t%+v\nwant\n\t%+v\n(%s)", got, want, tc.reason)
			}
			checkAbsClean(t, got)
		})
	}
}

// TestOptions_Resolve_defaultMarkers checks that each default marker alone
// makes a project root.
func TestOptions_Resolve_defaultMarkers(t *testing.T) {
	for _, m := range DefaultMarkers() {
		t.Run(m, func(t *testing.T) {
			tmp := tempDir(t)
			mkTree(t, tmp, "proj/"+m, "proj/a/b/")
			t.Setenv(DefaultEnvVar, "")

			got, err := Options{WorkDir: filepath.Join(tmp, "proj", "a", "b")}.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(tmp, "proj")
			if got.Source != SourceProjectRoot || got.ProjectRoot != root || got.Marker != m {
				t.Errorf("got source %v, root %q, marker %q; want %v, %q, %q",
					got.Source, got.ProjectRoot, got.Marker, SourceProjectRoot, root, m)
			}
			if want := filepath.Join(root, "_build", "ocibuild_cache"); got.Dir != want {
				t.Errorf("got Dir %q, want %q", got.Dir, want)
			}
			checkAbsClean(t, got)
		})
	}
}

// markerAbove reports the first directory from dir up to the filesystem
// root that holds an entry of any kind named like one of markers. It is
// deliberately looser than the package's own rule, so that a test skipped
// because of it is skipped for a real reason.
func markerAbove(dir string, markers []string) (string, bool) {
	for {
		for _, m := range markers {
			p := filepath.Join(dir, m)
			if _, err := os.Lstat(p); err == nil {
				return p, true
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// TestOptions_Resolve_noMarker checks rule 3 with the default markers, which
// needs a temporary directory with no marker anywhere above it.
func TestOptions_Resolve_noMarker(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		opts   Options
		want   string // slash-separated, relative to the working directory
	}{
		{
			name:   "defaults",
			reason: "with no marker up to the filesystem root, the cache sits under the working directory",
			want:   "_build/ocibuild_cache",
		},
		{
			name:   "custom-subpath",
			reason: "the fallback uses SubPath too",
			opts:   Options{SubPath: "c"},
			want:   "c",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := tempDir(t)
			if p, found := markerAbove(tmp, DefaultMarkers()); found {
				t.Skipf("%s exists above the temporary directory, so the walk would stop there and rule 3 cannot be reached", p)
			}
			mkTree(t, tmp, "work/")
			t.Setenv(DefaultEnvVar, "")
			work := filepath.Join(tmp, "work")
			opts := tc.opts
			opts.WorkDir = work

			got, err := opts.Resolve()
			if err != nil {
				t.Fatalf("Resolve() error: %v (%s)", err, tc.reason)
			}
			want := Resolution{Dir: under(work, tc.want), Source: SourceWorkDir, WorkDir: work}
			if got != want {
				t.Errorf("Resolve() =\n\t%+v\nwant\n\t%+v\n(%s)", got, want, tc.reason)
			}
			checkAbsClean(t, got)
		})
	}
}

// TestOptions_Resolve_processWorkDir checks the cases that read the
// process's working directory, which t.Chdir changes for the whole process.
func TestOptions_Resolve_processWorkDir(t *testing.T) {
	tests := []struct {
		name    string
		reason  string
		chdir   string // below the temporary directory
		workDir string // Options.WorkDir, used as is
	}{
		{
			name:   "empty",
			reason: "an empty WorkDir means os.Getwd",
			chdir:  "proj/sub",
		},
		{
			name:    "relative",
			reason:  "a relative WorkDir is made absolute against the process's working directory",
			chdir:   ".",
			workDir: filepath.Join("proj", "sub"),
		},
		{
			name:    "relative-dotdot",
			reason:  "a relative WorkDir with .. is cleaned",
			chdir:   "proj/other",
			workDir: filepath.Join("..", "sub"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := tempDir(t)
			mkTree(t, tmp, "proj/go.mod", "proj/sub/", "proj/other/")
			t.Setenv(DefaultEnvVar, "")
			t.Chdir(under(tmp, tc.chdir))

			got, err := Options{WorkDir: tc.workDir}.Resolve()
			if err != nil {
				t.Fatalf("Resolve() error: %v (%s)", err, tc.reason)
			}
			root := filepath.Join(tmp, "proj")
			want := Resolution{
				Dir:         filepath.Join(root, "_build", "ocibuild_cache"),
				Source:      SourceProjectRoot,
				WorkDir:     filepath.Join(root, "sub"),
				ProjectRoot: root,
				Marker:      "go.mod",
			}
			if got != want {
				t.Errorf("Resolve() =\n\t%+v\nwant\n\t%+v\n(%s)", got, want, tc.reason)
			}
			checkAbsClean(t, got)
		})
	}
}

func TestDir(t *testing.T) {
	tmp := tempDir(t)
	mkTree(t, tmp, "proj/go.mod", "proj/sub/")
	t.Chdir(filepath.Join(tmp, "proj", "sub"))

	t.Run("project-root", func(t *testing.T) {
		t.Setenv(DefaultEnvVar, "")
		got, err := Dir()
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(tmp, "proj", "_build", "ocibuild_cache"); got != want {
			t.Errorf("Dir() = %q, want %q", got, want)
		}
	})
	t.Run("env-relative", func(t *testing.T) {
		t.Setenv(DefaultEnvVar, "cache")
		got, err := Dir()
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(tmp, "proj", "sub", "cache"); got != want {
			t.Errorf("Dir() = %q, want %q", got, want)
		}
	})
}

func TestOptions_Resolve_invalid(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		opts   Options
		bad    string // the value the error must quote
	}{
		{"subpath/absolute", "an absolute SubPath would ignore the project root", Options{SubPath: string(filepath.Separator) + "abs"}, string(filepath.Separator) + "abs"},
		{"subpath/dotdot", "the parent of the project root is not the project's", Options{SubPath: ".."}, ".."},
		{"subpath/dotdot-prefix", "a leading .. escapes the root", Options{SubPath: "../cache"}, "../cache"},
		{"subpath/dotdot-inner", "an inner .. that climbs above the root escapes it", Options{SubPath: "a/../../cache"}, "a/../../cache"},
		{"subpath/dot", "the project root itself would put the cache among the project's files", Options{SubPath: "."}, "."},
		{"subpath/dot-unclean", "a SubPath that cleans to . is the root too", Options{SubPath: "a/.."}, "a/.."},
		{"marker/empty", "an empty marker would match every directory", Options{Markers: []string{"go.mod", ""}}, `""`},
		{"marker/absolute", "an absolute marker does not depend on the directory tested", Options{Markers: []string{string(filepath.Separator) + "go.mod"}}, string(filepath.Separator) + "go.mod"},
		{"marker/dotdot", "a marker above the tested directory would report the wrong root", Options{Markers: []string{"../go.mod"}}, "../go.mod"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := tempDir(t)
			mkTree(t, tmp, "proj/go.mod")
			// Options are checked even when the variable would decide, so
			// that a bad configuration fails on every machine alike.
			t.Setenv(DefaultEnvVar, tmp)
			opts := tc.opts
			opts.WorkDir = filepath.Join(tmp, "proj")

			got, err := opts.Resolve()
			if !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("Resolve() error = %v, want ErrInvalidOption (%s)", err, tc.reason)
			}
			if got != (Resolution{}) {
				t.Errorf("Resolve() = %+v on error, want the zero Resolution", got)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.bad) {
				t.Errorf("error %q does not name %s", msg, tc.bad)
			}
			if strings.Contains(msg, "failed to") || unicode.IsUpper([]rune(msg)[0]) {
				t.Errorf("error %q: want a lowercase message without \"failed to\"", msg)
			}
		})
	}
}

func TestSource_String(t *testing.T) {
	tests := []struct {
		s      Source
		want   string
		reason string
	}{
		{SourceEnv, "env", "rule 1"},
		{SourceProjectRoot, "project root", "rule 2"},
		{SourceWorkDir, "working directory", "rule 3"},
		{0, "Source(0)", "the zero Source is no rule, and must not read as one"},
		{42, "Source(42)", "an unknown value shows its number"},
	}
	for _, tc := range tests {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Source(%d).String() = %q, want %q (%s)", int(tc.s), got, tc.want, tc.reason)
		}
	}
}

func TestDefaultMarkers_fresh(t *testing.T) {
	m := DefaultMarkers()
	want := []string{"go.mod", "rebar.config", "mix.exs", "gleam.toml"}
	if strings.Join(m, ",") != strings.Join(want, ",") {
		t.Fatalf("DefaultMarkers() = %q, want %q", m, want)
	}
	m[0] = "changed"
	if got := DefaultMarkers()[0]; got != "go.mod" {
		t.Errorf("after changing a returned slice, DefaultMarkers()[0] = %q, want a fresh slice starting with go.mod", got)
	}
}
