// Package store is chargesim's MongoDB access: connection settings, collections, indexes and
// the stored document shapes. It uses mongo-driver v2, the supported major line (v1 is in
// maintenance), whose API is what new code should be written against. Queries stay within
// what both MongoDB and FerretDB v1 answer correctly (see DEVELOPERS.md).
package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/session"
)

// Collection names.
const (
	SessionsCollection = "sessions"
	RejectedCollection = "rejected"
)

// Config is the MongoDB connection of a component.
type Config struct {
	URI      string
	URIFile  string
	Database string
	CAFile   string
	// PartitionWidth and PartitionGrace set the time-partitioned layout of a store without
	// indexes (partition.go); the first process to connect records them in the store and
	// every process uses the recorded values. Zero means the default.
	PartitionWidth time.Duration
	PartitionGrace time.Duration
}

// Register adds the MongoDB flags.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.URI, "mongo-uri", "mongodb://127.0.0.1:27017", "MongoDB URI (prefer the environment or --mongo-uri-file when it holds credentials)")
	fs.StringVar(&c.URIFile, "mongo-uri-file", "", "file holding the MongoDB URI")
	fs.StringVar(&c.Database, "mongo-database", "chargesim", "MongoDB database")
	fs.StringVar(&c.CAFile, "mongo-ca-file", "", "PEM CA bundle for TLS to MongoDB")
	fs.DurationVar(&c.PartitionWidth, "partition-width", DefaultPartitionWidth, "on a store without indexes (FerretDB): width of the ended_at partitions, whole seconds from 5s to 24h; the first process records it in the store and every process uses the recorded value")
	fs.DurationVar(&c.PartitionGrace, "partition-grace", DefaultPartitionGrace, "on a store without indexes (FerretDB): readers rescan a partition until this long after its end; writes later than half of it leave a late marker (recorded in the store by the first process, like the width)")
}

// Validate checks the settings and resolves the URI file.
func (c *Config) Validate() error {
	var err error
	if c.URI, err = cli.ReadSecret("mongo-uri", c.URI, c.URIFile); err != nil {
		return err
	}
	if !strings.HasPrefix(c.URI, "mongodb://") && !strings.HasPrefix(c.URI, "mongodb+srv://") {
		return cli.Invalid("mongo-uri", redact(c.URI), "must start with mongodb:// or mongodb+srv://")
	}
	opts := options.Client().ApplyURI(c.URI)
	if err := opts.Validate(); err != nil {
		return cli.Invalid("mongo-uri", redact(c.URI), err.Error())
	}
	// A message is acknowledged to the broker once its write returns: an unacknowledged write
	// concern returns before anything is stored, and a crash would lose what was acked.
	if wc := opts.WriteConcern; wc != nil && !wc.Acknowledged() {
		return cli.Invalid("mongo-uri", redact(c.URI), "unacknowledged write concern (w=0): the listener acknowledges messages only after they are stored, so writes must be acknowledged")
	}
	if c.Database == "" || strings.ContainsAny(c.Database, "/\\. \"$") {
		return cli.Invalid("mongo-database", c.Database, "must be a non-empty name without / \\ . space \" $")
	}
	if c.PartitionWidth != 0 && (c.PartitionWidth < MinPartitionWidth || c.PartitionWidth%time.Second != 0 || c.PartitionWidth > 24*time.Hour) {
		return cli.Invalid("partition-width", c.PartitionWidth, "must be whole seconds from 5s to 24h")
	}
	if c.PartitionGrace != 0 && c.PartitionGrace < 10*time.Second {
		return cli.Invalid("partition-grace", c.PartitionGrace, "must be at least 10s")
	}
	if c.CAFile != "" {
		if _, err := c.tlsConfig(); err != nil {
			return err
		}
	}
	return nil
}

// redact hides the password of a URI for error messages and logs.
func redact(uri string) string {
	at := strings.LastIndex(uri, "@")
	scheme := strings.Index(uri, "://")
	if at < 0 || scheme < 0 {
		return uri
	}
	return uri[:scheme+3] + "***@" + uri[at+1:]
}

