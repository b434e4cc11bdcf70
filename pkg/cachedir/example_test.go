package cachedir_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ocibuild/layercache/pkg/cachedir"
)

// monorepo creates a temporary tree with an outer project and a nested one,
// and returns its root:
//
//	<root>/go.mod
//	<root>/services/api/go.mod
//	<root>/services/api/cmd/server/
func monorepo() string {
	root, err := os.MkdirTemp("", "cachedir-example")
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range []string{"go.mod", "services/api/go.mod"} {
		p := filepath.Join(root, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module example.com/x\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "services", "api", "cmd", "server"), 0o755); err != nil {
		log.Fatal(err)
	}
	return root
}

// rel prints p relative to root, with forward slashes on every OS.
func rel(root, p string) string {
	r, err := filepath.Rel(root, p)
	if err != nil {
		log.Fatal(err)
	}
	return filepath.ToSlash(r)
}

// setenv sets the variable k to v and returns a function that restores
// its previous state.
func setenv(k, v string) (restore func()) {
	old, ok := os.LookupEnv(k)
	if err := os.Setenv(k, v); err != nil {
		log.Fatal(err)
	}
	return func() {
		if ok {
			os.Setenv(k, old)
		} else {
			os.Unsetenv(k)
		}
	}
}

// A build step run deep inside a nested project of a monorepo gets the
// nested project's cache, and the Resolution says why.
func ExampleOptions_Resolve() {
	root := monorepo()
	defer os.RemoveAll(root)

	// An empty variable counts as unset; this keeps the example's output the
	// same on a machine where OCIBUILD_CACHE_DIR is set.
	defer setenv(cachedir.DefaultEnvVar, "")()

	r, err := cachedir.Options{
		WorkDir: filepath.Join(root, "services", "api", "cmd", "server"),
	}.Resolve()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("source:", r.Source)
	fmt.Println("root:  ", rel(root, r.ProjectRoot))
	fmt.Println("marker:", r.Marker)
	fmt.Println("dir:   ", rel(root, r.Dir))
	// Output:
	// source: project root
	// root:   services/api
	// marker: go.mod
	// dir:    services/api/_build/ocibuild_cache
}

// A tool that embeds layercache can use its own variable, sub-path and
// markers. A relative value of the variable is taken relative to WorkDir.
func ExampleOptions_Resolve_customNames() {
	root := monorepo()
	defer os.RemoveAll(root)

	opts := cachedir.Options{
		EnvVar:  "MYTOOL_CACHE_DIR",
		SubPath: ".mytool/cache",
		Markers: []string{"go.mod"},
		WorkDir: filepath.Join(root, "services", "api"),
	}

	defer setenv(opts.EnvVar, "")()
	r, err := opts.Resolve()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Source, rel(root, r.Dir))

	setenv(opts.EnvVar, "../../ci-cache") // as a CI job might
	r, err = opts.Resolve()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Source, r.EnvVar, rel(root, r.Dir))
	// Output:
	// project root services/api/.mytool/cache
	// env MYTOOL_CACHE_DIR ci-cache
}

// A SubPath that would leave the project root is rejected.
func ExampleOptions_Resolve_invalidSubPath() {
	_, err := cachedir.Options{SubPath: "../cache"}.Resolve()
	fmt.Println(err)
	// Output:
	// sub-path "../cache": invalid option: escapes the project root
}
