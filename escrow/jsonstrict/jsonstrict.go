// Package jsonstrict holds what encoding/json leaves to its callers when they read JSON from
// clients strictly.
package jsonstrict

import (
	"bytes"
	"encoding/json"
	"strings"
)

// DuplicateKey returns the first key found twice in one object of the JSON text data,
// compared as encoding/json matches keys to fields (without regard to case), or "" when there
// is none or data is not JSON (the decoder then says what is wrong).
func DuplicateKey(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	// Per open object or array: the keys seen (nil for an array) and whether the next string
	// is a key.
	type level struct {
		keys      map[string]bool
		expectKey bool
	}
	var stack []level
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		top := len(stack) - 1
		if top >= 0 && stack[top].keys != nil {
			if stack[top].expectKey {
				if k, ok := tok.(string); ok {
					folded := strings.ToLower(strings.ToUpper(k))
					if stack[top].keys[folded] {
						return k
					}
					stack[top].keys[folded] = true
					stack[top].expectKey = false
					continue
				}
			} else {
				stack[top].expectKey = true // this token is a value (or opens one)
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, level{keys: map[string]bool{}, expectKey: true})
		case json.Delim('['):
			stack = append(stack, level{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return ""
			}
		}
	}
}
