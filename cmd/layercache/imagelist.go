package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// An image list is a text file of references, one a line, which `warm
// --from`, `check --from` and `pin` read:
//
//	# base images
//	cgr.dev/chainguard/static:latest        # the runtime
//	golang:1.26@sha256:…                    # pinned by `layercache pin`
//
// A line holds one reference, with blanks around it allowed. A "#" that
// starts the line, or follows a blank, starts a comment that runs to the
// end of the line; blank lines and comment lines are ignored. Anything
// else (two words on a line, a reference that does not parse) is a usage
// error naming FILE:LINE.

// listLine is one line of an image list.
type listLine struct {
	file string // as the user named it ("-" for stdin)
	num  int    // 1-based
	text string // without its line ending
	eol  string // the line ending: "\n", "\r\n", or "" on a last line without one
	// start and end are the byte offsets of the reference in text; both
	// are 0 on a line with no reference.
	start, end int
}

// ref is the reference the line holds, or "".
func (l listLine) ref() string { return l.text[l.start:l.end] }

// where names the line for messages, as compilers do.
func (l listLine) where() string { return fmt.Sprintf("%s:%d", l.file, l.num) }

// maxListLine bounds a line of an image list: a reference is at most a
// few hundred bytes, and a file of one huge line (a binary, by mistake)
// must not be read whole.
const maxListLine = 64 << 10

// readImageList reads the image list at path, or stdin for "-". A
// malformed line is a usageError naming path:line; a file that cannot be
// read is an error of its own (exit 1, as `put FILE` of a missing file).
func readImageList(ctx context.Context, path string, stdin io.Reader) ([]listLine, error) {
	var r io.Reader
	if path == "-" {
		// stdin may be a pipe nobody writes to: a signal must end the
		// read (see interruptible).
		r = interruptible(ctx, stdin)
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			r = interruptible(ctx, f)
		}
	}
	return parseImageList(path, r)
}

// parseImageList splits r into lines and finds the reference on each.
func parseImageList(file string, r io.Reader) ([]listLine, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxListLine)
	sc.Split(scanLines)
	var lines []listLine
	for sc.Scan() {
		l := listLine{file: file, num: len(lines) + 1, text: sc.Text()}
		for _, eol := range []string{"\r\n", "\n"} {
			if t, ok := strings.CutSuffix(l.text, eol); ok {
				l.text, l.eol = t, eol
				break
			}
		}
		if err := l.find(); err != nil {
			return nil, err
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, usagef("%s:%d: line longer than %d bytes; an image list holds one reference a line", file, len(lines)+1, maxListLine)
		}
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return lines, nil
}

// scanLines is bufio.ScanLines, but each line keeps its ending, so that
// pin writes a file back as it found it.
func scanLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i+1], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// find sets start and end to the reference on the line, past leading
// blanks and before a comment.
func (l *listLine) find() error {
	body := l.text
	for i := 0; i < len(body); i++ {
		if body[i] == '#' && (i == 0 || isBlank(body[i-1])) {
			body = body[:i]
			break
		}
	}
	// One word, or none.
	start := len(body) - len(strings.TrimLeft(body, " \t"))
	end := len(strings.TrimRight(body, " \t"))
	if start >= end {
		return nil
	}
	word := body[start:end]
	if i := strings.IndexAny(word, " \t"); i >= 0 {
		return usagef("%s: %q holds more than one word; an image list holds one reference a line (a comment starts with \" #\")", l.where(), word)
	}
	l.start, l.end = start, end
	return nil
}

func isBlank(b byte) bool { return b == ' ' || b == '\t' }

// imageArgs returns the references named on the command line and in the
// --from lists, in that order, with repeats (the same fully qualified name) dropped: args first, then
// each list's lines. A reference that does not parse is a usage error,
// naming FILE:LINE when it comes from a list.
func imageArgs(ctx context.Context, g *globals, args, lists []string, opts ...name.Option) ([]name.Reference, error) {
	var refs []name.Reference
	seen := map[string]bool{}
	add := func(ref name.Reference) {
		if !seen[ref.Name()] {
			seen[ref.Name()] = true
			refs = append(refs, ref)
		}
	}
	for _, a := range args {
		ref, err := name.ParseReference(a, opts...)
		if err != nil {
			return nil, usagef("parsing reference %q: %w", a, err)
		}
		add(ref)
	}
	for _, path := range lists {
		lines, err := readImageList(ctx, path, g.stdin)
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if l.ref() == "" {
				continue
			}
			ref, err := name.ParseReference(l.ref(), opts...)
			if err != nil {
				return nil, usagef("%s: parsing reference %q: %w", l.where(), l.ref(), err)
			}
			add(ref)
		}
	}
	return refs, nil
}
