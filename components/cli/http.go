package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyFunc reports whether a component can do its work (broker connected, store reachable).
type ReadyFunc func(ctx context.Context) error

// Degraded is what a ReadyFunc returns when the component works but not as it should (e.g. a
// listener falling behind): /readyz still answers 200, with the detail, so that a consumer is
// not taken out of service for being slow. Use IsReady to test a ReadyFunc's result.
type Degraded struct{ Detail string }

func (d *Degraded) Error() string { return d.Detail }

// IsReady reports whether err, returned by a ReadyFunc, means ready (nil or *Degraded).
func IsReady(err error) bool {
	var d *Degraded
	return err == nil || errors.As(err, &d)
}

// OpsHandler returns a mux with /healthz (process alive), /readyz (ready() succeeds) and
// /metrics (gatherer). Extra routes can be added to the returned mux.
func OpsHandler(gatherer prometheus.Gatherer, ready ReadyFunc) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			if err := ready(ctx); !IsReady(err) {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
				return
			} else if err != nil {
				_, _ = fmt.Fprintf(w, "ok, degraded: %v\n", err)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	return mux
}

// Serve listens on addr and serves h until ctx is done, then shuts down gracefully within
// grace. The listener is bound before Serve returns from start-up so callers can rely on it.
func Serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, grace time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, log, ln, h, grace)
}

// ServeListener is Serve on an existing listener (tests bind port 0 and read the address).
func ServeListener(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, grace time.Duration) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("http server listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shut down http server: %w", err)
	}
	return nil
}
