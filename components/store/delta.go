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
	"fmt"
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

// deltaDoc is the sums of the sessions one insert newly stored into a partition. Per-charger
// figures are parallel arrays (cheaper for FerretDB to store and decode than an array of
// documents); times are Unix milliseconds (BSON dates hold milliseconds). The first session
// time is kept for the fleet only: a charger's FirstSessionAt is not served.
type deltaDoc struct {
	ID       string    `bson:"_id"`
	At       time.Time `bson:"at"` // when it was written, for operators
	Sessions int64     `bson:"n"`
	Energy   float64   `bson:"e"`
	Cost     float64   `bson:"k"`
	First    int64     `bson:"f"`
	Last     int64     `bson:"l"`
	Chargers []string  `bson:"ci"`
	CSess    []int64   `bson:"cn"`
	CEnergy  []float64 `bson:"ce"`
	CCost    []float64 `bson:"ck"`
	CLast    []int64   `bson:"cl"`
}

// newDelta sums docs (the sessions one insert newly stored). Its _id is a SHA-256 of their
// _ids (length-prefixed): the same insert retried is the same delta, and two inserts never
// newly store the same session, so two different deltas never count one session twice.
func newDelta(docs []SessionDoc) deltaDoc {
	h := sha256.New()
	var n [8]byte
	d := deltaDoc{At: time.Now().UTC().Truncate(time.Millisecond)}
	at := map[string]int{}
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
		k, ok := at[s.ChargerID]
		if !ok {
			k = len(d.Chargers)
			at[s.ChargerID] = k
			d.Chargers = append(d.Chargers, s.ChargerID)
			d.CSess = append(d.CSess, 0)
			d.CEnergy = append(d.CEnergy, 0)
			d.CCost = append(d.CCost, 0)
			d.CLast = append(d.CLast, end)
		}
		d.CSess[k]++
		d.CEnergy[k] += s.EnergyKWh
		d.CCost[k] += s.CostCents
		if end > d.CLast[k] {
			d.CLast[k] = end
		}
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
		k := len(d.Chargers)
		if len(d.CSess) != k || len(d.CEnergy) != k || len(d.CCost) != k || len(d.CLast) != k {
			return nil, fmt.Errorf("read %s: delta %s: per-charger arrays of different lengths", coll, d.ID)
		}
		out.docs++
		out.fleet.merge(&Totals{Sessions: d.Sessions, EnergyKWh: d.Energy, CostCents: d.Cost,
			FirstSessionAt: time.UnixMilli(d.First).UTC(), LastSessionAt: time.UnixMilli(d.Last).UTC()})
		for i, id := range d.Chargers {
			c := out.chargers[id]
			if c == nil {
				c = &ChargerTotals{ChargerID: id}
				out.chargers[id] = c
			}
			last := time.UnixMilli(d.CLast[i]).UTC()
			// The charger's first session time is not recorded (not served): its last one
			// stands in, so that merging keeps a plausible, non-zero value.
			c.merge(&Totals{Sessions: d.CSess[i], EnergyKWh: d.CEnergy[i], CostCents: d.CCost[i], FirstSessionAt: last, LastSessionAt: last})
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
