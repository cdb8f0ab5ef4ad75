package store

import (
	"bytes"
	"math"
	"reflect"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/chargesim/chargesim/components/session"
)

// sameAsMarshal fails unless AppendBSON (fresh and after Encode) is bson.Marshal's encoding.
func sameAsMarshal(t *testing.T, d SessionDoc) {
	t.Helper()
	want, err := bson.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	got := d.AppendBSON([]byte("prefix"))
	if !bytes.Equal(got[:6], []byte("prefix")) || !bytes.Equal(got[6:], want) {
		t.Fatalf("AppendBSON(%+v)\n= %v\nwant %v", d, bson.Raw(got[6:]), bson.Raw(want))
	}
	d.Encode()
	if got := d.AppendBSON(nil); !bytes.Equal(got, want) {
		t.Fatalf("after Encode: %v, want %v", bson.Raw(got), bson.Raw(want))
	}
}

// Every field of a session set: a field added to session.Session or SessionDoc and not to
// AppendBSON makes this fail (the reflection sets fields by kind, so it sees new ones).
func TestAppendBSONEveryField(t *testing.T) {
	var d SessionDoc
	n := 0
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		for i := 0; i < v.NumField(); i++ {
			f := v.Field(i)
			if !f.CanSet() {
				continue
			}
			n++
			switch f.Kind() {
			case reflect.String:
				f.SetString("s" + v.Type().Field(i).Name)
			case reflect.Int, reflect.Int64:
				f.SetInt(int64(1000 + n))
			case reflect.Float64:
				f.SetFloat(float64(n) + 0.25)
			case reflect.Bool:
				f.SetBool(true)
			case reflect.Struct:
				if f.Type() == reflect.TypeOf(time.Time{}) {
					f.Set(reflect.ValueOf(time.UnixMilli(1_700_000_000_000 + int64(n)).UTC()))
				} else {
					fill(f)
				}
			default:
				t.Fatalf("field %s of kind %s: teach AppendBSON and this test about it", v.Type().Field(i).Name, f.Kind())
			}
		}
	}
	fill(reflect.ValueOf(&d).Elem())
	sameAsMarshal(t, d)
}

func TestAppendBSONEdgeValues(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 123_000_000, time.UTC)
	contract, err := session.Decode("charger/1/connector/1/session/7",
		[]byte(`{"session_id":7,"energy_delivered_in_kWh":30,"duration_in_seconds":45,"session_cost_in_cents":70}`))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]SessionDoc{
		"contract only": NewSessionDoc(contract, "charger/1/connector/1/session/7", now),
		"zero":          {},
		"big connector": {Session: session.Session{ConnectorID: math.MaxInt32 + 1}},
		"negative connector": {Session: session.Session{ConnectorID: math.MinInt32 - 1, SessionID: -5,
			Timestamp: -1}},
		"negative zero floats": {Session: session.Session{EnergyKWh: math.Copysign(0, -1),
			PeakPowerKW: math.Copysign(0, -1), BatteryKWh: math.Inf(1), StartSoCPercent: math.NaN()}},
		"pre-1970 times with ms": {Session: session.Session{StartedAt: time.Date(1960, 1, 1, 0, 0, 0, 999_000_000, time.UTC)},
			ReceivedAt: time.Date(1969, 12, 31, 23, 59, 59, 1_000_000, time.UTC)},
		"unicode and NUL in strings": {ID: "é/\x00/1", Topic: "charger/é", Session: session.Session{ChargerID: "\xff", PowerClass: "ä"}},
	}
	for name, d := range cases {
		t.Run(name, func(t *testing.T) { sameAsMarshal(t, d) })
	}
}

