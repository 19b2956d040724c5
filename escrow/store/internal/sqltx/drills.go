package sqltx

import (
	"fmt"
)

// Drill states (store.DrillStates): one table of (kind, key, data) rows whose encoding the
// escrow engine owns.

func checkDrillState(op, kind, key string, data []byte) error {
	switch {
	case kind == "" || key == "":
		return invalid(op, "kind and key are required")
	case len(data) == 0:
		return invalid(op, "%s %s: data is empty", kind, key)
	}
	return nil
}

// InsertDrillState stores a new row; see store.DrillStates.
func (tx *Tx) InsertDrillState(kind, key string, data []byte) error {
	const op = "insert drill state"
	if err := checkDrillState(op, kind, key, data); err != nil {
		return err
	}
	_, err := tx.exec(op, `INSERT INTO drill_state (kind, key, data) VALUES (?, ?, ?)`, kind, key, data)
	return err
}

// PutDrillState stores or replaces a row; see store.DrillStates.
func (tx *Tx) PutDrillState(kind, key string, data []byte) error {
	const op = "put drill state"
	if err := checkDrillState(op, kind, key, data); err != nil {
		return err
	}
	_, err := tx.exec(op, `INSERT INTO drill_state (kind, key, data) VALUES (?, ?, ?)
		ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data`, kind, key, data)
	return err
}

// GetDrillState returns a row's data; see store.DrillStates.
func (tx *Tx) GetDrillState(kind, key string) ([]byte, error) {
	var data []byte
	err := tx.queryRow("get drill state", []any{&data}, `SELECT data FROM drill_state WHERE kind = ? AND key = ?`, kind, key)
	if err != nil {
		return nil, fmt.Errorf("%w (%s %s)", err, kind, key)
	}
	return data, nil
}

// ListDrillState returns the rows of a kind; see store.DrillStates.
func (tx *Tx) ListDrillState(kind string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := tx.query("list drill state", func(rows Rows) error {
		var key string
		var data []byte
		if err := rows.Scan(&key, &data); err != nil {
			return err
		}
		out[key] = data
		return nil
	}, `SELECT key, data FROM drill_state WHERE kind = ?`, kind)
	return out, err
}

// ActiveRecordsByEpoch counts the active records per epoch; see store.DrillStates. The index
// records_epoch_state answers it without reading the records' rows.
func (tx *Tx) ActiveRecordsByEpoch() (map[uint32]int, error) {
	out := map[uint32]int{}
	err := tx.query("active records by epoch", func(rows Rows) error {
		var epoch, n int64
		if err := rows.Scan(&epoch, &n); err != nil {
			return err
		}
		out[uint32(epoch)] = int(n)
		return nil
	}, `SELECT epoch, COUNT(*) FROM records WHERE state = 'active' GROUP BY epoch`)
	return out, err
}
