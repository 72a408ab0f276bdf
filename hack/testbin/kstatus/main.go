// Command kstatus prints Flux's view of one Kubernetes object: the status that kstatus
// (sigs.k8s.io/cli-utils/pkg/kstatus/status, which Flux's health checks use) computes for it.
//
//	kstatus OBJECT.(json|yaml)     (- reads standard input)
//
// Prints {"status": "Current|InProgress|Failed|Terminating|Unknown", "message": ...} as one JSON
// line. Exits 1 when the file is not a Kubernetes object.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus OBJECT.(json|yaml)   (- for standard input)")
		os.Exit(2)
	}
	res, err := compute(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}

func compute(path string) (*result, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	// JSON is YAML: one decoder reads both, with numbers as an unstructured object has them.
	asJSON, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s is neither JSON nor YAML: %w", path, err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(asJSON); err != nil {
		return nil, fmt.Errorf("%s is not a Kubernetes object: %w", path, err)
	}
	res, err := status.Compute(obj)
	if err != nil {
		return nil, err
	}
	return &result{Status: res.Status.String(), Message: res.Message}, nil
}