func FuzzAppendBSON(f *testing.F) {
	f.Add(int64(1), 30.0, 45.0, 70.0, int64(0), "c1", 1, int64(1_700_000_000_000), "t", 0.0, "")
	f.Add(int64(-1), math.Copysign(0, -1), math.Inf(-1), math.NaN(), int64(99), "", math.MaxInt32+7, int64(-5), "", 1e300, "AC")
	f.Fuzz(func(t *testing.T, sid int64, energy, dur, cost float64, ts int64, charger string, conn int, ms int64, topic string, peak float64, class string) {
		d := SessionDoc{ID: charger + "/x", Topic: topic, ReceivedAt: time.UnixMilli(ms).UTC(),
			Session: session.Session{SessionID: sid, EnergyKWh: energy, DurationSeconds: dur, CostCents: cost, Timestamp: ts,
				ChargerID: charger, ConnectorID: conn, EndedAt: time.UnixMilli(ms / 2), PowerClass: class, PeakPowerKW: peak,
				TariffCentsPerKWh: cost * 2}}
		sameAsMarshal(t, d)
	})
}

// An insert command holds as many documents as fit maxInsertCommandBytes, at least one, and is
// a valid command document.
func TestInsertCommandSplits(t *testing.T) {
	defer func(n int) { maxInsertCommandBytes = n }(maxInsertCommandBytes)
	maxInsertCommandBytes = 1000
	s := &Store{wcDoc: bson.Raw(bsoncore.NewDocumentBuilder().AppendString("w", "majority").AppendBoolean("j", true).Build())}
	docs := make([]SessionDoc, 30)
	for i := range docs {
		docs[i] = SessionDoc{ID: "c/1/" + string(rune('a'+i)), Topic: "charger/c/connector/1/session/1"}
	}
	one := len(docs[0].AppendBSON(nil))
	total := 0
	for first := 0; first < len(docs); {
		cmd, n := s.insertCommand(nil, "sessions", docs[first:])
		if err := bsoncore.Document(cmd).Validate(); err != nil {
			t.Fatalf("invalid command: %v", err)
		}
		arr, err := bsoncore.Document(cmd).LookupErr("documents")
		if err != nil {
			t.Fatal(err)
		}
		vals, _ := arr.Array().Values()
		if len(vals) != n || n < 1 {
			t.Fatalf("command holds %d documents, reported %d", len(vals), n)
		}
		for i, v := range vals {
			if id := v.Document().Lookup("_id").StringValue(); id != docs[first+i].ID {
				t.Fatalf("document %d of the command is %s, want %s", i, id, docs[first+i].ID)
			}
		}
		if first+n < len(docs) && (n-1)*(one+3) >= maxInsertCommandBytes {
			t.Fatalf("%d documents of %d bytes: past the bound %d", n, one, maxInsertCommandBytes)
		}
		if ordered := bsoncore.Document(cmd).Lookup("ordered"); ordered.Boolean() {
			t.Fatal("ordered insert: a refused document would stop the rest")
		}
		if wc := bsoncore.Document(cmd).Lookup("writeConcern", "w"); wc.StringValue() != "majority" {
			t.Fatalf("write concern %v", wc)
		}
		total += n
		first += n
	}
	if total != len(docs) {
		t.Fatalf("commands hold %d documents, want %d", total, len(docs))
	}
}

// BenchmarkEncodeSession compares AppendBSON with bson.Marshal on a simulator's session.
func BenchmarkEncodeSession(b *testing.B) {
	s, err := session.Decode("charger/c-000042/connector/1/session/7",
		[]byte(`{"session_id":7,"energy_delivered_in_kWh":30.5,"duration_in_seconds":2745,"session_cost_in_cents":1070,"charger_id":"c-000042","connector_id":1,"ended_at":"2026-12-03T10:00:00Z","power_class":"AC22","peak_power_kw":22,"battery_kwh":60,"start_soc_percent":20,"end_soc_percent":70,"tariff_cents_per_kwh":35,"session_fee_cents":0}`))
	if err != nil {
		b.Fatal(err)
	}
	d := NewSessionDoc(s, "charger/c-000042/connector/1/session/7", time.Now())
	b.Run("AppendBSON", func(b *testing.B) {
		for b.Loop() {
			d := d
			d.Encode()
		}
	})
	b.Run("bson.Marshal", func(b *testing.B) {
		for b.Loop() {
			if _, err := bson.Marshal(d); err != nil {
				b.Fatal(err)
			}
		}
	})
}
