// The grpc-go peer: a grpc-go server and a grpc-go client, both on grpc-go's defaults, for the
// HTTP/2 path through our sidecars. No protoc: the messages are protobuf's own wrapper types
// (wrapperspb.StringValue) under grpc-go's default "proto" codec, the service described by hand.
//
//	peer server --port N --name NAME [--host 127.0.0.1]
//	peer client --target HOST:PORT [--concurrency 4] [--duration 30s] [--pause 10ms]
//	            [--sleep-ms 0] [--timeout 10s]
//	peer stream --target HOST:PORT [--count 20] [--interval 100ms] [--timeout 60s]
//
// Service interop.Echo: Unary answers the server's NAME (and sends header metadata
// instance: NAME); the request's value, if a number, is milliseconds to wait first. Stream
// takes "COUNT INTERVAL_MS" and sends COUNT messages "NAME I", INTERVAL_MS apart. The server also
// has grpc-go's standard health service (grpc.health.v1), SERVING; on SIGTERM it sets
// NOT_SERVING, calls GracefulStop (waits for the calls in flight) and exits 0.
//
// Events (stdout, one JSON object a line; grpc-go's own log goes to stderr):
//
//	server: {"event":"listening"}, {"event":"sigterm","inflight":N},
//	        {"event":"stopped","graceful_ms":MS,"served":N}
//	client: {"event":"call","t":MS,"code":"OK","instance":NAME,"error":"","attempts":N,
//	         "transparent_retries":N,"ms":MS} per call, {"event":"done","calls":N} at the end
//	stream: {"event":"message","t":MS,"index":I,"instance":NAME} per message, then
//	        {"event":"stream_end","t":MS,"code":"OK","messages":N,"error":""}
//	client and stream: {"event":"conn","t":MS,"state":"begin"|"end"} per HTTP/2 connection
//
// attempts and transparent_retries come from a stats.Handler (stats.Begin per attempt, with
// IsTransparentRetryAttempt): how often grpc-go retried a call on its own (gRPC's A6: a stream
// refused or above a GOAWAY's last stream id was not processed, retried once on its own).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var outMu sync.Mutex

// emit prints one event; keys in the order given, "event" first.
func emit(kind string, fields ...any) {
	var b strings.Builder
	key, _ := json.Marshal(kind)
	b.WriteString(`{"event":` + string(key))
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := json.Marshal(fields[i])
		v, _ := json.Marshal(fields[i+1])
		b.WriteString("," + string(k) + ":" + string(v))
	}
	b.WriteString("}\n")
	outMu.Lock()
	defer outMu.Unlock()
	if _, err := os.Stdout.WriteString(b.String()); err != nil {
		log.Fatalf("stdout: %v", err)
	}
}

func now() int64 { return time.Now().UnixMilli() }

// -- server ---------------------------------------------------------------------------------

type echo struct {
	name     string
	inflight atomic.Int64
	served   atomic.Int64
}

func (e *echo) unary(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	e.inflight.Add(1)
	defer func() { e.inflight.Add(-1); e.served.Add(1) }()
	if ms, err := strconv.Atoi(in.GetValue()); err == nil && ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs("instance", e.name)); err != nil {
		return nil, err
	}
	return wrapperspb.String(e.name), nil
}

func (e *echo) stream(in *wrapperspb.StringValue, s grpc.ServerStream) error {
	e.inflight.Add(1)
	defer func() { e.inflight.Add(-1); e.served.Add(1) }()
	var count, intervalMs int
	if _, err := fmt.Sscan(in.GetValue(), &count, &intervalMs); err != nil {
		return status.Errorf(codes.InvalidArgument, "want \"COUNT INTERVAL_MS\": %v", err)
	}
	if err := s.SendHeader(metadata.Pairs("instance", e.name)); err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		if i > 0 {
			select {
			case <-time.After(time.Duration(intervalMs) * time.Millisecond):
			case <-s.Context().Done():
				return status.FromContextError(s.Context().Err()).Err()
			}
		}
		if err := s.SendMsg(wrapperspb.String(fmt.Sprintf("%s %d", e.name, i))); err != nil {
			return err
		}
	}
	return nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "interop.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*echo).unary(ctx, in)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		Handler: func(srv any, s grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := s.RecvMsg(in); err != nil {
				return err
			}
			return srv.(*echo).stream(in, s)
		},
	}},
}

func serve(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 0, "port to listen on")
	name := fs.String("name", "grpc-go", "the instance's name, in every answer")
	_ = fs.Parse(args)
	lis, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := grpc.NewServer()
	e := &echo{name: *name}
	server.RegisterService(&echoDesc, e)
	healthServer := health.NewServer() // SERVING for "" from the start
	healthpb.RegisterHealthServer(server, healthServer)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	stopped := make(chan struct{})
	go func() {
		<-signals
		emit("sigterm", "t", now(), "inflight", e.inflight.Load())
		start := time.Now()
		healthServer.Shutdown()
		server.GracefulStop()
		emit("stopped", "t", now(), "graceful_ms", time.Since(start).Milliseconds(), "served", e.served.Load())
		close(stopped)
	}()
	emit("listening", "t", now(), "address", lis.Addr().String(), "name", *name)
	if err := server.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
	<-stopped
}

