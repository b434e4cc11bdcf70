package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Content kinds of the synthetic images.
const (
	// kindRandom is incompressible: one file of random bytes per layer,
	// gzip level 1. What moves over the wire is what is stored.
	kindRandom = "random"
	// kindRealistic is a tar of the Go toolchain tree (go env GOROOT),
	// gzip level 6: source, binaries and test data in the proportions
	// real layers have, compressed about 4:1.
	kindRealistic = "realistic"
)

// imageInfo is what the harness keeps of a pushed image: names and
// digests, never the bytes (the registry child holds those).
type imageInfo struct {
	name       string
	kind       string
	tag        name.Reference // host/bench/<name>:latest on the registry's direct port
	digest     v1.Hash        // of the manifest
	config     v1.Hash
	configSize int64
	layers     []layerInfo
}

type layerInfo struct {
	digest v1.Hash
	diffID v1.Hash
	size   int64 // compressed, as stored and served
	usize  int64 // uncompressed
}

// layerBytes is the sum of the compressed layer sizes.
func (im *imageInfo) layerBytes() int64 {
	var n int64
	for _, l := range im.layers {
		n += l.size
	}
	return n
}

// uncompressedBytes is the sum of the uncompressed layer sizes.
func (im *imageInfo) uncompressedBytes() int64 {
	var n int64
	for _, l := range im.layers {
		n += l.usize
	}
	return n
}

// blobBytes is what a pull of the image fetches as blobs: layers and config.
func (im *imageInfo) blobBytes() int64 { return im.layerBytes() + im.configSize }

// byDigest is the image's reference by manifest digest on host.
func (im *imageInfo) byDigest(host string) (name.Reference, error) {
	return name.ParseReference(fmt.Sprintf("%s/bench/%s@%s", host, im.name, im.digest))
}

// byTag is the image's reference by tag on host.
func (im *imageInfo) byTag(host string) (name.Reference, error) {
	return name.ParseReference(fmt.Sprintf("%s/bench/%s:latest", host, im.name))
}

// imageSpec says what to build.
type imageSpec struct {
	name      string
	kind      string
	layers    int
	layerSize int64 // compressed bytes per layer, approximately
	zstd      bool  // zstd layers instead of gzip (realistic content only)
}

// memLayer is a gzip (or zstd) layer held in memory, with its digests
// computed once, so that pushing it costs no hashing.
type memLayer struct {
	gz     []byte // the compressed bytes, gzip or zstd as zstd says
	zstd   bool
	digest v1.Hash
	diffID v1.Hash
	usize  int64
}

var _ v1.Layer = (*memLayer)(nil)

func (l *memLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Size() (int64, error)     { return int64(len(l.gz)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) {
	if l.zstd {
		return types.OCILayerZStd, nil
	}
	return types.OCILayer, nil
}
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.gz)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	if l.zstd {
		zr, err := zstd.NewReader(bytes.NewReader(l.gz))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(l.gz))
	if err != nil {
		return nil, err
	}
	return zr, nil
}

// layerWriter turns a tar stream into a gzip layer in memory, hashing
// both forms on the way. The gzip compressor is the standard library's,
// as in ggcr's tarball package and most image builders; the zstd one is
// klauspost/compress's at its default level, which ggcr uses too.
type layerWriter struct {
	buf    bytes.Buffer
	dh, uh hash.Hash // digest (compressed), diff ID (uncompressed)
	zw     io.WriteCloser
	zstd   bool
	usize  int64
}

// newLayerWriter makes a gzip layer of the given level, or with zstd a
// zstd layer (and level is not used).
func newLayerWriter(level int, sizeHint int64, zstdLayer bool) (*layerWriter, error) {
	w := &layerWriter{dh: sha256.New(), uh: sha256.New(), zstd: zstdLayer}
	w.buf.Grow(int(sizeHint + sizeHint/16))
	var err error
	if zstdLayer {
		w.zw, err = zstd.NewWriter(io.MultiWriter(&w.buf, w.dh), zstd.WithEncoderConcurrency(1))
	} else {
		w.zw, err = gzip.NewWriterLevel(io.MultiWriter(&w.buf, w.dh), level)
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Write takes uncompressed (tar) bytes.
func (w *layerWriter) Write(p []byte) (int, error) {
	w.uh.Write(p)
	w.usize += int64(len(p))
	return w.zw.Write(p)
}

// compressed is how many compressed bytes came out so far.
func (w *layerWriter) compressed() int64 { return int64(w.buf.Len()) }

func (w *layerWriter) finish() (*memLayer, error) {
	if err := w.zw.Close(); err != nil {
		return nil, err
	}
	return &memLayer{
		gz:     w.buf.Bytes(),
		zstd:   w.zstd,
		digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.dh.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.uh.Sum(nil))},
		usize:  w.usize,
	}, nil
}

