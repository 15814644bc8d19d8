// Command client drives a vAccel agent over ttrpc with containerd's own client library
// (github.com/containerd/ttrpc) and prints what it saw as one JSON object on stdout.
//
// Usage: client SOCKET. It exits non-zero, with the reason on stderr, when a call that should
// succeed fails or a reply is not what vaccel_core/proto/agent.proto says.
//
// Messages are Go structs with protobuf struct tags, encoded by gogo/protobuf's reflection
// codec (the one ttrpc uses), following agent.proto and grpc/health/v1/health.proto.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/proto"
	"google.golang.org/grpc/status"
)

const (
	agentService  = "vaccel.agent.v1.Agent"
	healthService = "grpc.health.v1.Health"
	concurrent    = 16
)

// grpc.health.v1: HealthCheckRequest{string service = 1}, HealthCheckResponse{ServingStatus
// status = 1} with SERVING = 1.
type healthCheckRequest struct {
	Service string `protobuf:"bytes,1,opt,name=service,proto3"`
}

type healthCheckResponse struct {
	Status int32 `protobuf:"varint,1,opt,name=status,proto3"`
}

// vaccel.agent.v1 (agent.proto).
type statusRequest struct{}

type statusResponse struct {
	Version  string   `protobuf:"bytes,1,opt,name=version,proto3"`
	Sessions uint64   `protobuf:"varint,2,opt,name=sessions,proto3"`
	Backends []string `protobuf:"bytes,7,rep,name=backends,proto3"`
}

type createSessionRequest struct {
	Flags uint32 `protobuf:"varint,1,opt,name=flags,proto3"`
}

type createSessionResponse struct {
	SessionID uint64   `protobuf:"varint,1,opt,name=session_id,proto3"`
	Backends  []string `protobuf:"bytes,2,rep,name=backends,proto3"`
}

type destroySessionRequest struct {
	SessionID uint64 `protobuf:"varint,1,opt,name=session_id,proto3"`
}

type destroySessionResponse struct{}

type noopArgs struct{}

type noopResult struct{}

// opRequest carries the noop case of the args oneof: on the wire a oneof member is the same
// as a plain message field with its number (16 for noop).
type opRequest struct {
	SessionID uint64    `protobuf:"varint,1,opt,name=session_id,proto3"`
	Op        string    `protobuf:"bytes,2,opt,name=op,proto3"`
	Noop      *noopArgs `protobuf:"bytes,16,opt,name=noop,proto3"`
}

type opResponse struct {
	Op   string      `protobuf:"bytes,1,opt,name=op,proto3"`
	Noop *noopResult `protobuf:"bytes,16,opt,name=noop,proto3"`
}

func (m *healthCheckRequest) Reset()             { *m = healthCheckRequest{} }
func (m *healthCheckResponse) Reset()            { *m = healthCheckResponse{} }
func (m *statusRequest) Reset()                  { *m = statusRequest{} }
func (m *statusResponse) Reset()                 { *m = statusResponse{} }
func (m *createSessionRequest) Reset()           { *m = createSessionRequest{} }
func (m *createSessionResponse) Reset()          { *m = createSessionResponse{} }
func (m *destroySessionRequest) Reset()          { *m = destroySessionRequest{} }
func (m *destroySessionResponse) Reset()         { *m = destroySessionResponse{} }
func (m *noopArgs) Reset()                       { *m = noopArgs{} }
func (m *noopResult) Reset()                     { *m = noopResult{} }
func (m *opRequest) Reset()                      { *m = opRequest{} }
func (m *opResponse) Reset()                     { *m = opResponse{} }
func (m *healthCheckRequest) String() string     { return proto.CompactTextString(m) }
func (m *healthCheckResponse) String() string    { return proto.CompactTextString(m) }
func (m *statusRequest) String() string          { return proto.CompactTextString(m) }
func (m *statusResponse) String() string         { return proto.CompactTextString(m) }
func (m *createSessionRequest) String() string   { return proto.CompactTextString(m) }
func (m *createSessionResponse) String() string  { return proto.CompactTextString(m) }
func (m *destroySessionRequest) String() string  { return proto.CompactTextString(m) }
func (m *destroySessionResponse) String() string { return proto.CompactTextString(m) }
func (m *noopArgs) String() string               { return proto.CompactTextString(m) }
func (m *noopResult) String() string             { return proto.CompactTextString(m) }
func (m *opRequest) String() string              { return proto.CompactTextString(m) }
func (m *opResponse) String() string             { return proto.CompactTextString(m) }
func (*healthCheckRequest) ProtoMessage()        {}
func (*healthCheckResponse) ProtoMessage()       {}
func (*statusRequest) ProtoMessage()             {}
func (*statusResponse) ProtoMessage()            {}
func (*createSessionRequest) ProtoMessage()      {}
func (*createSessionResponse) ProtoMessage()     {}
func (*destroySessionRequest) ProtoMessage()     {}
func (*destroySessionResponse) ProtoMessage()    {}
func (*noopArgs) ProtoMessage()                  {}
func (*noopResult) ProtoMessage()                {}
func (*opRequest) ProtoMessage()                 {}
func (*opResponse) ProtoMessage()                {}

// callStatus is a failed (or successful) call's gRPC status as JSON.
type callStatus struct {
	Code    int    `json:"code"`
	Name    string `json:"name"`
	Message string `json:"message"`
}

