package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/store"
)

func newPinCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "pin FILE",
		Short: "Pin the tags of an image list to the digests the cache recorded",
		Long: `Rewrite each tag in the image list FILE (one reference a line, as warm --from
reads it) as tag@digest, with the digest the cache's index.json records for the
tag, so that later warms and builds use exactly the images warmed now. Comments,
blank lines and the order of lines are kept. Nothing is asked of a registry.

A reference pinned already keeps its digest when the cache records the same one
for its tag (or, for a tag it has not recorded, holds the digest's manifest),
and is an error otherwise. A reference the cache does not hold is an error
naming it. On any error the file is left as it was and the exit status is 1.

The file is replaced in one step (a temporary file in its folder, then a
rename), so a reader never sees half of it. With --dry-run, or for FILE "-"
(stdin), the result goes to stdout instead. What changed is named on stderr.`,
		Example: `  # After warming the images, pin them for reproducible builds
  layercache warm --from images.txt
  layercache pin images.txt

  # See what would change
  layercache pin --dry-run images.txt`,
		Args: exactArgs(1, "one FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			file := args[0]
			lines, err := readImageList(ctx, file, g.stdin)
			if err != nil {
				return err
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			var (
				b       strings.Builder
				changed []string
				errs    []error
			)
			for _, l := range lines {
				text := l.text
				if l.ref() != "" {
					pinned, err := pinRef(ctx, s, l)
					switch {
					case err != nil:
						errs = append(errs, err)
					case pinned != l.ref():
						text = l.text[:l.start] + pinned + l.text[l.end:]
						changed = append(changed, fmt.Sprintf("%s: %s", l.where(), pinned))
					}
				}
				b.WriteString(text + l.eol)
			}
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("pin %s: %w; the file was not changed", file, err)
			}
			verb := "pinned"
			if dryRun {
				verb = "would pin"
			}
			if dryRun || file == "-" {
				if _, err := fmt.Fprint(g.stdout, b.String()); err != nil {
					return err
				}
			} else if len(changed) > 0 {
				if err := replaceFile(file, b.String()); err != nil {
					return err
				}
			}
			for _, c := range changed {
				fmt.Fprintf(g.stderr, "%s %s\n", verb, printable(c))
			}
			if len(changed) == 0 {
				fmt.Fprintf(g.stderr, "%s: every reference is pinned already\n", printable(file))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the pinned file to stdout and leave FILE as it is")
	return cmd
}

// pinRef returns the line's reference pinned to a digest: tag@digest for
// a tag the cache recorded; as it is for one pinned already, if the cache
// agrees. Errors name the line.
func pinRef(ctx context.Context, s *store.Store, l listLine) (string, error) {
	text := l.ref()
	base, pin, pinned := strings.Cut(text, "@")
	if !pinned {
		tag, err := name.NewTag(text)
		if err != nil {
			return "", usagef("%s: parsing reference %q: %w", l.where(), text, err)
		}
		desc, err := s.Resolve(ctx, tag.Name())
		if errors.Is(err, store.ErrNotFound) {
			return "", fmt.Errorf("%s: %s is not in the cache; warm it first", l.where(), text)
		}
		if err != nil {
			return "", err
		}
		if !hasTag(text) {
			// "alpine" is "alpine:latest": say which tag was pinned,
			// so that pinning the file again can check it.
			text += ":" + tag.TagStr()
		}
		return text + "@" + desc.Digest.String(), nil
	}
	ref, err := name.NewDigest(text)
	if err != nil {
		return "", usagef("%s: parsing reference %q: %w", l.where(), text, err)
	}
	d := digest.Digest(pin)
	if hasTag(base) {
		tag, err := name.NewTag(base)
		if err != nil {
			return "", usagef("%s: parsing reference %q: %w", l.where(), text, err)
		}
		desc, err := s.Resolve(ctx, tag.Name())
		switch {
		case err == nil && desc.Digest != d:
			return "", fmt.Errorf("%s: %s is pinned to %s, but the cache records %s for the tag; edit the line, or drop its digest and pin again", l.where(), text, d, desc.Digest)
		case err == nil:
			return text, nil
		case !errors.Is(err, store.ErrNotFound):
			return "", err
		}
	}
	// A digest reference, or a pinned tag the cache has not recorded (a
	// warm by digest records no tag): the cache must hold the manifest.
	if _, err := s.Stat(ctx, digest.Digest(ref.DigestStr())); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", fmt.Errorf("%s: %s is not in the cache; warm it first", l.where(), text)
		}
		return "", err
	}
	return text, nil
}

// hasTag reports whether a reference without a digest names its tag,
// rather than meaning "latest": a colon after the last slash (one before
// it is a registry's port).
func hasTag(ref string) bool {
	return strings.LastIndexByte(ref, ':') > strings.LastIndexByte(ref, '/')
}

// replaceFile replaces the file at path (or, for a symlink, the file it
// points at) with text, keeping its mode: a temporary file in the same
// folder, synced, then renamed over it, so that a reader sees the old
// file or the new one, never a part.
func replaceFile(path, text string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(real), "."+filepath.Base(real)+".*.tmp")
	if err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing there
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Chmod(fi.Mode().Perm())
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), real)
	}
	if err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}
