package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func testSpec(t *testing.T, binBody string) *Spec {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(bin, []byte(binBody), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("certs"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &Spec{
		Tag:  "chargesim.local/test:v1",
		Base: true,
		User: "65532:65532",
		Files: []File{
			{Src: bin, Dst: "/chargesim", Mode: 0o755},
			{Src: ca, Dst: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644},
		},
		Entrypoint: []string{"/chargesim"},
		Cmd:        []string{"--help"},
		Labels:     map[string]string{"org.opencontainers.image.title": "chargesim", "org.opencontainers.image.version": "dev"},
		Exposed:    []string{"8080/tcp", "9090/tcp"},
	}
}

func write(t *testing.T, s *Spec) (Result, []byte) {
	t.Helper()
	var buf bytes.Buffer
	res, err := s.Write(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return res, buf.Bytes()
}

func TestSameInputSameDigest(t *testing.T) {
	// Two specs built from separate copies of the same content (different source paths and
	// file times) must give byte-identical archives.
	r1, b1 := write(t, testSpec(t, "binary"))
	r2, b2 := write(t, testSpec(t, "binary"))
	if r1 != r2 || !bytes.Equal(b1, b2) {
		t.Fatalf("same input, different images:\n%+v\n%+v", r1, r2)
	}
	if r1.Size != int64(len(b1)) {
		t.Fatalf("reported size %d, wrote %d", r1.Size, len(b1))
	}
	r3, _ := write(t, testSpec(t, "binary2"))
	if r3.ID == r1.ID || r3.DiffID == r1.DiffID || r3.Archive == r1.Archive {
		t.Fatalf("different binary, same digest: %+v vs %+v", r3, r1)
	}
}

// readTar returns the entries of a tarball in order.
func readTar(t *testing.T, b []byte) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	var hdrs []*tar.Header
	bodies := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
		bodies[h.Name] = body
	}
}

func TestArchiveContent(t *testing.T) {
	res, b := write(t, testSpec(t, "binary"))
	_, files := readTar(t, b)
	var manifest []manifestRow
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{"chargesim.local/test:v1"}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	if "sha256:"+manifest[0].Config[:64] != res.ID {
		t.Fatalf("config %s is not the image ID %s", manifest[0].Config, res.ID)
	}
	var cfg imageConfig
	if err := json.Unmarshal(files[manifest[0].Config], &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{"/chargesim"}) ||
		cfg.Config.Labels["org.opencontainers.image.title"] != "chargesim" || cfg.OS != "linux" ||
		!slices.Equal(cfg.RootFS.DiffIDs, []string{res.DiffID}) {
		t.Fatalf("config = %+v", cfg)
	}

	layer := files[manifest[0].Layers[0]]
	if got := "sha256:" + digest(layer); got != res.DiffID {
		t.Fatalf("layer digest %s, diff_id %s", got, res.DiffID)
	}
	hdrs, bodies := readTar(t, layer)
	var names []string
	for _, h := range hdrs {
		names = append(names, h.Name)
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s: mtime %v, want the epoch", h.Name, h.ModTime)
		}
	}
	want := []string{"chargesim", "etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/",
		"etc/ssl/certs/ca-certificates.crt", "home/", "home/nonroot/", "tmp/"}
	if !slices.Equal(names, want) {
		t.Fatalf("layer entries\n got %q\nwant %q", names, want)
	}
	for _, h := range hdrs {
		switch h.Name {
		case "chargesim":
			if h.Mode != 0o755 || h.Uid != 0 || string(bodies[h.Name]) != "binary" {
				t.Errorf("chargesim: mode %o uid %d body %q", h.Mode, h.Uid, bodies[h.Name])
			}
		case "home/nonroot/":
			if h.Uid != 65532 || h.Mode != 0o700 {
				t.Errorf("home/nonroot: uid %d mode %o", h.Uid, h.Mode)
			}
		case "tmp/":
			if h.Mode != 0o1777 {
				t.Errorf("tmp: mode %o", h.Mode)
			}
		}
	}
	if !bytes.Contains(bodies["etc/passwd"], []byte("nonroot:x:65532:65532:")) {
		t.Errorf("etc/passwd lacks nonroot: %q", bodies["etc/passwd"])
	}
}

func TestParseAdd(t *testing.T) {
	f, err := parseAdd("bin/x=/x:0755:65532:65532")
	if err != nil || f != (File{Src: "bin/x", Dst: "/x", Mode: 0o755, UID: 65532, GID: 65532}) {
		t.Fatalf("parseAdd = %+v, %v", f, err)
	}
	for _, bad := range []string{"x", "=/x", "x=rel", "x=/x:9z", "x=/x:0644:a:b", "x=/x:0644:1"} {
		if _, err := parseAdd(bad); err == nil {
			t.Errorf("parseAdd(%q) accepted", bad)
		}
	}
}