func statusOf(err error) callStatus {
	st, _ := status.FromError(err) // non-status errors come back as codes.Unknown
	return callStatus{Code: int(st.Code()), Name: st.Code().String(), Message: st.Message()}
}

// report is what the client prints.
type report struct {
	Health           map[string]int32 `json:"health"`
	HealthUnknown    callStatus       `json:"health_unknown_service"`
	StatusVersion    string           `json:"status_version"`
	SessionID        uint64           `json:"session_id"`
	SessionBackends  []string         `json:"session_backends"`
	SessionsOpen     uint64           `json:"sessions_after_create"`
	RunOp            string           `json:"run_op"`
	RunHasNoop       bool             `json:"run_has_noop_result"`
	ConcurrentRuns   int              `json:"concurrent_runs_ok"`
	SessionsDestroy  uint64           `json:"sessions_after_destroy"`
	RunDestroyed     callStatus       `json:"run_on_destroyed_session"`
	UnknownMethod    callStatus       `json:"unknown_method"`
	UnknownService   callStatus       `json:"unknown_service"`
	LeftOpenSession  uint64           `json:"left_open_session_id"`
	LeftOpenSessions uint64           `json:"sessions_left_open"`
}

type client struct{ c *ttrpc.Client }

// call makes one call with a deadline (sent as timeout_nano) and a metadata pair.
func (cl client) call(service, method string, req, resp interface{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{"x-interop-client": {"containerd-ttrpc-go"}})
	return cl.c.Call(ctx, service, method, req, resp)
}

func (cl client) agent(method string, req, resp interface{}) error {
	return cl.call(agentService, method, req, resp)
}

func (cl client) sessions() (uint64, error) {
	var st statusResponse
	err := cl.agent("GetStatus", &statusRequest{}, &st)
	return st.Sessions, err
}

func (cl client) noop(session uint64) (opResponse, error) {
	var resp opResponse
	err := cl.agent("Run", &opRequest{SessionID: session, Op: "noop", Noop: &noopArgs{}}, &resp)
	return resp, err
}

func run(cl client) (*report, error) {
	r := &report{Health: map[string]int32{}}
	for _, name := range []string{"", agentService} {
		var resp healthCheckResponse
		if err := cl.call(healthService, "Check", &healthCheckRequest{Service: name}, &resp); err != nil {
			return nil, fmt.Errorf("Health/Check(%q): %w", name, err)
		}
		r.Health[name] = resp.Status
	}
	var ignored healthCheckResponse
	r.HealthUnknown = statusOf(cl.call(healthService, "Check",
		&healthCheckRequest{Service: "no.such.Service"}, &ignored))

	var st statusResponse
	if err := cl.agent("GetStatus", &statusRequest{}, &st); err != nil {
		return nil, fmt.Errorf("GetStatus: %w", err)
	}
	r.StatusVersion = st.Version

	var created createSessionResponse
	if err := cl.agent("CreateSession", &createSessionRequest{}, &created); err != nil {
		return nil, fmt.Errorf("CreateSession: %w", err)
	}
	r.SessionID, r.SessionBackends = created.SessionID, created.Backends
	var err error
	if r.SessionsOpen, err = cl.sessions(); err != nil {
		return nil, fmt.Errorf("GetStatus: %w", err)
	}

	resp, err := cl.noop(created.SessionID)
	if err != nil {
		return nil, fmt.Errorf("Run noop: %w", err)
	}
	r.RunOp, r.RunHasNoop = resp.Op, resp.Noop != nil

	errs := make(chan error, concurrent)
	var wg sync.WaitGroup
	for i := 0; i < concurrent; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := cl.noop(created.SessionID)
			if err == nil && (resp.Op != "noop" || resp.Noop == nil) {
				err = fmt.Errorf("unexpected reply %v", &resp)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return nil, fmt.Errorf("concurrent Run noop: %w", err)
		}
		r.ConcurrentRuns++
	}

	var destroyed destroySessionResponse
	if err := cl.agent("DestroySession", &destroySessionRequest{SessionID: created.SessionID}, &destroyed); err != nil {
		return nil, fmt.Errorf("DestroySession: %w", err)
	}
	if r.SessionsDestroy, err = cl.sessions(); err != nil {
		return nil, fmt.Errorf("GetStatus: %w", err)
	}
	_, err = cl.noop(created.SessionID)
	r.RunDestroyed = statusOf(err)

	r.UnknownMethod = statusOf(cl.agent("NoSuchMethod", &statusRequest{}, &st))
	r.UnknownService = statusOf(cl.call("no.such.Service", "Method", &statusRequest{}, &st))

	// A session left open: the agent must release it when this connection closes.
	var open createSessionResponse
	if err := cl.agent("CreateSession", &createSessionRequest{}, &open); err != nil {
		return nil, fmt.Errorf("CreateSession: %w", err)
	}
	r.LeftOpenSession = open.SessionID
	if r.LeftOpenSessions, err = cl.sessions(); err != nil {
		return nil, fmt.Errorf("GetStatus: %w", err)
	}
	return r, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: client SOCKET")
		os.Exit(2)
	}
	conn, err := net.DialTimeout("unix", os.Args[1], 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	cl := client{c: ttrpc.NewClient(conn)}
	r, err := run(cl)
	cl.c.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "json:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
