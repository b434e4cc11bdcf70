package layout_test

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
)

func ExamplePath_BlobPath() {
	p := layout.Path("/home/me/project/_build/ocibuild_cache")

	d := digest.FromString("hello\n")
	path, err := p.BlobPath(d)
	if err != nil {
		fmt.Println(err)
		return
	}
	rel, _ := filepath.Rel(p.String(), path)
	fmt.Println(rel)

	// A digest that does not validate never becomes a path.
	_, err = p.BlobPath("sha256:../../etc/passwd")
	fmt.Println(errors.Is(err, layout.ErrInvalidDigest))
	fmt.Println(err)
	// Output:
	// blobs/sha256/5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03
	// true
	// invalid digest "sha256:../../etc/passwd": invalid checksum digest length
}
