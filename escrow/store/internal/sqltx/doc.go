// Package sqltx is the one implementation of [store.Tx] over database/sql, shared by the SQLite
// and PostgreSQL backends: every read and write of codes, certificates, records, pending
// requests, recovery sets, revocations, CRLs, OCSP responses, the audit trail, bulk jobs,
// leases and the consistency check, with the error contract of package store.
//
// Its statements are written once, with ? placeholders (?N for a numbered one), in SQL that
// both databases accept. What truly differs is a backend's [Dialect] (how a failed write maps
// to the store's sentinels, the column of insertion order, SQLite's index hints) and its
// [Querier]: PostgreSQL's rebinds the placeholders, refuses text it cannot store and runs
// each write in a savepoint of its own; SQLite's prepares each statement once on the writer.
//
// Each backend keeps what is its own: opening the database, the schema and its migrations,
// the writer and its group commit, savepoints, fault classification, backups (SQLite) and the
// writer lock across nodes (PostgreSQL).
//
// It imports package store and database/sql, never a driver. A [Tx] is used by one goroutine,
// only while the function its backend handed it to runs.
package sqltx
