package restapi

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// Cursors are opaque to clients: base64url (no padding) of a versioned text form. The kind
// prefix keeps a sessions cursor from being accepted by the chargers listing and vice versa.
//
//	sessions: "s1:<ended_at Unix milliseconds>:<document key>"
//	chargers: "c1:<charger ID>"
const (
	sessionCursorPrefix = "s1:"
	chargerCursorPrefix = "c1:"
	maxCursorLen        = 256
)

var errBadCursor = errors.New("not a cursor returned by this endpoint (use next_cursor as is)")

// cursorMinTime and cursorMaxTime bound the times a cursor may carry: what a stored session
// can have (session.Validate) with a margin.
var (
	cursorMinTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	cursorMaxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

func encodeSessionCursor(c store.SessionCursor) string {
	ms := c.EndedAt.UnixMilli()
	return base64.RawURLEncoding.EncodeToString([]byte(sessionCursorPrefix + strconv.FormatInt(ms, 10) + ":" + c.ID))
}

func decodeSessionCursor(s string) (store.SessionCursor, error) {
	var c store.SessionCursor
	raw, err := decodeCursor(s, sessionCursorPrefix)
	if err != nil {
		return c, err
	}
	msText, key, ok := strings.Cut(raw, ":")
	if !ok {
		return c, errBadCursor
	}
	ms, err := strconv.ParseInt(msText, 10, 64)
	if err != nil || strconv.FormatInt(ms, 10) != msText {
		return c, errBadCursor
	}
	t := time.UnixMilli(ms).UTC()
	if t.Before(cursorMinTime) || t.After(cursorMaxTime) {
		return c, errBadCursor
	}
	docKey, ok := parseSessionKey(key)
	if !ok || docKey != key {
		return c, errBadCursor
	}
	return store.SessionCursor{EndedAt: t, ID: docKey}, nil
}

func encodeChargerCursor(chargerID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(chargerCursorPrefix + chargerID))
}

func decodeChargerCursor(s string) (string, error) {
	id, err := decodeCursor(s, chargerCursorPrefix)
	if err != nil {
		return "", err
	}
	if !session.ValidChargerID(id) {
		return "", errBadCursor
	}
	return id, nil
}

func decodeCursor(s, prefix string) (string, error) {
	if len(s) > maxCursorLen {
		return "", errBadCursor
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return "", errBadCursor
	}
	raw, ok := strings.CutPrefix(string(b), prefix)
	if !ok {
		return "", errBadCursor
	}
	return raw, nil
}
