package main

import (
	"fmt"
	"io"
	"log"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// humanBytes formats n with binary units, as `du -h` and crane do.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseSize parses sizes such as 512, 100MB, 10GiB or 1.5G. Decimal units
// (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, ..., or a bare
// K, M, G, T) powers of 1024.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return !unicode.IsDigit(r) && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit such as 500MB or 10GiB", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s, unit)
	}
	// A float64 of 2^63 or more converts to an int64 the spec leaves to
	// the implementation (a negative one on amd64), so it is refused here.
	n := f * mult
	if n >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: out of range (at most 8 EiB)", s)
	}
	return int64(n), nil
}

// parseAge parses durations such as 30d, 2w, 12h or 90m: Go's durations
// plus d (24h) and w (7d), which is how people say cache ages.
func parseAge(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(t, suffix); ok {
			f, err := strconv.ParseFloat(n, 64)
			// ParseFloat takes "NaN" and "Inf" too.
			if err != nil || !(f >= 0) || math.IsInf(f, 1) {
				return 0, fmt.Errorf("invalid age %q: want a duration such as 30d, 12h or 90m", s)
			}
			// As in parseSize: no conversion of 2^63 ns or more.
			ns := f * float64(unit)
			if ns >= math.MaxInt64 {
				return 0, fmt.Errorf("invalid age %q: out of range (at most 292 years)", s)
			}
			return time.Duration(ns), nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid age %q: want a duration such as 30d, 12h or 90m", s)
	}
	return d, nil
}

// printable returns s as it is when a terminal shows it as text, and
// otherwise quoted as Go quotes strings (strconv.Quote), so that "\x1b[2J"
// prints as those seven characters instead of clearing the screen. Ref
// names, media types and platforms come from index.json, manifests and
// registries, which anyone may have written. Quoted are: strings holding a
// rune strconv.IsPrint refuses (C0 and C1 controls such as ESC and CSI,
// bidi overrides, tabs and newlines, which would also break a table's
// columns), strings that are not valid UTF-8 (a lone 0x9b byte is CSI on
// some terminals), and strings starting with a double quote, so that a
// quoted string is never mistaken for a plain one. JSON output needs none
// of this: encoding/json escapes control characters itself.
func printable(s string) string {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) || strings.IndexFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// printables applies printable to each of ss.
func printables(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = printable(s)
	}
	return out
}

// shortDigest abbreviates a digest for tables: algorithm and 12 hex digits.
func shortDigest(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}

// ago formats a past time relative to now, coarsely.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%d days ago", int(d.Hours()/24))
	}
}

// v1MediaType converts a media type string to ggcr's type, for its
// IsIndex and IsImage predicates.
func v1MediaType(s string) types.MediaType { return types.MediaType(s) }

// digestOf converts a digest string this program printed back.
func digestOf(s string) digest.Digest { return digest.Digest(s) }

// discardLogger silences the in-process registry's request log.
func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
