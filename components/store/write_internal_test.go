package store

import (
	"errors"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/session"
)

func TestClassifyWriteErrors(t *testing.T) {
	we := func(i, code int) mongo.BulkWriteError {
		return mongo.BulkWriteError{WriteError: mongo.WriteError{Index: i, Code: code, Message: "m" + string(rune('0'+i))}}
	}
	cases := []struct {
		name      string
		bwe       mongo.BulkWriteException
		transient bool
		dups      []int
		refused   []int
	}{
		{name: "duplicates only", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(3, 11000), we(1, 11000)}}, dups: []int{1, 3}},
		{name: "invalid value (FerretDB code 2) is permanent", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(2, 2), we(0, 11000)}}, dups: []int{0}, refused: []int{2}},
		{name: "validator (121) is permanent", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(4, 121), we(1, 121)}}, refused: []int{1, 4}},
		{name: "unknown code is permanent", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(0, 424242)}}, refused: []int{0}},
		{name: "not primary is transient", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(0, 2), we(1, 10107)}}, transient: true},
		{name: "write conflict is transient", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(0, 112)}}, transient: true},
		{name: "interrupted at shutdown is transient", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(0, 11600)}}, transient: true},
		{name: "retryable label is transient", bwe: mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{we(0, 2)}, Labels: []string{"RetryableWriteError"}}, transient: true},
		{name: "network label is transient", bwe: mongo.BulkWriteException{Labels: []string{"NetworkError"}}, transient: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := classify(c.bwe, 5, "sessions", c.bwe)
			if c.transient {
				if err == nil {
					t.Fatalf("classified as settled: %+v", r)
				}
				if !errors.As(err, new(mongo.BulkWriteException)) {
					t.Fatalf("error %v does not wrap the driver's", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("classified as transient: %v", err)
			}
			if len(r.Duplicates) != len(c.dups) || r.Inserted != 5-len(c.dups)-len(c.refused) {
				t.Fatalf("result %+v, want duplicates %v refused %v", r, c.dups, c.refused)
			}
			for i, d := range c.dups {
				if r.Duplicates[i] != d {
					t.Fatalf("duplicates %v, want %v", r.Duplicates, c.dups)
				}
			}
			if len(r.Refused) != len(c.refused) {
				t.Fatalf("refused %+v, want indexes %v", r.Refused, c.refused)
			}
			for i, idx := range c.refused {
				if r.Refused[i].Index != idx || r.Refused[i].Message == "" || r.Refused[i].Code == 0 {
					t.Fatalf("refused %+v, want indexes %v with code and message", r.Refused, c.refused)
				}
			}
		})
	}
}

func TestWriteConcern(t *testing.T) {
	for _, c := range []struct {
		uri     string
		w       any
		journal bool
	}{
		{"mongodb://h/", "majority", true},
		{"mongodb://h/?w=1", 1, true},
		{"mongodb://h/?w=2&journal=false", 2, false},
		{"mongodb://h/?w=majority", "majority", true},
		{"mongodb://h/?journal=true", "majority", true},
	} {
		wc := writeConcern(options.Client().ApplyURI(c.uri))
		if wc.W != c.w || wc.Journal == nil || *wc.Journal != c.journal {
			t.Errorf("%s: write concern %+v (journal %v), want w=%v journal=%v", c.uri, wc, wc.Journal, c.w, c.journal)
		}
	}
}

func TestValidateRefusesUnacknowledgedWrites(t *testing.T) {
	for _, uri := range []string{"mongodb://h/?w=0", "mongodb://u:secret@h/db?w=0&journal=false"} {
		c := Config{URI: uri, Database: "d"}
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "unacknowledged") || strings.Contains(err.Error(), "secret") {
			t.Errorf("Validate(%s) = %v, want an unacknowledged-write-concern error without the password", uri, err)
		}
	}
	for _, uri := range []string{"mongodb://h/", "mongodb://h/?w=1", "mongodb://h/?w=majority&journal=true"} {
		c := Config{URI: uri, Database: "d"}
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%s) = %v", uri, err)
		}
	}
}

func TestRejectedIDIsDeterministic(t *testing.T) {
	a := RejectedID("charger/1/connector/1/session/1", []byte("{"), session.ReasonBadJSON)
	if a != RejectedID("charger/1/connector/1/session/1", []byte("{"), session.ReasonBadJSON) || len(a) != 32 {
		t.Fatalf("RejectedID not stable or not 32 hex digits: %s", a)
	}
	for _, other := range []string{
		RejectedID("charger/1/connector/1/session/2", []byte("{"), session.ReasonBadJSON),
		RejectedID("charger/1/connector/1/session/1", []byte("{}"), session.ReasonBadJSON),
		RejectedID("charger/1/connector/1/session/1", []byte("{"), session.ReasonWrongType),
		RejectedID("charger/1/connector/1/session/1{", nil, session.ReasonBadJSON), // boundaries are length-prefixed
	} {
		if other == a {
			t.Fatalf("different inputs share RejectedID %s", a)
		}
	}
}
