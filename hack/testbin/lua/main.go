// Command argocd-lua-health runs an Argo CD resource health check (a health.lua) against one
// Kubernetes object the way Argo CD does: under gopher-lua (the interpreter Argo CD embeds, Lua 5.1
// semantics), with only the libraries Argo CD opens for a custom health check (package, base,
// table and a reduced os), a one-second time limit, the object in the global `obj` decoded like
// Argo CD decodes an unstructured object, and the returned table read as {status, message}.
//
//	argocd-lua-health HEALTH.lua OBJECT.json
//
// Prints {"status": ..., "message": ...} as one JSON line. A status Argo CD does not know becomes
// "Unknown" with Argo CD's message for it. Exits 1 when the script fails or returns no table.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The health statuses Argo CD accepts from a script.
var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua-health HEALTH.lua OBJECT.json")
		os.Exit(2)
	}
	result, err := run(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua-health:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(result)
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua-health:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}

func run(scriptPath, objectPath string) (*health, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(objectPath)
	if err != nil {
		return nil, err
	}
	// Integers as int64 and other numbers as float64, as in an unstructured object.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var object map[string]any
	if err := dec.Decode(&object); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %w", objectPath, err)
	}

	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openReducedOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, openReducedOs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(string(script)); err != nil {
		return nil, err
	}
	returned, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	status, err := stringField(returned, "status")
	if err != nil {
		return nil, err
	}
	message, err := stringField(returned, "message")
	if err != nil {
		return nil, err
	}
	if !validStatus[status] {
		return &health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return &health{Status: status, Message: message}, nil
}

// stringField reads a string field of the returned table; absent is "".
func stringField(t *lua.LTable, name string) (string, error) {
	switch v := t.RawGetString(name).(type) {
	case *lua.LNilType:
		return "", nil
	case lua.LString:
		return string(v), nil
	default:
		return "", fmt.Errorf("the returned %s is a %s, not a string", name, v.Type())
	}
}

// toLua converts a decoded JSON value to Lua values as Argo CD does for an unstructured object:
// maps become tables with string keys, lists become tables indexed from 1, numbers LNumber.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return lua.LNumber(i)
		}
		f, err := v.Float64()
		if err != nil {
			return lua.LNil
		}
		return lua.LNumber(f)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// openReducedOs opens an os library without anything that touches the file system, the
// environment or processes: os.time() and os.clock() only.
func openReducedOs(l *lua.LState) int {
	started := time.Now()
	mod := l.RegisterModule(lua.OsLibName, map[string]lua.LGFunction{
		"time": func(l *lua.LState) int {
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		},
		"clock": func(l *lua.LState) int {
			l.Push(lua.LNumber(time.Since(started).Seconds()))
			return 1
		},
	})
	l.Push(mod)
	return 1
}
