package serve

import (
	"io"
	"log/slog"
	"net/http"
	"time"
)

// logWriter is the response of a request, noting what the access log says
// of it.
type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	cache  string // "hit", "miss", or "" when the cache had no part
	name   string // the upstream repository, once routed
}

func (w *logWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom hands r to the response's own ReadFrom, which copies a file
// to a TCP connection with sendfile(2): a cached blob's bytes (sendHit)
// then never pass through the process.
func (w *logWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.bytes += n
	return n, err
}

// Flush lets a streamed blob reach the client as it arrives.
func (w *logWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the response underneath.
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequest writes the access log record of one request.
func (h *Handler) logRequest(r *http.Request, w *logWriter, d time.Duration) {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	cache := w.cache
	if cache == "" {
		cache = "-"
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", w.bytes),
		slog.String("cache", cache),
		slog.Duration("duration", d),
	}
	if w.name != "" {
		attrs = append(attrs, slog.String("name", w.name))
	}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		attrs = append(attrs, slog.String("ns", ns))
	}
	h.o.AccessLog.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}
