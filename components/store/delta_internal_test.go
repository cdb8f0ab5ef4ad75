package store

import (
	"math"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
)

// A delta counts exactly the documents given, per charger, and its _id depends on which
// sessions it counts only: the same insert retried is the same delta, another is not.
func TestDeltaPacksExactFigures(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC)
	var docs []SessionDoc
	for i := range 50 {
		end := t0.Add(time.Duration(i) * time.Second)
		s := session.Session{SessionID: end.UnixMicro(), ChargerID: []string{"a", "bé", "", "long-charger-id-0123456789"}[i%4],
			EnergyKWh: 0.1 * float64(i), CostCents: math.Pi * float64(i), EndedAt: end}
		docs = append(docs, NewSessionDoc(s, "t", end))
	}
	d := newDelta(docs)
	if d.ID != newDelta(docs).ID || d.ID == newDelta(docs[1:]).ID {
		t.Fatalf("delta _id not a function of the sessions counted")
	}
	want := map[string]*chargerDelta{}
	for _, s := range docs {
		c := want[s.ChargerID]
		if c == nil {
			c = &chargerDelta{id: s.ChargerID}
			want[s.ChargerID] = c
		}
		c.n++
		c.e += s.EnergyKWh
		c.k += s.CostCents
		c.lastMs = max(c.lastMs, s.EndedAt.UnixMilli())
	}
	got := 0
	for b := d.Chargers; len(b) > 0; got++ {
		c, rest, err := nextCharger(b)
		if err != nil {
			t.Fatal(err)
		}
		b = rest
		if w := want[c.id]; w == nil || c != *w {
			t.Fatalf("charger %q: %+v, want %+v", c.id, c, w)
		}
	}
	if got != len(want) || d.Sessions != 50 || d.First != t0.UnixMilli() || d.Last != t0.Add(49*time.Second).UnixMilli() {
		t.Fatalf("%d chargers (want %d), %+v", got, len(want), d)
	}
	one := appendCharger(nil, &chargerDelta{id: "x", n: 300, e: 1.5, k: 2.5, lastMs: t0.UnixMilli()})
	for i := range len(one) {
		if _, _, err := nextCharger(one[:i]); err == nil {
			t.Fatalf("a charger cut to %d of %d bytes decoded", i, len(one))
		}
	}
}
