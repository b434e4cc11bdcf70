package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Error codes of the distribution spec ("Error Codes"), as its JSON error
// bodies carry them.
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeManifestInvalid = "MANIFEST_INVALID"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeSizeInvalid     = "SIZE_INVALID"
	codeUnsupported     = "UNSUPPORTED"
	codeDenied          = "DENIED"
	codeTooManyRequests = "TOOMANYREQUESTS"
)

// apiError is an answer in the spec's error form.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// writeError answers with the spec's JSON error body. A HEAD gets the
// status and headers only.
func writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	body, _ := json.Marshal(struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}{Errors: []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{{Code: e.code, Message: e.message}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// pullError maps an error of remotecache.Blob or Manifest to an answer:
// unknown is the code of a thing neither the cache nor the upstream holds
// (BLOB_UNKNOWN or MANIFEST_UNKNOWN).
func (h *Handler) pullError(err error, unknown, what string) *apiError {
	var terr *transport.Error
	switch {
	case errors.Is(err, store.ErrInvalidDigest):
		return &apiError{http.StatusBadRequest, codeDigestInvalid, err.Error()}
	case errors.Is(err, remotecache.ErrOffline) && h.offline:
		return &apiError{http.StatusNotFound, unknown, what + " is not in the cache, and serve is offline"}
	case errors.Is(err, remotecache.ErrOffline):
		return &apiError{http.StatusBadGateway, unknown, what + " is not in the cache, and the upstream cannot be reached: " + err.Error()}
	case errors.As(err, &terr):
		return upstreamStatus(terr, unknown, what)
	case errors.Is(err, context.Canceled):
		return &apiError{http.StatusServiceUnavailable, codeUnsupported, "request cancelled (client gone or server shutting down)"}
	case errors.As(err, new(*net.OpError)), errors.As(err, new(*net.DNSError)):
		return &apiError{http.StatusBadGateway, unknown, what + " is not in the cache, and the upstream cannot be reached: " + err.Error()}
	}
	return &apiError{http.StatusBadGateway, unknown, fmt.Sprintf("%s: %v", what, err)}
}

// upstreamStatus maps the upstream's HTTP answer: a 404 stays a 404 with
// the upstream's code; a 401 or 403 (serve's own credentials refused) is
// DENIED, not a 401 that would make the client send credentials to serve;
// a 429 stays a 429; anything else is a bad gateway.
func upstreamStatus(terr *transport.Error, unknown, what string) *apiError {
	msg := fmt.Sprintf("%s: upstream answered: %v", what, terr)
	switch terr.StatusCode {
	case http.StatusNotFound:
		code := unknown
		if len(terr.Errors) > 0 && terr.Errors[0].Code == transport.NameUnknownErrorCode {
			code = codeNameUnknown
		}
		return &apiError{http.StatusNotFound, code, msg}
	case http.StatusUnauthorized, http.StatusForbidden:
		return &apiError{http.StatusForbidden, codeDenied, msg}
	case http.StatusTooManyRequests:
		return &apiError{http.StatusTooManyRequests, codeTooManyRequests, msg}
	}
	return &apiError{http.StatusBadGateway, unknown, msg}
}