// randomLayer is a tar of one file of random bytes, gzip level 1, about
// size bytes compressed. seed makes each layer distinct.
func randomLayer(size int64, seed uint64) (*memLayer, error) {
	w, err := newLayerWriter(gzip.BestSpeed, size, false)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(w)
	fileSize := size - 2048 // tar header and padding, gzip framing
	hdr := &tar.Header{Name: fmt.Sprintf("random/%d.bin", seed), Mode: 0o644, Size: fileSize, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	copy(key[8:], "layercache-bench")
	if _, err := io.CopyN(tw, rand.NewChaCha8(key), fileSize); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return w.finish()
}

// gorootFile is one entry of the toolchain tree.
type gorootFile struct {
	rel  string
	info fs.FileInfo
	link string
}

// listGOROOT lists the Go toolchain tree in a fixed order.
func listGOROOT() (string, []gorootFile, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	root := strings.TrimSpace(string(out))
	var files []gorootFile
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		f := gorootFile{rel: filepath.ToSlash(rel), info: info}
		switch {
		case info.Mode().IsRegular(), info.IsDir():
		case info.Mode()&fs.ModeSymlink != 0:
			if f.link, err = os.Readlink(path); err != nil {
				return err
			}
		default:
			return nil
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
	return root, files, nil
}

// realisticLayer is a tar of the toolchain tree, gzip level 6 (or zstd),
// cut at the first file boundary past size compressed bytes. Layer index
// starts at its own offset in the tree and wraps around under a new
// prefix, so the layers differ although they draw from one tree.
func realisticLayer(root string, files []gorootFile, size int64, index, of int, zstdLayer bool) (*memLayer, error) {
	w, err := newLayerWriter(gzip.DefaultCompression, size, zstdLayer)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(w)
	start := index * len(files) / of
	for k := 0; w.compressed() < size; k++ {
		f := files[(start+k)%len(files)]
		prefix := fmt.Sprintf("layer%d/pass%d/go/", index, (start+k)/len(files))
		hdr, err := tar.FileInfoHeader(f.info, f.link)
		if err != nil {
			return nil, err
		}
		hdr.Name = prefix + f.rel
		if f.info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if f.info.Mode().IsRegular() {
			src, err := os.Open(filepath.Join(root, filepath.FromSlash(f.rel)))
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.rel, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return w.finish()
}

// buildAndPush builds the image of spec, pushes it to host and returns
// what the harness needs to know of it. The layers are built in
// parallel; their bytes are dropped once pushed.
func buildAndPush(ctx context.Context, host string, spec imageSpec, seed uint64) (*imageInfo, error) {
	layers := make([]*memLayer, spec.layers)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(numCPU())
	var root string
	var files []gorootFile
	if spec.kind == kindRealistic {
		var err error
		if root, files, err = listGOROOT(); err != nil {
			return nil, err
		}
	}
	for i := range layers {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			var err error
			switch spec.kind {
			case kindRandom:
				layers[i], err = randomLayer(spec.layerSize, seed*1000+uint64(i))
			case kindRealistic:
				layers[i], err = realisticLayer(root, files, spec.layerSize, i, spec.layers, spec.zstd)
			default:
				err = fmt.Errorf("unknown content kind %q", spec.kind)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("building %s: %w", spec.name, err)
	}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	cf, err := base.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = map[string]string{"bench.layercache/seed": fmt.Sprint(seed)}
	if base, err = mutate.ConfigFile(base, cf); err != nil {
		return nil, err
	}
	vls := make([]v1.Layer, len(layers))
	for i, l := range layers {
		vls[i] = l
	}
	img, err := mutate.AppendLayers(base, vls...)
	if err != nil {
		return nil, err
	}
	tag, err := name.ParseReference(fmt.Sprintf("%s/bench/%s:latest", host, spec.name))
	if err != nil {
		return nil, err
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("pushing %s: %w", tag, err)
	}
	info := &imageInfo{name: spec.name, kind: spec.kind, tag: tag}
	if info.digest, err = img.Digest(); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	info.config, info.configSize = m.Config.Digest, m.Config.Size
	for _, l := range layers {
		info.layers = append(info.layers, layerInfo{digest: l.digest, diffID: l.diffID, size: int64(len(l.gz)), usize: l.usize})
	}
	return info, nil
}