func (c *Config) tlsConfig() (*tls.Config, error) {
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, cli.Invalid("mongo-ca-file", c.CAFile, err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, cli.Invalid("mongo-ca-file", c.CAFile, "no PEM certificate found")
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// Store is a connected database.
type Store struct {
	Client   *mongo.Client
	DB       *mongo.Database
	Sessions *mongo.Collection
	Rejected *mongo.Collection
	// noIndexes is set for FerretDB v1, which uses no index but _id equality and sorts in
	// its memory: reads then sort in the client (bounded) and the API reads snapshots.
	noIndexes bool
	cfg       Config
	ls        layoutState
	markMu    sync.Mutex
	marks     map[string]time.Time // the late markers this process inserted last, per partition
	// deltaFault, set by tests only, makes the delta insert of a partition fail (delta.go).
	deltaFault func(partition string) error
	pages      pageCache // sessions of closed partitions, for listing pages (pagecache.go)
	wcDoc      bson.Raw  // the write concern, as the insert commands carry it (encode.go)
}

// writeConcern is the write concern the components write with: the URI's when it sets one
// (Validate refuses w=0), else majority and journaled. Majority survives a primary failover
// (a w:1 write can be rolled back after the broker was acknowledged); journaled survives a
// crash of the server. MongoDB standalone servers and FerretDB accept it as well.
func writeConcern(uri *options.ClientOptions) *writeconcern.WriteConcern {
	wc := uri.WriteConcern
	if wc == nil {
		wc = writeconcern.Majority()
	} else {
		c := *wc
		wc = &c
	}
	if wc.W == nil { // e.g. only journal=true in the URI: the server default would be w:1
		wc.W = "majority"
	}
	if wc.Journal == nil {
		j := true
		wc.Journal = &j
	}
	return wc
}

// NoIndexes reports whether the server uses no secondary index (FerretDB v1).
// Decided by Connect (and by the first read or write of a store from Open).
func (s *Store) NoIndexes() bool {
	s.ls.mu.Lock()
	defer s.ls.mu.Unlock()
	return s.noIndexes
}

// Connect opens a client (the driver connects lazily and reconnects by itself) and ensures the
// indexes exist. It fails only for settings errors or when the indexes cannot be created
// within ctx.
func Connect(ctx context.Context, cfg Config, appName string) (*Store, error) {
	s, err := Open(cfg, appName)
	if err != nil {
		return nil, err
	}
	if _, err = s.layout(ctx); err != nil {
		_ = s.Client.Disconnect(context.Background())
		return nil, err
	}
	if err := s.EnsureIndexes(ctx); err != nil {
		_ = s.Client.Disconnect(context.Background())
		return nil, err
	}
	return s, nil
}

// Open is Connect without creating indexes, for a process that only reads or keeps its own
// small collections (the publisher's run records): index creation is the listener's job.
func Open(cfg Config, appName string) (*Store, error) {
	opts := options.Client().ApplyURI(cfg.URI).
		SetAppName(appName).
		SetServerSelectionTimeout(5 * time.Second).
		SetConnectTimeout(5 * time.Second)
	if wc := opts.WriteConcern; wc != nil && !wc.Acknowledged() {
		return nil, fmt.Errorf("connect to mongodb %s: unacknowledged write concern (w=0) refused", redact(cfg.URI))
	}
	wc := writeConcern(opts)
	opts.SetWriteConcern(wc)
	wcDoc, err := writeConcernDoc(wc)
	if err != nil {
		return nil, fmt.Errorf("connect to mongodb %s: write concern: %w", redact(cfg.URI), err)
	}
	if cfg.CAFile != "" {
		tc, err := cfg.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts.SetTLSConfig(tc)
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("connect to mongodb %s: %w", redact(cfg.URI), err)
	}
	db := client.Database(cfg.Database)
	return &Store{Client: client, DB: db, Sessions: db.Collection(SessionsCollection), Rejected: db.Collection(RejectedCollection),
		cfg: cfg, wcDoc: wcDoc}, nil
}

// Close disconnects.
func (s *Store) Close(ctx context.Context) error { return s.Client.Disconnect(ctx) }

// Ping checks that the primary answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.Client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("ping mongodb: %w", err)
	}
	return nil
}

