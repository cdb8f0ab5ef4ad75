package store

// Pages of closed partitions from memory. On a store without indexes (FerretDB v1) a listing
// page outside the API's snapshot (a cursor deep in the past, a charger's history) reads whole
// partitions: paging through one 10 s partition at 1,000 sessions/s (100 pages of 100) read it
// 100 times, and 64 clients on deep pages queued behind those reads (p99 3–8 s). A closed
// partition no longer changes unless a late write marks it (partition.go), so its sessions
// are read once, sorted, and kept while its late-marker count stays the same, in a cache
// bounded by sessions (least recently used go first). Concurrent requests for the same
// partition share one read.

import (
	"container/list"
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"golang.org/x/sync/singleflight"
)

// pageCacheSessions bounds the sessions kept (~350 bytes each: about 35 MB), ten partitions
// of 10 s at 1,000 sessions/s.
const pageCacheSessions = 100_000

type pageEntry struct {
	name    string
	markers int          // late markers of the partition when it was read
	docs    []SessionDoc // newest first
	elem    *list.Element
}

type pageCache struct {
	mu      sync.Mutex
	entries map[string]*pageEntry
	lru     list.List // of *pageEntry, most recently used first
	n       int       // sessions held
	max     int       // 0: pageCacheSessions
	flight  singleflight.Group
	reads   int // partitions read into the cache, for tests
}

func (c *pageCache) get(name string, markers int) []SessionDoc {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[name]
	if e == nil || e.markers != markers {
		return nil
	}
	c.lru.MoveToFront(e.elem)
	return e.docs
}

func (c *pageCache) put(name string, markers int, docs []SessionDoc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if c.entries == nil {
		c.entries = map[string]*pageEntry{}
	}
	if old := c.entries[name]; old != nil {
		c.lru.Remove(old.elem)
		c.n -= len(old.docs)
		delete(c.entries, name)
	}
	limit := c.max
	if limit == 0 {
		limit = pageCacheSessions
	}
	if len(docs) > limit {
		return // larger than the whole cache: read each time
	}
	e := &pageEntry{name: name, markers: markers, docs: docs}
	e.elem = c.lru.PushFront(e)
	c.entries[name] = e
	c.n += len(docs)
	for c.n > limit {
		last := c.lru.Back().Value.(*pageEntry)
		c.lru.Remove(last.elem)
		c.n -= len(last.docs)
		delete(c.entries, last.name)
	}
}

// closedPartition returns the sessions of p, newest first, from the cache or by one read, if
// p is closed: grace has passed since its end and since its newest late marker, so no writer
// is inside it (a late writer marks it first). ok is false for a partition still open.
func (s *Store) closedPartition(ctx context.Context, l layout, p Partition, mk markerInfo) (docs []SessionDoc, ok bool, err error) {
	closeAt := p.End
	if mk.last.After(closeAt) {
		closeAt = mk.last
	}
	if time.Now().Before(closeAt.Add(l.grace)) {
		return nil, false, nil
	}
	if docs := s.pages.get(p.Name, mk.n); docs != nil {
		return docs, true, nil
	}
	v, err, _ := s.pages.flight.Do(p.Name+"@"+strconv.Itoa(mk.n), func() (any, error) {
		var docs []SessionDoc
		if err := s.scanColl(ctx, p.Name, bson.D{}, func(d *SessionDoc) { docs = append(docs, *d) }); err != nil {
			return nil, err
		}
		slices.SortFunc(docs, func(a, b SessionDoc) int {
			if newer(&a, &b) {
				return -1
			}
			return 1
		})
		s.pages.put(p.Name, mk.n, docs)
		return docs, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v.([]SessionDoc), true, nil
}

// match is q's filter and cursor condition (filter and FindSessions) in Go, for sessions read
// from memory. Times compare at the stored (millisecond) precision, as the store does.
func (q *SessionQuery) match(d *SessionDoc) bool {
	switch {
	case q.ChargerID != "" && d.ChargerID != q.ChargerID:
		return false
	case q.HasConnector && d.ConnectorID != q.ConnectorID:
		return false
	case !q.From.IsZero() && d.EndedAt.Before(q.From.Truncate(time.Millisecond)):
		return false
	case !q.To.IsZero() && !d.EndedAt.Before(q.To.Truncate(time.Millisecond)):
		return false
	}
	if q.After != nil {
		t := q.After.EndedAt.UTC().Truncate(time.Millisecond)
		return d.EndedAt.Before(t) || d.EndedAt.Equal(t) && d.ID < q.After.ID
	}
	return true
}