// -- client ---------------------------------------------------------------------------------

type attemptsKey struct{}

type attempts struct{ total, transparent atomic.Int64 }

// counter is a stats.Handler: it counts each call's attempts (stats.Begin is one per attempt)
// and reports the channel's HTTP/2 connections as they open and close.
type counter struct{}

func (counter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (counter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if begin, ok := s.(*stats.Begin); ok {
		if a, ok := ctx.Value(attemptsKey{}).(*attempts); ok {
			a.total.Add(1)
			if begin.IsTransparentRetryAttempt {
				a.transparent.Add(1)
			}
		}
	}
}

func (counter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (counter) HandleConn(_ context.Context, s stats.ConnStats) {
	switch s.(type) {
	case *stats.ConnBegin:
		emit("conn", "t", now(), "state", "begin")
	case *stats.ConnEnd:
		emit("conn", "t", now(), "state", "end")
	}
}

// dial opens a channel with grpc-go's defaults (no service config, so no retry policy; the
// passthrough resolver for a HOST:PORT target, pick_first), plain text.
func dial(target string) *grpc.ClientConn {
	conn, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStatsHandler(counter{}))
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	return conn
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return status.Convert(err).Message()
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT to call")
	concurrency := fs.Int("concurrency", 4, "goroutines calling at once")
	duration := fs.Duration("duration", 30*time.Second, "how long to call (or until SIGTERM)")
	pause := fs.Duration("pause", 10*time.Millisecond, "each goroutine's pause between calls")
	sleepMs := fs.Int("sleep-ms", 0, "the server waits this long in each call")
	timeout := fs.Duration("timeout", 10*time.Second, "each call's deadline")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	conn := dial(*target)
	defer conn.Close()
	emit("started", "t", now(), "target", *target)
	var calls atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < *concurrency; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				a := &attempts{}
				callCtx, callCancel := context.WithTimeout(context.WithValue(context.Background(), attemptsKey{}, a), *timeout)
				start := time.Now()
				reply := new(wrapperspb.StringValue)
				err := conn.Invoke(callCtx, "/interop.Echo/Unary", wrapperspb.String(strconv.Itoa(*sleepMs)), reply)
				callCancel()
				calls.Add(1)
				emit("call", "t", now(), "code", status.Code(err).String(), "instance", reply.GetValue(),
					"error", errorText(err), "attempts", a.total.Load(), "transparent_retries", a.transparent.Load(),
					"ms", time.Since(start).Milliseconds())
				select {
				case <-ctx.Done():
				case <-time.After(*pause):
				}
			}
		}()
	}
	wg.Wait()
	emit("done", "t", now(), "calls", calls.Load())
}

func stream(args []string) {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT to call")
	count := fs.Int("count", 20, "messages to ask for")
	interval := fs.Duration("interval", 100*time.Millisecond, "the server's pause between messages")
	timeout := fs.Duration("timeout", 60*time.Second, "the call's deadline")
	_ = fs.Parse(args)
	conn := dial(*target)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: "Stream", ServerStreams: true}
	messages := 0
	finish := func(err error) {
		emit("stream_end", "t", now(), "code", status.Code(err).String(), "messages", messages, "error", errorText(err))
	}
	s, err := conn.NewStream(ctx, desc, "/interop.Echo/Stream")
	if err == nil {
		err = s.SendMsg(wrapperspb.String(fmt.Sprintf("%d %d", *count, interval.Milliseconds())))
	}
	if err == nil {
		err = s.CloseSend()
	}
	if err != nil {
		finish(err)
		return
	}
	for {
		msg := new(wrapperspb.StringValue)
		err := s.RecvMsg(msg)
		if errors.Is(err, io.EOF) {
			finish(nil)
			return
		}
		if err != nil {
			finish(err)
			return
		}
		instance, _, _ := strings.Cut(msg.GetValue(), " ")
		emit("message", "t", now(), "index", messages, "instance", instance)
		messages++
	}
}

func main() {
	log.SetOutput(os.Stderr)
	if len(os.Args) < 2 {
		log.Fatal("usage: peer server|client|stream [flags]")
	}
	switch os.Args[1] {
	case "server":
		serve(os.Args[2:])
	case "client":
		client(os.Args[2:])
	case "stream":
		stream(os.Args[2:])
	default:
		log.Fatalf("unknown mode %q: server, client or stream", os.Args[1])
	}
}
