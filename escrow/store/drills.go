package store

// DrillStates keep the state of the recoverability drills (escrow's drill.go): rows of an
// encoding the escrow engine owns, by kind (canary, drill, proof) and key, none of them a
// secret (a canary is sealed like a record; a commitment, a drill key's public half, a proof's
// time). And the count of active records per epoch, for the quorum health of each epoch.
type DrillStates interface {
	// InsertDrillState stores data under kind and key: [ErrConflict] if a row exists there,
	// [ErrInvalid] for an empty kind, key or data.
	InsertDrillState(kind, key string, data []byte) error
	// PutDrillState stores data under kind and key, replacing the row there if any;
	// [ErrInvalid] as InsertDrillState.
	PutDrillState(kind, key string, data []byte) error
	// GetDrillState returns the data under kind and key, or [ErrNotFound].
	GetDrillState(kind, key string) ([]byte, error)
	// ListDrillState returns every row of kind, by key (empty, not nil, when there is none).
	ListDrillState(kind string) (map[string][]byte, error)
	// ActiveRecordsByEpoch counts the active records of each epoch; epochs without any are
	// absent.
	ActiveRecordsByEpoch() (map[uint32]int, error)
}
