//go:build integration

package store

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/test/testenv"
)

// Every component connects (and ensures indexes) at start, so connecting to a database that
// already has the indexes must work: FerretDB v1 drops the connection when asked to create an
// existing index.
func TestConnectIsIdempotent(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx := context.Background()
	cfg := Config{URI: f.URI, Database: "idem"}
	for round := range 3 {
		st, err := Connect(ctx, cfg, "test")
		if err != nil {
			t.Fatalf("connect round %d: %v", round, err)
		}
		// On FerretDB the sessions are time-partitioned and not indexed; the rejected
		// messages keep their index.
		specs, err := st.Rejected.Indexes().ListSpecifications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, s := range specs {
			names[s.Name] = true
		}
		if !names["received"] {
			t.Fatalf("round %d: indexes %v", round, names)
		}
		if colls, err := st.DB.ListCollectionNames(ctx, bson.D{{Key: "name", Value: SessionsCollection}}); err != nil || len(colls) != 0 {
			t.Fatalf("round %d: the unpartitioned sessions collection was created: %v %v", round, colls, err)
		}
		_ = st.Close(ctx)
	}
}

// A component may start before its database: ConnectRetry waits for it.
func TestConnectRetryWaitsForTheDatabase(t *testing.T) {
	f := testenv.StartFerretDB(t)
	f.Stop()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	type result struct {
		st  *Store
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := ConnectRetry(context.Background(), Config{URI: f.URI, Database: "late"}, "test", log)
		done <- result{st, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("ConnectRetry returned while the database was down: %+v", r)
	case <-time.After(time.Second):
	}
	f.Start()
	r := <-done
	if r.err != nil || r.st == nil {
		t.Fatalf("ConnectRetry: %v", r.err)
	}
	if err := r.st.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = r.st.Close(context.Background())

	// Cancelled while waiting: nil, nil.
	f.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	st, err := ConnectRetry(ctx, Config{URI: f.URI, Database: "late"}, "test", log)
	if st != nil || err != nil {
		t.Fatalf("cancelled ConnectRetry = %v, %v; want nil, nil", st, err)
	}
}

func TestConnectTLS(t *testing.T) {
	f := testenv.StartFerretDBWith(t, testenv.FerretDBOptions{TLS: true})
	ctx := context.Background()
	cfg := Config{URI: f.URI, Database: "tls", CAFile: f.CAFile}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := Connect(ctx, cfg, "test")
	if err != nil {
		t.Fatalf("connect over TLS: %v", err)
	}
	defer st.Close(ctx) //nolint:errcheck
	if err := st.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// Without the CA the server certificate is not trusted.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if st, err := Connect(cctx, Config{URI: f.URI, Database: "tls"}, "test"); err == nil {
		_ = st.Close(ctx)
		t.Fatal("connected over TLS without trusting the server's CA")
	}
}

// Several processes connecting to a fresh database at once (the listener and the API of
// `chargesim run`, listener replicas) must not make FerretDB panic: only the holder of the
// index lease creates the indexes, the others wait for them.
func TestConcurrentConnectsCreateIndexesOnce(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx := context.Background()
	for round := range 3 {
		cfg := Config{URI: f.URI, Database: "race" + string(rune('a'+round))}
		errs := make(chan error, 4)
		for range cap(errs) {
			go func() {
				st, err := Connect(ctx, cfg, "test")
				if err == nil {
					_ = st.Close(ctx)
				}
				errs <- err
			}()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: connect: %v", round, err)
			}
		}
	}
	f.AssertNoPanic(t)
}

// A lease left by a process that died while creating indexes is taken over once it expires.
func TestIndexLeaseOfDeadHolderExpires(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx := context.Background()
	locks := f.Client().Database("dead").Collection(LocksCollection)
	if _, err := locks.InsertOne(ctx, map[string]any{"_id": indexLease, "expires_at": time.Now().Add(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := Connect(cctx, Config{URI: f.URI, Database: "dead"}, "test")
	cancel()
	if err == nil {
		t.Fatal("connect created the indexes while another holder's lease was valid")
	}
	st, err := Connect(ctx, Config{URI: f.URI, Database: "dead"}, "test")
	if err != nil {
		t.Fatalf("connect after the lease expired: %v", err)
	}
	defer st.Close(ctx) //nolint:errcheck
	if n, err := locks.CountDocuments(ctx, map[string]any{}); err != nil || n != 0 {
		t.Fatalf("locks left: %d (%v)", n, err)
	}
}
