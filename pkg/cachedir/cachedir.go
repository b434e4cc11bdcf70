// Package cachedir decides where the layer cache lives.
//
// Three rules are tried in order, and the first that matches wins:
//
//  1. Environment variable. If OCIBUILD_CACHE_DIR (see [DefaultEnvVar]) is
//     set to a non-empty value, that is the cache directory. A relative
//     value is taken relative to the working directory.
//  2. Project root. Starting at the working directory and walking up to the
//     filesystem root, the first directory that holds one of the marker
//     files (go.mod, rebar.config, mix.exs or gleam.toml; see
//     [DefaultMarkers]) is the project root, and the cache directory is
//     <root>/_build/ocibuild_cache (see [DefaultSubPath]). The nearest root
//     wins, so in a monorepo a nested project gets its own cache.
//  3. Working directory. If no directory up to the filesystem root holds a
//     marker, the cache directory is <workdir>/_build/ocibuild_cache.
//
// Why a project-rooted directory: CI caches (GitHub's actions/cache,
// GitLab's cache:) save and restore paths inside the checkout. A cache under
// the project root is found again by every job and every subdirectory of the
// same project, whichever directory a build step happens to run in, while
// the environment variable lets a runner point all jobs at a shared
// directory outside the checkout.
//
// These are the rules of ocibuild_cache, the layer cache of the Erlang OCI
// image builder that layercache descends from. The variable name, the
// sub-path and the markers are all [Options], so a tool that embeds
// layercache can use its own names.
//
// The resolved directory is always absolute and cleaned by [filepath.Clean].
// Resolution only reads the environment and stats files; it never creates
// the directory. It is safe for concurrent use.
package cachedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// DefaultEnvVar is the environment variable that overrides every other rule
// when it is set to a non-empty value.
const DefaultEnvVar = "OCIBUILD_CACHE_DIR"

// DefaultSubPath is the cache directory relative to the project root (or to
// the working directory when there is no project root). It is written with
// forward slashes and converted with [filepath.FromSlash] when used.
const DefaultSubPath = "_build/ocibuild_cache"

// DefaultMarkers returns the file names whose presence makes a directory a
// project root: go.mod, rebar.config, mix.exs and gleam.toml. Each call
// returns a fresh slice that the caller may modify.
func DefaultMarkers() []string {
	return []string{"go.mod", "rebar.config", "mix.exs", "gleam.toml"}
}

// ErrInvalidOption is returned by [Options.Resolve] when SubPath or one of
// the Markers is not a local relative path (empty, absolute, or escaping
// with ".."), or when SubPath names the project root itself ("."). The
// error text names the offending value.
var ErrInvalidOption = errors.New("invalid option")

// Source says which rule chose the cache directory.
type Source int

// The rules, in the order in which they are tried. The zero Source is none
// of them.
const (
	// SourceEnv: the environment variable named in Resolution.EnvVar was set.
	SourceEnv Source = iota + 1
	// SourceProjectRoot: Resolution.Marker was found in Resolution.ProjectRoot.
	SourceProjectRoot
	// SourceWorkDir: no marker up to the filesystem root; the cache sits
	// under Resolution.WorkDir.
	SourceWorkDir
)

// String returns "env", "project root" or "working directory", and
// "Source(N)" for any other value.
func (s Source) String() string {
	switch s {
	case SourceEnv:
		return "env"
	case SourceProjectRoot:
		return "project root"
	case SourceWorkDir:
		return "working directory"
	}
	return "Source(" + strconv.Itoa(int(s)) + ")"
}

// Options changes the names the rules use. The zero Options means the
// defaults, so Options{}.Resolve() is what [Dir] does.
type Options struct {
	// EnvVar is the environment variable of rule 1. A variable that is set
	// but empty counts as unset. The default ("") means [DefaultEnvVar].
	EnvVar string

	// SubPath is the cache directory relative to the project root (rule 2)
	// or the working directory (rule 3). It must be a relative path that
	// stays below that directory: an absolute SubPath, one that escapes with
	// "..", or one that cleans to "." (the cache would be the project
	// itself) is rejected with [ErrInvalidOption]. The default ("") means
	// [DefaultSubPath].
	SubPath string

	// Markers are the names of the files that mark a project root (rule 2).
	// Each is a relative path that stays below the directory being tested
	// (usually a plain file name such as "go.mod"); others are rejected with
	// [ErrInvalidOption]. A marker counts only if it is a regular file, or a
	// symbolic link to one (it is checked with [os.Stat], which follows
	// links): a directory named go.mod or a dangling link marks nothing.
	// When one directory holds several markers, the first in this list is
	// reported. A nil Markers means [DefaultMarkers]; a non-nil empty slice
	// turns rule 2 off, as with the Env field of [os/exec.Cmd].
	Markers []string

	// WorkDir is where the walk of rule 2 starts, what rule 3 falls back to,
	// and what a relative environment value is resolved against. A relative
	// WorkDir is made absolute against the process's working directory
	// first. The default ("") means [os.Getwd].
	WorkDir string
}

