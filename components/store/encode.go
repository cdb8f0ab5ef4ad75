package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Sessions are written with an `insert` command the store builds itself from documents encoded
// once, instead of the driver's InsertMany. Profiled on the listener's write path (FerretDB,
// batches of 500, docs/performance.md), InsertMany spends ~12 µs of client CPU per document
// before anything is sent: ~4 µs marshalling the struct by reflection and ~8 µs in the
// driver's ensureID, which decodes every marshalled document again, through a fresh 4 KiB
// bufio.Reader each, only to find an _id we set ourselves. That is CPU on the core the broker
// and the MQTT client share, and it sits between one write's reply and the next write, where
// the store idles. AppendBSON encodes a document in ~0.3 µs, without reflection, and the
// listener does it when a message arrives (SessionDoc.Encode), while the previous write runs.

// AppendBSON appends d as a BSON document, byte for byte what bson.Marshal(d) produces
// (encode_test.go holds it to that for every field, and fuzzes it).
func (d *SessionDoc) AppendBSON(dst []byte) []byte {
	if d.enc != nil {
		return append(dst, d.enc...)
	}
	idx, dst := bsoncore.AppendDocumentStart(dst)
	s := &d.Session
	dst = bsoncore.AppendStringElement(dst, "_id", d.ID)
	dst = bsoncore.AppendInt64Element(dst, "session_id", s.SessionID)
	dst = bsoncore.AppendDoubleElement(dst, "energy_delivered_in_kWh", s.EnergyKWh)
	dst = bsoncore.AppendDoubleElement(dst, "duration_in_seconds", s.DurationSeconds)
	dst = bsoncore.AppendDoubleElement(dst, "session_cost_in_cents", s.CostCents)
	if s.Timestamp != 0 {
		dst = bsoncore.AppendInt64Element(dst, "timestamp", s.Timestamp)
	}
	dst = bsoncore.AppendStringElement(dst, "charger_id", s.ChargerID)
	// The driver writes a Go int as int32 when it fits, else int64.
	if c := int64(s.ConnectorID); c >= math.MinInt32 && c <= math.MaxInt32 {
		dst = bsoncore.AppendInt32Element(dst, "connector_id", int32(c))
	} else {
		dst = bsoncore.AppendInt64Element(dst, "connector_id", c)
	}
	dst = appendTimeOmitZero(dst, "started_at", s.StartedAt)
	dst = appendTimeOmitZero(dst, "ended_at", s.EndedAt)
	if s.PowerClass != "" {
		dst = bsoncore.AppendStringElement(dst, "power_class", s.PowerClass)
	}
	dst = appendDoubleOmitZero(dst, "peak_power_kw", s.PeakPowerKW)
	dst = appendDoubleOmitZero(dst, "battery_kwh", s.BatteryKWh)
	dst = appendDoubleOmitZero(dst, "start_soc_percent", s.StartSoCPercent)
	dst = appendDoubleOmitZero(dst, "end_soc_percent", s.EndSoCPercent)
	dst = appendDoubleOmitZero(dst, "tariff_cents_per_kwh", s.TariffCentsPerKWh)
	dst = appendDoubleOmitZero(dst, "session_fee_cents", s.SessionFeeCents)
	dst = bsoncore.AppendStringElement(dst, "topic", d.Topic)
	dst = bsoncore.AppendDateTimeElement(dst, "received_at", int64(bson.NewDateTimeFromTime(d.ReceivedAt)))
	dst, _ = bsoncore.AppendDocumentEnd(dst, idx) // only fails for an index out of range
	return dst
}

// Encode keeps d's BSON encoding for the write (AppendBSON then copies it): the listener calls
// it as a message arrives, so encoding is off the path from one write's reply to the next.
// d must not change afterwards.
func (d *SessionDoc) Encode() {
	// Every key and value but the strings take at most 448 bytes: one allocation.
	d.enc = d.AppendBSON(make([]byte, 0, 448+len(d.ID)+len(d.Topic)+len(d.ChargerID)+len(d.PowerClass)))
}

// omitempty as the driver reads it: a zero time (IsZero), a float equal to 0 (-0.0 too).
func appendTimeOmitZero(dst []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return dst
	}
	return bsoncore.AppendDateTimeElement(dst, key, int64(bson.NewDateTimeFromTime(t)))
}

