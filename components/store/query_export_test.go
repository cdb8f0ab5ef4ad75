package store

// SetLastScanPerCharger lets the external tests exercise both halves of lastSessions (the
// shared scan and the per-charger fallback); it returns a function restoring the default.
func SetLastScanPerCharger(n int) (restore func()) {
	old := lastScanPerCharger
	lastScanPerCharger = n
	return func() { lastScanPerCharger = old }
}

// SetNoIndexes switches the store between its indexed and index-free read paths, so that
// both are tested on FerretDB.
func (s *Store) SetNoIndexes(v bool) { s.noIndexes = v }
