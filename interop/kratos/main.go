// The go-kratos peer: a kratos consumer without a sidecar, reading our etcd keys with kratos's
// own etcd registry (contrib/registry/etcd) and choosing with kratos's default selector.
//
//	peer --etcd 127.0.0.1:2379 --service orders [--namespace /microservices] [--picks 1000]
//	     [--interval 200ms]
//
// It watches SERVICE (registry.Watch) and prints every result of the watcher's Next():
//
//	{"event":"instances","t":MS,"instances":[{"id","endpoints","metadata"}...]}
//
// and hands the instances to the selector as kratos's HTTP client does (transport/http's
// resolver: one node per instance with an http:// endpoint, built by selector.NewNode, which
// reads metadata "weight"; an empty list is not applied, the old nodes are kept). The selector
// is the one kratos's clients install when none is set: wrr.NewBuilder() (weighted round robin
// over direct nodes, whose weight is that metadata weight, 100 without one). Every --interval it
// makes --picks picks and prints
//
//	{"event":"picks","t":MS,"shares":{ID: fraction},"weights":{ID: weight or null}}
//
// where weights are what kratos parsed from each node's metadata. Runs until SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	etcdregistry "github.com/go-kratos/kratos/contrib/registry/etcd/v2"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type instanceView struct {
	ID        string            `json:"id"`
	Endpoints []string          `json:"endpoints"`
	Metadata  map[string]string `json:"metadata"`
}

type instancesEvent struct {
	Event     string         `json:"event"`
	T         int64          `json:"t"`
	Instances []instanceView `json:"instances"`
}

type picksEvent struct {
	Event   string             `json:"event"`
	T       int64              `json:"t"`
	Shares  map[string]float64 `json:"shares"`
	Weights map[string]*int64  `json:"weights"`
}

type errorEvent struct {
	Event string `json:"event"`
	T     int64  `json:"t"`
	Error string `json:"error"`
}

var out = json.NewEncoder(os.Stdout)
var outMu sync.Mutex

func emit(event any) {
	outMu.Lock()
	defer outMu.Unlock()
	if err := out.Encode(event); err != nil {
		log.Fatalf("stdout: %v", err)
	}
}

func now() int64 { return time.Now().UnixMilli() }

// httpAddress is the host:port of an instance's first http:// endpoint, as kratos's HTTP
// resolver takes it (internal/endpoint.ParseEndpoint with scheme "http"), or "".
func httpAddress(endpoints []string) string {
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err == nil && u.Scheme == "http" {
			return u.Host
		}
	}
	return ""
}

// balancer is the selector with the instance id of each node's address.
type balancer struct {
	mu      sync.Mutex
	sel     selector.Selector
	ids     map[string]string // address -> instance id
	weights map[string]*int64 // instance id -> weight as kratos parsed it
}

// apply does what kratos's HTTP resolver's update does with a watcher's result.
func (b *balancer) apply(services []*registry.ServiceInstance) {
	nodes := make([]selector.Node, 0, len(services))
	ids := map[string]string{}
	weights := map[string]*int64{}
	for _, ins := range services {
		addr := httpAddress(ins.Endpoints)
		if addr == "" {
			continue
		}
		node := selector.NewNode("http", addr, ins)
		nodes = append(nodes, node)
		ids[addr] = ins.ID
		weights[ins.ID] = node.InitialWeight()
	}
	if len(nodes) == 0 {
		return // "Zero endpoint found, refused to write": the old nodes stay
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sel.Apply(nodes)
	b.ids, b.weights = ids, weights
}

func (b *balancer) picks(ctx context.Context, n int) *picksEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ids == nil {
		return nil
	}
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		node, done, err := b.sel.Select(ctx)
		if err != nil {
			emit(errorEvent{"error", now(), fmt.Sprintf("select: %v", err)})
			return nil
		}
		done(ctx, selector.DoneInfo{})
		counts[b.ids[node.Address()]]++
	}
	shares := map[string]float64{}
	for id, c := range counts {
		shares[id] = float64(c) / float64(n)
	}
	return &picksEvent{"picks", now(), shares, b.weights}
}

func main() {
	endpoint := flag.String("etcd", "127.0.0.1:2379", "etcd client endpoint host:port")
	service := flag.String("service", "", "the service to watch")
	namespace := flag.String("namespace", "/microservices", "kratos's etcd namespace (key prefix)")
	picks := flag.Int("picks", 1000, "picks per round (0: no picks)")
	interval := flag.Duration("interval", 200*time.Millisecond, "time between rounds of picks")
	flag.Parse()
	if *service == "" {
		log.Fatal("--service is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	client, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatalf("etcd client: %v", err)
	}
	defer client.Close()
	reg := etcdregistry.New(client, etcdregistry.Namespace(*namespace))
	watcher, err := reg.Watch(ctx, *service)
	if err != nil {
		log.Fatalf("watch: %v", err)
	}
	defer watcher.Stop()

	b := &balancer{sel: wrr.NewBuilder().Build()}
	if *picks > 0 {
		go func() {
			ticker := time.NewTicker(*interval)
			defer ticker.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-ticker.C:
					if event := b.picks(ctx, *picks); event != nil {
						emit(event)
					}
				}
			}
		}()
	}
	for {
		services, err := watcher.Next()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			emit(errorEvent{"error", now(), err.Error()})
			time.Sleep(time.Second) // as kratos's resolver does after an error
			continue
		}
		views := make([]instanceView, 0, len(services))
		for _, ins := range services {
			views = append(views, instanceView{ins.ID, ins.Endpoints, ins.Metadata})
		}
		emit(instancesEvent{"instances", now(), views})
		b.apply(services)
	}
}
