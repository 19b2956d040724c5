package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// ours lists the sentinels that classify passes through unchanged.
var ours = []error{
	ErrModuleNotLoadable, ErrTokenNotFound, ErrPINIncorrect, ErrKeyNotFound, ErrKeyAmbiguous,
	ErrKeyExists, ErrPoolExhausted, ErrTokenGone, ErrMechanism, ErrInvalidURI, ErrPINSource,
	ErrTokenInUse, ErrClosed, ErrKeyUsage, ErrDecrypt, ErrKeyChanged, ErrTokenStoreNotFound, ErrTokenHung,
	ErrTokenFault,
}

// classify maps an error from crypto11 or miekg to one of this package's sentinels,
// keeping the original in the chain (so the PKCS#11 return value stays in the message).
// Every PKCS#11 return value gets one: those that are a verdict on the request or the PIN
// their own, the others [ErrTokenGone] or [ErrTokenFault] (see [sentinelFor]). Other errors
// it does not recognise are returned unchanged.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range ours {
		if errors.Is(err, s) {
			return err
		}
	}
	var p11 pkcs11.Error
	if errors.As(err, &p11) {
		return fmt.Errorf("%w: %w", sentinelFor(p11), err)
	}
	// crypto11 and its pool report these as plain strings. The strings are pinned by
	// tests (TestClassify, TestOpenErrors) so an upgrade that changes them is noticed.
	switch msg := err.Error(); {
	case strings.Contains(msg, "resource pool timed out"):
		return fmt.Errorf("%w: %w", ErrPoolExhausted, err)
	case strings.Contains(msg, "context is closed"), strings.Contains(msg, "cannot used closed Context"):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// classifyOpen classifies a crypto11.Configure error.
func classifyOpen(err error) error {
	var p11 pkcs11.Error
	if errors.As(err, &p11) {
		return classify(err)
	}
	switch msg := err.Error(); {
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("%w: %w", ErrTokenNotFound, err)
	case strings.Contains(msg, "failed to open module"), strings.Contains(msg, "failed to initialize module"):
		return fmt.Errorf("%w: %w", ErrModuleNotLoadable, err)
	}
	return classify(err)
}

// sentinelFor maps a PKCS#11 return value to a sentinel. Only a few codes say something of
// what the token was asked: a PIN it refused ([ErrPINIncorrect]), a mechanism or key use it
// does not do ([ErrMechanism]), a ciphertext it cannot decrypt ([ErrDecrypt]). A few more say
// it is gone or lost its sessions and objects ([ErrTokenGone]: reconnect). Every other code,
// CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY, CKR_HOST_MEMORY and any a module
// may invent included, is the token failing ([ErrTokenFault]): never the request's fault.
func sentinelFor(rv pkcs11.Error) error {
	switch rv {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED:
		return ErrPINIncorrect
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		// Object and key handles go invalid when the token restarts under us.
		return ErrTokenGone
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ARGUMENTS_BAD,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_TYPE_INCONSISTENT:
		// SoftHSM 2.6 answers CKR_ARGUMENTS_BAD to OAEP with SHA-256.
		return ErrMechanism
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		return ErrDecrypt
	}
	return ErrTokenFault
}
