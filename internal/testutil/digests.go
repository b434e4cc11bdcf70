package testutil

import (
	"strings"

	"github.com/opencontainers/go-digest"
)

var (
	// Hex64 is 64 lowercase hex digits: the length of a sha256 digest.
	Hex64 = strings.Repeat("0123456789abcdef", 4)
	// Hex128 is 128 lowercase hex digits: the length of a sha512 digest.
	Hex128 = strings.Repeat("0123456789abcdef", 8)
)

// InvalidDigests are inputs that must never become a path, each with the
// reason it is invalid. layout's tests check that each fails validation;
// storetest runs each through every store method taking a digest.
var InvalidDigests = []struct {
	Digest digest.Digest
	Reason string
}{
	{"", "empty"},
	{digest.Digest(Hex64), "no algorithm"},
	{digest.Digest(":" + Hex64), "empty algorithm"},
	{"md5:d41d8cd98f00b204e9800998ecf8427e", "unknown algorithm md5"},
	{digest.Digest("sha384:" + Hex64 + Hex64[:32]), "sha384 is a valid go-digest algorithm but not one a layout stores"},
	{digest.Digest("sha1:" + Hex64[:40]), "unknown algorithm sha1"},
	{digest.Digest("SHA256:" + Hex64), "uppercase algorithm"},
	{digest.Digest("sha256+b64u:" + Hex64), "algorithm with a separator"},
	{digest.Digest("sha256:" + strings.ToUpper(Hex64)), "uppercase hex"},
	{digest.Digest("sha256:" + Hex64[:63] + "A"), "one uppercase hex digit"},
	{digest.Digest("sha256:" + Hex64[:63] + "g"), "non-hex letter"},
	{digest.Digest("sha256:" + Hex64[:10]), "wrong length: short"},
	{digest.Digest("sha256:" + Hex64[:63]), "wrong length: one digit short"},
	{digest.Digest("sha256:" + Hex64 + "0"), "wrong length: one digit long"},
	{digest.Digest("sha256:" + Hex128), "wrong length: sha512 length under sha256"},
	{digest.Digest("sha512:" + Hex64), "wrong length: sha256 length under sha512"},
	{"sha256:../../etc/passwd", "path traversal"},
	{digest.Digest("sha256:../" + Hex64[:61]), "path traversal of the right length"},
	{digest.Digest("sha256:" + Hex64[:32] + "\x00" + Hex64[:31]), "embedded NUL"},
	{digest.Digest("sha256:" + Hex64 + "\x00"), "trailing NUL"},
	{digest.Digest("sha256:" + Hex64[:32] + "/" + Hex64[:31]), "embedded slash"},
	{digest.Digest("sha256:/" + Hex64[:63]), "leading slash"},
	{digest.Digest(" sha256:" + Hex64), "leading space"},
	{digest.Digest("sha256:" + Hex64 + " "), "trailing space"},
	{digest.Digest("sha256:" + Hex64 + "\n"), "trailing newline"},
	{digest.Digest("sha256: " + Hex64[:63]), "space after the colon"},
	{"sha256:", "sha256: with empty hex"},
	{"sha256", "algorithm without colon"},
	{digest.Digest("sha256::" + Hex64), "double colon"},
	{digest.Digest("sha256:sha256:" + Hex64), "algorithm twice"},
	{digest.Digest("sha256:" + Hex64[:62] + "é"), "non-ASCII byte"},
}
