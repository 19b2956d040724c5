package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FieldError is an unknown field in the configuration file: where it is, and the valid
// names at that place.
type FieldError struct {
	// File is the configuration file.
	File string
	// Line is the 1-based line of the unknown field.
	Line int
	// Field is the unknown field with the path of its parents, e.g. enrollment.code_tll.
	Field string
	// Suggestion is the nearest valid name, when one is close enough.
	Suggestion string
	// Valid lists the valid names at the field's place.
	Valid []string
}

func (e *FieldError) Error() string {
	msg := fmt.Sprintf("%s: line %d: unknown field %s", e.File, e.Line, e.Field)
	switch {
	case e.Suggestion != "":
		msg += fmt.Sprintf("; did you mean %s?", e.Suggestion)
	case len(e.Valid) > 0:
		msg += "; valid fields here: " + strings.Join(e.Valid, ", ")
	}
	return msg
}

var unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type`)

// explainConfigError turns the YAML decoder's error for the file into one an operator reads:
// unknown fields become a FieldError; other messages lose Go's type names.
func explainConfigError(file string, data []byte, err error) error {
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// A field's own decoder (a duration, say) names the line: add the field.
		if sm := lineRE.FindStringSubmatch(err.Error()); sm != nil {
			line, _ := strconv.Atoi(sm[1])
			if path, ok := findValue(&root, line, nil); ok && len(path) > 0 {
				return fmt.Errorf("%s: line %d: field %s: %w", file, line, strings.Join(path, "."), &lineError{sm[2], err})
			}
		}
		return fmt.Errorf("%s: %w", file, err)
	}
	var msgs []string
	for _, m := range te.Errors {
		sm := unknownFieldRE.FindStringSubmatch(m)
		if sm == nil {
			msgs = append(msgs, explainTypeMismatch(&root, m))
			continue
		}
		line, _ := strconv.Atoi(sm[1])
		fe := &FieldError{File: file, Line: line, Field: sm[2]}
		if path, ok := findKey(&root, line, sm[2], nil); ok {
			fe.Field = strings.Join(append(path, sm[2]), ".")
			fe.Valid = fieldNames(reflect.TypeOf(Config{}), path)
			fe.Suggestion = nearest(sm[2], fe.Valid)
		}
		if len(te.Errors) == 1 {
			return fe
		}
		msgs = append(msgs, strings.TrimPrefix(fe.Error(), file+": "))
	}
	return fmt.Errorf("%s: %s", file, strings.Join(msgs, "; "))
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// lineError is a field decoder's error with its "line N: " prefix taken off (msg); Unwrap
// gives the decoder's own.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }
func (e *lineError) Unwrap() error { return e.err }

var typeMismatchRE = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")

// explainTypeMismatch words the decoder's "cannot unmarshal !!str `eight` into int" as
// "line 12: field http.login_failures_per_source must be a whole number, not the text eight":
// the field by its path in the file, the expected type in words. Other messages lose Go's
// type names only.
func explainTypeMismatch(root *yaml.Node, m string) string {
	sm := typeMismatchRE.FindStringSubmatch(m)
	if sm == nil {
		return stripGoTypes(m)
	}
	line, _ := strconv.Atoi(sm[1])
	got := map[string]string{"str": "the text", "int": "the number", "float": "the number", "bool": "the boolean",
		"seq": "a list", "map": "a mapping", "null": "nothing"}[sm[2]]
	if got == "" {
		got = "a value"
	}
	if sm[3] != "" {
		got += " " + sm[3]
	}
	field := "the value"
	if path, ok := findValue(root, line, nil); ok && len(path) > 0 {
		field = "field " + strings.Join(path, ".")
	}
	return fmt.Sprintf("line %d: %s must be %s, not %s", line, field, yamlKind(sm[4]), got)
}

// yamlKind names in words the YAML that decodes into the Go type named goType.
func yamlKind(goType string) string {
	switch {
	case goType == "string":
		return "text"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "int"):
		return "a whole number"
	case strings.HasPrefix(goType, "uint"):
		return "a whole number, 0 or more"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "time.Duration" || goType == "config.Duration":
		return "a duration such as 90s, 15m or 24h"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map[") || strings.Contains(goType, "."):
		return "a mapping of fields"
	}
	return "another kind of value"
}

// findValue finds the scalar or collection value that starts on line and returns the path of
// keys to it (list items by their key's name alone).
func findValue(n *yaml.Node, line int, path []string) ([]string, bool) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if c.Kind == yaml.ScalarNode && c.Line == line && n.Kind == yaml.SequenceNode {
				return path, true
			}
			if p, ok := findValue(c, line, path); ok {
				return p, true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := append(append([]string(nil), path...), k.Value)
			if v.Line == line && (v.Kind == yaml.ScalarNode || k.Line == line) {
				return p, true
			}
			if q, ok := findValue(v, line, p); ok {
				return q, true
			}
		}
	}
	return nil, false
}

var goTypeRE = regexp.MustCompile(` into (main|config|policy)\.\w+|struct \{[^}]*\}`)

func stripGoTypes(m string) string { return goTypeRE.ReplaceAllString(m, "") }

// findKey finds the mapping key named name on line and returns the names of its parents.
func findKey(n *yaml.Node, line int, name string, path []string) ([]string, bool) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if p, ok := findKey(c, line, name, path); ok {
				return p, true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Line == line && k.Value == name {
				return path, true
			}
			if p, ok := findKey(v, line, name, append(append([]string(nil), path...), k.Value)); ok {
				return p, true
			}
		}
	}
	return nil, false
}

// fieldNames returns the YAML names of the struct reached from t by path (slices are looked
// through), sorted.
func fieldNames(t reflect.Type, path []string) []string {
	for {
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		var names []string
		var next reflect.Type
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			names = append(names, name)
			if len(path) > 0 && name == path[0] {
				next = f.Type
			}
		}
		if len(path) == 0 {
			sort.Strings(names)
			return names
		}
		if next == nil {
			return nil
		}
		t, path = next, path[1:]
	}
}

// nearest returns the valid name closest to name by edit distance, when it is close enough to
// be what was meant.
func nearest(name string, valid []string) string {
	best, bestD := "", len(name)/2+2
	for _, v := range valid {
		if d := editDistance(name, v); d < bestD {
			best, bestD = v, d
		}
	}
	return best
}

// editDistance is the Damerau-Levenshtein distance (adjacent transpositions count as one edit).
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
