package restapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/store"
)

// Helpers shared by the unit and integration tests: the OpenAPI document loaded with
// kin-openapi, and a client that validates every response it gets against it.

var registerDecoders sync.Once

func loadSpec(tb testing.TB) *openapi3.T {
	tb.Helper()
	registerDecoders.Do(func() {
		// Non-JSON bodies the document declares; their schema is a plain string.
		openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
		openapi3filter.RegisterBodyDecoder("application/openmetrics-text", openapi3filter.PlainBodyDecoder)
	})
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(OpenAPI)
	if err != nil {
		tb.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		tb.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	return doc
}

// newTestServer builds the API with a short query timeout, so that outage tests do not wait
// long for their 503s.
func newTestServer(tb testing.TB, st *store.Store) (*Server, *prometheus.Registry) {
	tb.Helper()
	return newTestServerWith(tb, st, 2*time.Second)
}

func newTestServerWith(tb testing.TB, st *store.Store, queryTimeout time.Duration) (*Server, *prometheus.Registry) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(Config{QueryTimeout: queryTimeout}, st, log, reg, reg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return s, reg
}

// apiClient sends requests to a server's handler and validates every response against the
// OpenAPI document: the route must be documented, the status declared for it, and the body
// must match the declared schema for its content type.
type apiClient struct {
	tb   testing.TB
	srv  *Server
	spec *openapi3.T
	// base is a real server's URL; "" serves through the handler in process.
	base string
}

type apiResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

func (c *apiClient) get(target string) apiResponse {
	c.tb.Helper()
	return c.do(http.MethodGet, target)
}

func (c *apiClient) do(method, target string) apiResponse {
	c.tb.Helper()
	var res apiResponse
	if c.base == "" {
		req := httptest.NewRequest(method, target, nil)
		rec := httptest.NewRecorder()
		c.srv.Handler().ServeHTTP(rec, req)
		res = apiResponse{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
	} else {
		req, err := http.NewRequest(method, c.base+target, nil)
		if err != nil {
			c.tb.Fatalf("request %s %s: %v", method, target, err)
		}
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r, err := client.Do(req)
		if err != nil {
			c.tb.Fatalf("%s %s: %v", method, target, err)
		}
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			c.tb.Fatalf("%s %s: read body: %v", method, target, err)
		}
		res = apiResponse{Status: r.StatusCode, Header: r.Header, Body: body}
	}
	c.validate(method, target, res)
	return res
}

// validate checks res against the document. Responses of unrouted paths and methods (404,
// 405) have no operation; they must still be problem+json.
func (c *apiClient) validate(method, target string, res apiResponse) {
	c.tb.Helper()
	req := httptest.NewRequest(method, target, nil)
	routePath := req.URL.RawPath
	if routePath == "" {
		routePath = req.URL.Path
	}
	rctx := chi.NewRouteContext()
	pattern := c.srv.router.(*chi.Mux).Find(rctx, method, routePath)
	// Find also reports a mount point (/api/v1) as a pattern; TestRoutesMatchOpenAPI checks
	// that every real route is documented.
	if pattern == "" || c.spec.Paths.Value(pattern) == nil && (res.Status == http.StatusNotFound || res.Status == http.StatusMethodNotAllowed) {
		if res.Status != http.StatusNotFound && res.Status != http.StatusMethodNotAllowed {
			c.tb.Errorf("%s %s: unrouted request answered %d", method, target, res.Status)
		}
		checkProblem(c.tb, method+" "+target, res, res.Status)
		return
	}
	item := c.spec.Paths.Value(pattern)
	if item == nil {
		c.tb.Errorf("%s %s: route %s is not in openapi.json", method, target, pattern)
		return
	}
	op := item.GetOperation(method)
	if op == nil {
		c.tb.Errorf("%s %s: operation %s %s is not in openapi.json", method, target, method, pattern)
		return
	}
	params := map[string]string{}
	for i, k := range rctx.URLParams.Keys {
		params[k] = rctx.URLParams.Values[i]
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      &routers.Route{Spec: c.spec, Path: pattern, PathItem: item, Method: method, Operation: op},
			Options:    opts,
		},
		Status:  res.Status,
		Header:  res.Header,
		Body:    io.NopCloser(bytes.NewReader(res.Body)),
		Options: opts,
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		c.tb.Errorf("%s %s: response %d does not match openapi.json: %v\nbody: %.500s", method, target, res.Status, err, res.Body)
	}
}

// documentedRoutes lists "METHOD path" of every operation in the document.
func documentedRoutes(spec *openapi3.T) []string {
	var out []string
	for path, item := range spec.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(out)
	return out
}
