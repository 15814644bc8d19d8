// Command server is a containerd ttrpc server (github.com/containerd/ttrpc) with a test
// service, vaccel.test.Echo, that the Python ttrpc client is checked against.
//
// Usage: server SOCKET. It prints "ready" once it listens and serves until killed.
//
// Methods (request and reply payloads are raw bytes, not protobuf messages):
//
//	Echo      the request payload followed by the value of metadata key "echo-suffix"
//	Metadata  the request's metadata as JSON ({"key": ["value", ...]})
//	Fail      fails with status NOT_FOUND and the message FailMessage
//	Slow      sleeps for the seconds given as the payload (ASCII, default 5), ignoring the
//	          caller's deadline, then returns "slow done"
//	Deadline  JSON {"has_deadline": bool, "remaining_ms": float}: what timeout_nano gave
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FailMessage is the message of the NOT_FOUND status Fail returns.
const FailMessage = "vaccel-test: the thing you asked for is not here"

// raw is a message whose wire form is its bytes as they are; gogo/protobuf's codec (which
// ttrpc uses) calls Marshal and Unmarshal on types that have them.
type raw struct{ b []byte }

func (m *raw) Reset()                   { m.b = nil }
func (m *raw) String() string           { return fmt.Sprintf("raw(%d bytes)", len(m.b)) }
func (*raw) ProtoMessage()              {}
func (m *raw) Marshal() ([]byte, error) { return m.b, nil }
func (m *raw) Unmarshal(b []byte) error { m.b = append([]byte(nil), b...); return nil }

// method adapts a func over raw payloads to a ttrpc.Method.
func method(fn func(ctx context.Context, payload []byte) ([]byte, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
		var req raw
		if err := unmarshal(&req); err != nil {
			return nil, err
		}
		out, err := fn(ctx, req.b)
		if err != nil {
			return nil, err
		}
		return &raw{b: out}, nil
	}
}

func echo(ctx context.Context, payload []byte) ([]byte, error) {
	out := append([]byte(nil), payload...)
	if md, ok := ttrpc.GetMetadata(ctx); ok {
		if values, ok := md.Get("echo-suffix"); ok {
			out = append(out, values[0]...)
		}
	}
	return out, nil
}

func metadata(ctx context.Context, _ []byte) ([]byte, error) {
	md, ok := ttrpc.GetMetadata(ctx)
	if !ok {
		md = ttrpc.MD{}
	}
	return json.Marshal(md)
}

func fail(context.Context, []byte) ([]byte, error) {
	return nil, status.Error(codes.NotFound, FailMessage)
}

func slow(_ context.Context, payload []byte) ([]byte, error) {
	seconds := 5.0
	if len(payload) > 0 {
		parsed, err := strconv.ParseFloat(string(payload), 64)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "Slow: bad seconds %q", payload)
		}
		seconds = parsed
	}
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	return []byte("slow done"), nil
}

func deadline(ctx context.Context, _ []byte) ([]byte, error) {
	report := struct {
		HasDeadline bool    `json:"has_deadline"`
		RemainingMs float64 `json:"remaining_ms"`
	}{}
	if dl, ok := ctx.Deadline(); ok {
		report.HasDeadline = true
		report.RemainingMs = float64(time.Until(dl)) / float64(time.Millisecond)
	}
	return json.Marshal(report)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: server SOCKET")
		os.Exit(2)
	}
	path := os.Args[1]
	_ = os.Remove(path)
	listener, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttrpc.NewServer:", err)
		os.Exit(1)
	}
	server.Register("vaccel.test.Echo", map[string]ttrpc.Method{
		"Echo":     method(echo),
		"Metadata": method(metadata),
		"Fail":     method(fail),
		"Slow":     method(slow),
		"Deadline": method(deadline),
	})
	fmt.Println("ready")
	if err := server.Serve(context.Background(), listener); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
