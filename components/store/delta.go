package store

// Deltas: the speed layer of the partitioned read model (incremental.go). A FerretDB scan of
// a filling 10,000-session partition takes seconds, so totals computed from scans of the open
// partitions were tens of seconds old. Instead, the writer that inserts sessions into a time
// partition knows exactly which documents it newly created (not the duplicates, not the
// refused ones) and inserts ONE small document into the partition's delta collection
// (deltas_p<the partition's suffix>): the per-charger sums of those documents. Readers add the
// deltas of the partitions that are not final yet (a few small documents each) to the exact
// figures of the final ones, every second; once a partition is final (scanned after it
// closed) its exact scan replaces its deltas. So:
//
//   - provisional figures can only undercount: a delta is written after its sessions, its _id
//     is a hash of the session _ids it counts (a driver retry of the delta insert is a
//     duplicate key, already counted), a redelivery inserts no new session and so writes no
//     delta, and a delta that fails (or a crash between the two inserts) leaves its sessions
//     uncounted until the partition's final scan;
//   - the figures of final partitions stay exact sums over what is stored (scans).
//
// Only the time partitions have deltas; the unpartitioned sessions collection (foreign keys)
// is read by scans as before, and retention deletes from it (a delta there would overcount).
// Retention drops a partition's delta collection with the partition.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// DeltaPrefix names the delta collection of a partition: DeltaPrefix + the partition's
// suffix (deltas_p20261203110000 for sessions_p20261203110000).
const DeltaPrefix = "deltas_p"

// deltaCollection is the delta collection of a time partition.
func deltaCollection(partition string) string {
	return DeltaPrefix + strings.TrimPrefix(partition, PartitionPrefix)
}

// partitionOfDelta is the partition a delta collection belongs to, if name is one.
func partitionOfDelta(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, DeltaPrefix)
	if !ok {
		return "", false
	}
	return PartitionPrefix + rest, true
}

// deltaDoc is the sums of the sessions one insert newly stored into a partition. The
// per-charger figures are packed into one binary value (appendCharger): FerretDB decodes
// every JSON value of every document it returns: with parallel arrays (one value per
// charger and figure) reading the 100 deltas of 100 chargers each of a 10,000-session
// partition took ~260 ms, packed ~40 ms, a scan of its sessions ~1.1 s (idle 2-core VM). Times are Unix milliseconds (BSON dates hold
// milliseconds). The first session time is kept for the fleet only: a charger's
// FirstSessionAt is not served.
type deltaDoc struct {
	ID       string    `bson:"_id"`
	At       time.Time `bson:"at"` // when it was written, for operators
	Sessions int64     `bson:"n"`
	Energy   float64   `bson:"e"`
	Cost     float64   `bson:"k"`
	First    int64     `bson:"f"`
	Last     int64     `bson:"l"`
	Chargers []byte    `bson:"c"` // per charger: appendCharger
}

// chargerDelta is one charger's figures in a delta.
type chargerDelta struct {
	id     string
	n      int64
	e, k   float64
	lastMs int64
}

// appendCharger packs c: uvarint length and bytes of the ID, uvarint sessions, the float64
// bits of energy and cost (exact), varint last end in Unix milliseconds.
func appendCharger(b []byte, c *chargerDelta) []byte {
	b = binary.AppendUvarint(b, uint64(len(c.id)))
	b = append(b, c.id...)
	b = binary.AppendUvarint(b, uint64(c.n))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(c.e))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(c.k))
	return binary.AppendVarint(b, c.lastMs)
}

// nextCharger unpacks the first charger of b and returns the rest.
func nextCharger(b []byte) (chargerDelta, []byte, error) {
	var c chargerDelta
	l, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < l {
		return c, nil, errors.New("bad charger ID")
	}
	c.id, b = string(b[k:k+int(l)]), b[k+int(l):]
	n, k := binary.Uvarint(b)
	if k <= 0 || len(b)-k < 16 {
		return c, nil, errors.New("bad charger figures")
	}
	c.n, b = int64(n), b[k:]
	c.e, c.k, b = math.Float64frombits(binary.BigEndian.Uint64(b)), math.Float64frombits(binary.BigEndian.Uint64(b[8:])), b[16:]
	last, k := binary.Varint(b)
	if k <= 0 {
		return c, nil, errors.New("bad charger time")
	}
	c.lastMs = last
	return c, b[k:], nil
}