// Resolution is the cache directory and how it was found, with the details
// a command needs to explain the choice.
type Resolution struct {
	// Dir is the cache directory: absolute and clean. It may not exist yet.
	Dir string

	// Source is the rule that chose Dir.
	Source Source

	// WorkDir is the absolute, clean working directory the rules started
	// from, whatever the Source.
	WorkDir string

	// EnvVar is the name of the environment variable that set Dir. It is
	// set only when Source is SourceEnv.
	EnvVar string

	// ProjectRoot is the absolute, clean directory in which Marker was
	// found, and Marker is the marker as given in Options.Markers. Both are
	// set only when Source is SourceProjectRoot.
	ProjectRoot string
	Marker      string
}

// Dir returns the cache directory by the default rules, as described in the
// package documentation. It is Options{}.Resolve() without the explanation.
func Dir() (string, error) {
	r, err := Options{}.Resolve()
	if err != nil {
		return "", err
	}
	return r.Dir, nil
}

// Resolve applies the three rules with o's names and reports which one
// chose the directory. On error it returns the zero Resolution; the errors
// are an invalid option ([ErrInvalidOption]) or a working directory that
// cannot be determined.
func (o Options) Resolve() (Resolution, error) {
	envVar := o.EnvVar
	if envVar == "" {
		envVar = DefaultEnvVar
	}
	sub, err := subPath(o.SubPath)
	if err != nil {
		return Resolution{}, err
	}
	markers := o.Markers
	if markers == nil {
		markers = DefaultMarkers()
	}
	for _, m := range markers {
		if err := checkLocal("marker", m, "the directory being tested"); err != nil {
			return Resolution{}, err
		}
	}
	wd, err := workDir(o.WorkDir)
	if err != nil {
		return Resolution{}, err
	}

	// Rule 1. An empty value counts as unset, so that `VAR= cmd` and CI
	// templates that always export the variable fall through to rule 2.
	if v := os.Getenv(envVar); v != "" {
		if !filepath.IsAbs(v) {
			v = filepath.Join(wd, v) // against WorkDir, not the process's cwd
		}
		return Resolution{
			Dir:     filepath.Clean(v),
			Source:  SourceEnv,
			WorkDir: wd,
			EnvVar:  envVar,
		}, nil
	}

	// Rule 2.
	if root, marker, ok := findRoot(wd, markers); ok {
		return Resolution{
			Dir:         filepath.Join(root, sub),
			Source:      SourceProjectRoot,
			WorkDir:     wd,
			ProjectRoot: root,
			Marker:      marker,
		}, nil
	}

	// Rule 3.
	return Resolution{
		Dir:     filepath.Join(wd, sub),
		Source:  SourceWorkDir,
		WorkDir: wd,
	}, nil
}

// workDir returns dir, or the process's working directory if dir is empty,
// as an absolute, clean path.
func workDir(dir string) (string, error) {
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("getting working directory: %w", err)
		}
		return filepath.Clean(wd), nil
	}
	abs, err := filepath.Abs(dir) // Abs also cleans
	if err != nil {
		return "", fmt.Errorf("working directory %q: %w", dir, err)
	}
	return abs, nil
}

// subPath returns the cleaned, OS-specific form of sub, or of
// DefaultSubPath if sub is empty.
func subPath(sub string) (string, error) {
	if sub == "" {
		return filepath.FromSlash(DefaultSubPath), nil
	}
	if err := checkLocal("sub-path", sub, "the project root"); err != nil {
		return "", err
	}
	clean := filepath.Clean(filepath.FromSlash(sub))
	if clean == "." {
		// The cache would be the project (or working) directory itself, and
		// clearing the cache would touch the project's own files.
		return "", fmt.Errorf("sub-path %q: %w: names the project root itself, want a directory below it",
			sub, ErrInvalidOption)
	}
	return clean, nil
}

// checkLocal rejects a path p (named what in errors) that is empty,
// absolute, or escapes the directory it is joined to (named below).
func checkLocal(what, p, below string) error {
	switch {
	case p == "":
		return fmt.Errorf("%s %q: %w: empty", what, p, ErrInvalidOption)
	case filepath.IsAbs(p):
		return fmt.Errorf("%s %q: %w: absolute, want a path relative to %s", what, p, ErrInvalidOption, below)
	case !filepath.IsLocal(filepath.FromSlash(p)):
		// IsLocal also rejects rooted paths such as \x and reserved names
		// such as NUL on Windows.
		return fmt.Errorf("%s %q: %w: escapes %s", what, p, ErrInvalidOption, below)
	}
	return nil
}

// findRoot walks up from dir (absolute and clean) to the filesystem root
// and returns the first directory that holds one of markers as a regular
// file, with the marker found there.
//
// As in cmd/go's findModuleRoot, a Stat error of any kind (not found,
// permission denied in a parent we may not read) means "no marker here" and
// the walk goes on: resolution must not fail because of a directory above
// the project that the user does not own.
func findRoot(dir string, markers []string) (root, marker string, ok bool) {
	if len(markers) == 0 {
		return "", "", false
	}
	for {
		for _, m := range markers {
			fi, err := os.Stat(filepath.Join(dir, m)) // follows symlinks
			if err == nil && fi.Mode().IsRegular() {
				return dir, m, true
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", "", false
		}
		dir = parent
	}
}
