// Package cms owns the CMS envelopes keyarc exchanges with clients: it opens
// EnvelopedData (RFC 5652) and AuthEnvelopedData (RFC 5083) addressed to the
// appliance's transport certificate, and builds them on the client side
// (keyarc enroll).
//
// Only key transport with RSAES-OAEP (SHA-1 or SHA-256, MGF1 with the same
// hash, empty label) is accepted; PKCS#1 v1.5 key transport is refused so
// that the transport key, which lives in an HSM, is only ever used through
// [crypto.Decrypter.Decrypt] with [*rsa.OAEPOptions]. Content encryption is
// AES-CBC (EnvelopedData) or AES-GCM (AuthEnvelopedData).
//
// # Errors
//
// Every error [Decrypt] returns wraps exactly one of [ErrMalformed],
// [ErrNoRecipient], [ErrUnsupported], [ErrDecrypt] or [ErrKeyMismatch]; test
// with [errors.Is]. [Encrypt] refuses bad arguments with [ErrUnsupported]
// (a crypto/rand failure is wrapped as is).
// Messages say what was wrong but never contain key material or plaintext.
// Errors from the Decrypter (an HSM failure, say) are wrapped as well, so
// callers can still recognise them; callers that talk to untrusted peers
// should map ErrDecrypt to a single generic answer.
//
// # Imports and concurrency
//
// The package imports only the standard library and
// golang.org/x/crypto/cryptobyte; it must never import the hsm package. All
// functions are stateless and safe for concurrent use; concurrency of the
// Decrypter is the Decrypter's business.
package cms