// newDelta sums docs (the sessions one insert newly stored). Its _id is a SHA-256 of their
// _ids (length-prefixed): the same insert retried is the same delta, and two inserts never
// newly store the same session, so two different deltas never count one session twice.
func newDelta(docs []SessionDoc) deltaDoc {
	h := sha256.New()
	var n [8]byte
	d := deltaDoc{At: time.Now().UTC().Truncate(time.Millisecond)}
	at := map[string]*chargerDelta{}
	var order []*chargerDelta
	for i := range docs {
		s := &docs[i]
		binary.BigEndian.PutUint64(n[:], uint64(len(s.ID)))
		h.Write(n[:])
		h.Write([]byte(s.ID))
		end := s.EndedAt.UTC().UnixMilli()
		d.Sessions++
		d.Energy += s.EnergyKWh
		d.Cost += s.CostCents
		if d.Sessions == 1 || end < d.First {
			d.First = end
		}
		if d.Sessions == 1 || end > d.Last {
			d.Last = end
		}
		c := at[s.ChargerID]
		if c == nil {
			c = &chargerDelta{id: s.ChargerID, lastMs: end}
			at[s.ChargerID] = c
			order = append(order, c)
		}
		c.n++
		c.e += s.EnergyKWh
		c.k += s.CostCents
		c.lastMs = max(c.lastMs, end)
	}
	for _, c := range order {
		d.Chargers = appendCharger(d.Chargers, c)
	}
	d.ID = hex.EncodeToString(h.Sum(nil)[:16])
	return d
}

// writeDelta records the sessions an insert newly stored into partition. A duplicate key is
// the same delta written before (a retried insert): already counted.
func (s *Store) writeDelta(ctx context.Context, partition string, docs []SessionDoc) error {
	if len(docs) == 0 {
		return nil
	}
	var err error
	if s.deltaFault != nil {
		err = s.deltaFault(partition)
	}
	if err == nil {
		_, err = s.DB.Collection(deltaCollection(partition)).InsertOne(ctx, newDelta(docs))
	}
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("record the delta of %d sessions stored into %s: %w", len(docs), partition, err)
	}
	return nil
}

// partSums is the sums of the deltas of one partition.
type partSums struct {
	fleet    Totals
	chargers map[string]*ChargerTotals
	docs     int
}

// readDeltas sums every delta of partition (a handful of small documents: one per insert).
func (s *Store) readDeltas(ctx context.Context, partition string) (*partSums, error) {
	coll := deltaCollection(partition)
	cur, err := s.DB.Collection(coll).Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", coll, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	out := &partSums{chargers: map[string]*ChargerTotals{}}
	for cur.Next(ctx) {
		var d deltaDoc
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("read %s: decode: %w", coll, err)
		}
		out.docs++
		out.fleet.merge(&Totals{Sessions: d.Sessions, EnergyKWh: d.Energy, CostCents: d.Cost,
			FirstSessionAt: time.UnixMilli(d.First).UTC(), LastSessionAt: time.UnixMilli(d.Last).UTC()})
		for b := d.Chargers; len(b) > 0; {
			var cd chargerDelta
			if cd, b, err = nextCharger(b); err != nil {
				return nil, fmt.Errorf("read %s: delta %s: %w", coll, d.ID, err)
			}
			c := out.chargers[cd.id]
			if c == nil {
				c = &ChargerTotals{ChargerID: cd.id}
				out.chargers[cd.id] = c
			}
			last := time.UnixMilli(cd.lastMs).UTC()
			// The charger's first session time is not recorded (not served): its last one
			// stands in, so that merging keeps a plausible, non-zero value.
			c.merge(&Totals{Sessions: cd.n, EnergyKWh: cd.e, CostCents: cd.k, FirstSessionAt: last, LastSessionAt: last})
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", coll, err)
	}
	return out, nil
}

// deltaPartitions returns the partitions that have a delta collection, in no particular order.
func (s *Store) deltaPartitions(ctx context.Context, l layout) ([]Partition, error) {
	names, err := s.DB.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("list delta collections: %w", err)
	}
	var out []Partition
	for _, n := range names {
		if name, ok := partitionOfDelta(n); ok {
			if p, ok := l.parsePartition(name); ok && !p.Unbounded() {
				out = append(out, p)
			}
		}
	}
	return out, nil
}