func appendDoubleOmitZero(dst []byte, key string, f float64) []byte {
	if f == 0 {
		return dst
	}
	return bsoncore.AppendDoubleElement(dst, key, f)
}

// maxInsertCommandBytes bounds one insert command's documents: a command is one BSON document,
// and servers refuse documents over 16 MiB (maxBsonObjectSize). InsertMany splits on the wire
// message size instead (document sequences); our batches are far below either bound unless
// --batch-size is raised to tens of thousands. A variable for tests.
var maxInsertCommandBytes = 8 << 20

// maxInsertCommandDocs is the server's maxWriteBatchSize.
const maxInsertCommandDocs = 100000

// insertSessions stores docs into coll: unordered `insert` commands of pre-encoded documents,
// with the store's write concern, sorted into a WriteResult like insertMany's.
func (s *Store) insertSessions(ctx context.Context, coll string, docs []SessionDoc) (WriteResult, error) {
	var res WriteResult
	buf := make([]byte, 0, 256*len(docs)+256)
	for first := 0; first < len(docs); {
		cmd, n := s.insertCommand(buf[:0], coll, docs[first:])
		r, err := s.runInsert(ctx, coll, cmd, n)
		if err != nil {
			return WriteResult{}, err
		}
		res.Inserted += r.Inserted
		for _, d := range r.Duplicates {
			res.Duplicates = append(res.Duplicates, first+d)
		}
		for _, f := range r.Refused {
			f.Index += first
			res.Refused = append(res.Refused, f)
		}
		first += n
		buf = cmd
	}
	return res, nil
}

// insertCommand appends to dst an insert command of the first documents of docs, as many as fit
// maxInsertCommandBytes (at least one), and returns it with how many it holds.
func (s *Store) insertCommand(dst []byte, coll string, docs []SessionDoc) ([]byte, int) {
	idx, dst := bsoncore.AppendDocumentStart(dst)
	dst = bsoncore.AppendStringElement(dst, "insert", coll)
	aidx, dst := bsoncore.AppendArrayElementStart(dst, "documents")
	start, n := len(dst), 0
	var key [20]byte
	for n < len(docs) && n < maxInsertCommandDocs && (n == 0 || len(dst)-start < maxInsertCommandBytes) {
		dst = bsoncore.AppendHeader(dst, bsoncore.TypeEmbeddedDocument, string(strconv.AppendInt(key[:0], int64(n), 10)))
		dst = docs[n].AppendBSON(dst)
		n++
	}
	dst, _ = bsoncore.AppendArrayEnd(dst, aidx)
	dst = bsoncore.AppendBooleanElement(dst, "ordered", false)
	dst = bsoncore.AppendDocumentElement(dst, "writeConcern", s.wcDoc)
	dst, _ = bsoncore.AppendDocumentEnd(dst, idx)
	return dst, n
}

// runInsert runs one insert command of n documents. The driver turns a reply's writeErrors and
// writeConcernError into a WriteException, sorted like InsertMany's BulkWriteException.
func (s *Store) runInsert(ctx context.Context, coll string, cmd []byte, n int) (WriteResult, error) {
	err := s.DB.RunCommand(ctx, bson.Raw(cmd)).Err()
	if err == nil {
		return WriteResult{Inserted: n}, nil
	}
	var we mongo.WriteException
	if !errors.As(err, &we) || we.WriteConcernError != nil {
		return WriteResult{}, fmt.Errorf("insert %d documents into %s: %w", n, coll, err)
	}
	errs := make([]mongo.WriteError, len(we.WriteErrors))
	copy(errs, we.WriteErrors)
	return classifyErrors(we, errs, n, coll, err)
}

// writeConcernDoc encodes wc as an insert command's writeConcern field.
func writeConcernDoc(wc *writeconcern.WriteConcern) (bson.Raw, error) {
	d := bson.D{}
	if wc.W != nil {
		d = append(d, bson.E{Key: "w", Value: wc.W})
	}
	if wc.Journal != nil {
		d = append(d, bson.E{Key: "j", Value: *wc.Journal})
	}
	return bson.Marshal(d)
}
