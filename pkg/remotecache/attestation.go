package remotecache

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Attestation manifests: BuildKit (docker buildx build --attest, the
// default provenance of --push) adds to a multi-platform index, beside
// each image, a manifest holding in-toto statements (SBOM, provenance)
// about it. Its descriptor says platform unknown/unknown and carries
// these annotations; the layers are JSON, not file systems, so no build
// runs it.
const (
	// AnnotationReferenceType is the annotation that marks an index
	// entry as being about another entry rather than an image to run.
	AnnotationReferenceType = "vnd.docker.reference.type"
	// ReferenceTypeAttestation is its value on attestation manifests.
	ReferenceTypeAttestation = "attestation-manifest"
)

// IsAttestation reports whether an index entry is an attestation
// manifest, by its vnd.docker.reference.type annotation (which is how
// BuildKit and docker tell them apart; the platform unknown/unknown alone
// is not taken as proof).
func IsAttestation(d v1.Descriptor) bool {
	return d.Annotations[AnnotationReferenceType] == ReferenceTypeAttestation
}

// WithAttestations makes Warm with WithAllPlatforms warm the attestation
// manifests of an index (see IsAttestation) and their blobs too. By
// default they are left out: a build selects images by platform, and
// never reads them. Warm of one platform (WithPlatform, or the default)
// takes an attestation manifest only if asked for unknown/unknown, the
// platform they say.
func WithAttestations() Option {
	return func(o *options) error {
		o.attestations = true
		return nil
	}
}
