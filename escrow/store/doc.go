// Package store is the seam between keyarc's engine and its storage: the domain types the
// archive keeps (enrollment codes, certificates, sealed escrow records, pending requests,
// recovery sets, recoveries, bulk jobs, audit entries and checkpoints, revocations, signed
// CRLs and pre-signed OCSP responses, and the leases by which nodes sharing a database agree
// on who runs a bulk job or a singleton) with their states,
// the errors of the storage contract, and the interfaces a backend implements ([Store],
// [Tx] and the small interfaces Tx is made of).
//
// It imports only the standard library. Backends live beside it: escrow/store/sqlite, the
// embedded default for one node. Each backend must pass escrow/store/storetest, the
// conformance suite that pins the contract down: state transitions, conflict sentinels,
// group commit and concurrent writers.
//
// The store knows no cryptography, policy or HTTP, with one exception: [KeyID] reads just
// enough of a DER certificate (its SubjectPublicKeyInfo) that every backend gives a
// certificate the same key identity, by which the certificates of a compromised key are
// found ([Revocations.CertificatesByKey]). CRLs and OCSP responses are stored as the signed
// bytes the caller made; the store never signs, parses or checks them. Secrets never reach it in clear:
// enrollment codes are kept only as the hash the caller passes in, and escrow records only
// as the sealed blobs made by escrow/record.
package store