// EnsureIndexes creates the indexes the listener and API rely on; it is idempotent and safe to
// call from several processes at once. Only missing indexes are created: FerretDB v1 drops the
// connection (an internal panic) when createIndexes names an index that already exists, which
// MongoDB would accept as a no-op, and it panics the same way when two clients create the same
// index at the same time (the listener and the API of `chargesim run` starting together, or
// several listener replicas). So one caller at a time creates them: the one that holds a
// short lease in the locks collection; the others wait until the indexes exist (or the lease
// of a holder that died expires, and take it over).
func (s *Store) EnsureIndexes(ctx context.Context) error {
	sessions := []mongo.IndexModel{
		{Keys: bson.D{{Key: "charger_id", Value: 1}, {Key: "ended_at", Value: -1}}, Options: options.Index().SetName("charger_ended")},
		{Keys: bson.D{{Key: "ended_at", Value: -1}}, Options: options.Index().SetName("ended")},
	}
	rejected := []mongo.IndexModel{{Keys: bson.D{{Key: "received_at", Value: -1}}, Options: options.Index().SetName("received")}}
	want := []indexSet{{s.Sessions, sessions}, {s.Rejected, rejected}}
	if l, err := s.layout(ctx); err != nil {
		return err
	} else if l.partitioned {
		// The partitions are never indexed (FerretDB v1 would not use the indexes), and
		// creating them would create the unpartitioned collection that readers then scan.
		want = want[1:]
	}
	locks := s.DB.Collection(LocksCollection)
	for {
		missing, err := missingIndexes(ctx, want)
		if err != nil || len(missing) == 0 {
			return err
		}
		release, err := takeLease(ctx, locks, indexLease, indexLeaseTTL)
		if err != nil {
			return err
		}
		if release != nil {
			// Listed again under the lease: the previous holder may have just finished.
			if missing, err = missingIndexes(ctx, want); err == nil {
				err = createIndexes(ctx, missing)
			}
			release()
			return err
		}
		select { // another process is creating them
		case <-ctx.Done():
			return fmt.Errorf("wait for another process to create the indexes: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// LocksCollection holds the leases that serialise schema changes between processes.
const LocksCollection = "locks"

const (
	indexLease = "ensure-indexes"
	// indexLeaseTTL bounds how long a holder that died blocks the others; creating the
	// indexes of an empty or small collection takes milliseconds.
	indexLeaseTTL = 30 * time.Second
)

type indexSet struct {
	coll   *mongo.Collection
	models []mongo.IndexModel
}

// takeLease inserts the lease document name (an _id insert is atomic on every server). It
// returns a release function when this caller holds the lease, nil when someone else does;
// an expired lease is removed (only if unchanged since read) so the next attempt can take it.
func takeLease(ctx context.Context, locks *mongo.Collection, name string, ttl time.Duration) (func(), error) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	_, err := locks.InsertOne(ctx, bson.D{{Key: "_id", Value: name}, {Key: "expires_at", Value: now.Add(ttl)}})
	if err == nil {
		return func() {
			// A lease left behind expires after ttl, so a failed release only delays others.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = locks.DeleteOne(dctx, bson.D{{Key: "_id", Value: name}})
		}, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return nil, fmt.Errorf("take lease %s: %w", name, err)
	}
	var held struct {
		ExpiresAt time.Time `bson:"expires_at"`
	}
	switch err := locks.FindOne(ctx, bson.D{{Key: "_id", Value: name}}).Decode(&held); {
	case errors.Is(err, mongo.ErrNoDocuments):
		return nil, nil // released meanwhile: the next attempt takes it
	case err != nil:
		return nil, fmt.Errorf("read lease %s: %w", name, err)
	}
	if now.After(held.ExpiresAt) {
		_, err := locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: name}, {Key: "expires_at", Value: held.ExpiresAt}})
		if err != nil {
			return nil, fmt.Errorf("remove expired lease %s: %w", name, err)
		}
	}
	return nil, nil
}

// missingIndexes returns, per collection, the models whose index does not exist yet.
func missingIndexes(ctx context.Context, want []indexSet) ([]indexSet, error) {
	var missing []indexSet
	for _, w := range want {
		specs, err := w.coll.Indexes().ListSpecifications(ctx)
		if err != nil {
			return nil, fmt.Errorf("list indexes on %s: %w", w.coll.Name(), err)
		}
		have := make(map[string]bool, len(specs))
		for _, spec := range specs {
			have[spec.Name] = true
		}
		var models []mongo.IndexModel
		for _, m := range w.models {
			var o options.IndexOptions
			for _, set := range m.Options.List() {
				_ = set(&o)
			}
			if o.Name == nil || !have[*o.Name] {
				models = append(models, m)
			}
		}
		if len(models) > 0 {
			missing = append(missing, indexSet{w.coll, models})
		}
	}
	return missing, nil
}

func createIndexes(ctx context.Context, sets []indexSet) error {
	for _, s := range sets {
		if _, err := s.coll.Indexes().CreateMany(ctx, s.models); err != nil {
			return fmt.Errorf("create indexes on %s: %w", s.coll.Name(), err)
		}
	}
	return nil
}

// SessionDoc is a stored session: the payload fields plus the deterministic key and the
// listener's bookkeeping. EndedAt and StartedAt are always set on stored documents (derived
// from timestamp, duration or the receive time for contract-only payloads) so that time
// filters and sorting work for every document.
type SessionDoc struct {
	ID              string `bson:"_id"`
	session.Session `bson:",inline"`
	Topic           string    `bson:"topic"`
	ReceivedAt      time.Time `bson:"received_at"`
	// Untimed is set by NewSessionDoc when the payload carried no time (its ended_at is the
	// receive time, different on every delivery): such a session is not placed in a time
	// partition. Not stored.
	Untimed bool   `bson:"-"`
	enc     []byte // Encode's BSON of the document, if called (encode.go)
}

// RejectedDoc is a message kept aside because it can never be stored as a session.
type RejectedDoc struct {
	ID         string    `bson:"_id,omitempty"` // RejectedID: a redelivery maps to the same document
	Topic      string    `bson:"topic"`
	Payload    []byte    `bson:"payload"` // truncated to MaxRejectedPayload
	Size       int       `bson:"size"`    // original payload size
	Reason     string    `bson:"reason"`
	Detail     string    `bson:"detail"`
	ReceivedAt time.Time `bson:"received_at"`
}

// MaxRejectedPayload bounds how much of a rejected payload is kept.
const MaxRejectedPayload = 4096
