package restapi

import (
	"crypto/sha256"
	_ "embed" // the OpenAPI document and the docs page are part of the binary
	"encoding/base64"
	"net/http"
	"strings"
)

// OpenAPI is the hand-written OpenAPI 3 document of every route (tests check it against the
// router and validate real responses with it).
//
//go:embed openapi.json
var OpenAPI []byte

// docsPage renders /openapi.json in the browser; it loads nothing from elsewhere (no CDN),
// so the docs work offline and inside a cluster.
//
//go:embed docs.html
var docsPage []byte

// docsCSP allows exactly the page's own inline script and style (by hash) and requests to
// this origin, so nothing injected into the page could run or send data elsewhere.
var docsCSP = "default-src 'none'; script-src " + inlineHash(docsPage, "<script>", "</script>") +
	"; style-src " + inlineHash(docsPage, "<style>", "</style>") +
	"; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash returns the CSP source of the content between open and close in page, or
// 'none' when the page has no such element (the unit tests check it has exactly one).
func inlineHash(page []byte, open, close string) string {
	s := string(page)
	i := strings.Index(s, open)
	if i < 0 {
		return "'none'"
	}
	rest := s[i+len(open):]
	j := strings.Index(rest, close)
	if j < 0 {
		return "'none'"
	}
	sum := sha256.Sum256([]byte(rest[:j]))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(OpenAPI)
}

func serveDocs(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", docsCSP)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(docsPage)
}
