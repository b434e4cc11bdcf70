package serve

import "net/http"

// Repository exposes the routing of a request to its upstream repository.
func (h *Handler) Repository(r *http.Request, path string) (string, error) {
	repo, aerr := h.repository(r, path)
	if aerr != nil {
		return "", aerr
	}
	return repo.Name(), nil
}
