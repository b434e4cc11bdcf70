package testutil

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// Do sends a request with the headers hdr (name, value, name, value...)
// and returns the answer with its body read.
func Do(t testing.TB, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// SpecErrorCode returns the first code of a distribution-spec error body
// ({"errors":[{"code":...}]}), or "" if b is none.
func SpecErrorCode(b []byte) string {
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if json.Unmarshal(b, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}
