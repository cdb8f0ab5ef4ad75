package store

import (
	"context"
	"time"
)

// SetLastScanPerCharger lets the external tests exercise both halves of lastSessions (the
// shared scan and the per-charger fallback); it returns a function restoring the default.
func SetLastScanPerCharger(n int) (restore func()) {
	old := lastScanPerCharger
	lastScanPerCharger = n
	return func() { lastScanPerCharger = old }
}

// SetNoIndexes switches the store between its indexed, single-collection layout (what MongoDB
// uses) and the index-free, time-partitioned one (FerretDB), so that both are tested on
// FerretDB. Sessions stored in the single collection are read by the partitioned layout as
// its unpartitioned collection.
func (s *Store) SetNoIndexes(v bool) {
	s.ls.mu.Lock()
	defer s.ls.mu.Unlock()
	s.noIndexes = v
	s.ls.done = true
	s.ls.l = layout{}
	if v {
		s.ls.l = layout{partitioned: true, width: DefaultPartitionWidth, grace: DefaultPartitionGrace}
	}
}

// AuditCollections names the collections an audit of [from, to) reads.
func (s *Store) AuditCollections(ctx context.Context, from, to time.Time) ([]string, error) {
	l, err := s.layout(ctx)
	if err != nil || !l.partitioned {
		return []string{SessionsCollection}, err
	}
	colls, err := s.auditCollections(ctx, l, from, to)
	names := make([]string, len(colls))
	for i, c := range colls {
		names[i] = c.Name()
	}
	return names, err
}

// SetDeltaFault makes the delta insert after a session insert fail with f's error (nil
// restores it): the fault a store refusing that one write, or a crash between the two
// inserts, leaves behind.
func (s *Store) SetDeltaFault(f func(partition string) error) { s.deltaFault = f }

// PageReads is how many partitions the listing page cache has read (pagecache.go).
func (s *Store) PageReads() int {
	s.pages.mu.Lock()
	defer s.pages.mu.Unlock()
	return s.pages.reads
}

// InsertWith stores docs into the sessions collection (no partitions) with the insert command
// of pre-encoded documents the store uses (command true, encode.go) or with the driver's
// unordered InsertMany it replaced: BenchmarkInsertPath compares them on the same store.
func (s *Store) InsertWith(ctx context.Context, command bool, docs []SessionDoc) (WriteResult, error) {
	if command {
		return s.insertSessions(ctx, s.Sessions.Name(), docs)
	}
	return insertMany(ctx, s.Sessions, docs, len(docs))
}
