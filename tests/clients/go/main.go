// kgoprobe drives franz-go (kgo and kadm) against a Kafka-protocol broker for the Python tests in
// tests/kafka_differential/test_go_client.py. Each subcommand prints one JSON object per line on
// stdout; a failure that stops the whole command is printed as {"fatal": "..."} and exits 2.
//
// Errors a broker answers for one topic, partition or group are printed by their Kafka name
// (TOPIC_ALREADY_EXISTS, ...), as kerr knows them; any other error is printed as its text.
//
// Usage: kgoprobe SUBCOMMAND -brokers HOST:PORT [-timeout D] [-max-version API=V]... [security] [flags] [args]
//
// Security flags, taken by every subcommand (none: PLAINTEXT):
//
//	-sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 -sasl-user U -sasl-password P
//	-tls-ca FILE    TLS to the brokers, trusting the PEM CA certificates in FILE
//
//	produce         -topic T [-manual-partition] [-compression C]   records as JSON lines on stdin
//	consume         -topic T -count N     [-group G] [-describe]
//	create-topics   -partitions P -replication-factor R [-config k=v]... TOPIC...
//	list-offsets    -mode start|end|after-milli [-milli MS] TOPIC...
//	fetch-offsets   -group G
//	describe-groups GROUP...
//	delete-records  TOPIC:PARTITION:OFFSET...
//	metadata        [-all] [TOPIC...]
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

var out = json.NewEncoder(os.Stdout)

func emit(v any) {
	if err := out.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "kgoprobe: writing stdout:", err)
		os.Exit(3)
	}
}

func fatal(format string, args ...any) {
	emit(map[string]any{"fatal": fmt.Sprintf(format, args...)})
	os.Exit(2)
}

// errName is a broker error's Kafka name, another error's text, or nil.
func errName(err error) any {
	if err == nil {
		return nil
	}
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Message
	}
	return err.Error()
}

// shardErrors prints {"shard_error": name} per failed piece of a request kadm split by broker,
// and whether err was only that (the pieces that succeeded are still in the response).
func shardErrors(err error) bool {
	var se *kadm.ShardErrors
	if !errors.As(err, &se) {
		return false
	}
	for _, e := range se.Errs {
		emit(map[string]any{"shard_error": errName(e.Err), "broker": e.Broker.NodeID})
	}
	return true
}

// coordinatorPending is whether err means the group coordinator is not ready yet, as Kafka
// answers while it creates __consumer_offsets for the first group: clients retry these.
func coordinatorPending(err error) bool {
	return errors.Is(err, kerr.CoordinatorNotAvailable) ||
		errors.Is(err, kerr.CoordinatorLoadInProgress) || errors.Is(err, kerr.NotCoordinator)
}

// untilCoordinator calls fn again while it fails for a coordinator that is not ready, until ctx
// ends.
func untilCoordinator(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if !coordinatorPending(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// describeGroupsReady is kadm's DescribeGroups, retried while a group's coordinator is not ready.
func describeGroupsReady(ctx context.Context, adm *kadm.Client, groups ...string) (
	kadm.DescribedGroups, error) {
	var described kadm.DescribedGroups
	err := untilCoordinator(ctx, func() error {
		var err error
		described, err = adm.DescribeGroups(ctx, groups...)
		if err != nil {
			return err
		}
		for _, g := range described {
			if coordinatorPending(g.Err) {
				return g.Err
			}
		}
		return nil
	})
	if coordinatorPending(err) && described != nil {
		err = nil // the deadline passed: print the groups' own errors
	}
	return described, err
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type common struct {
	fs          *flag.FlagSet
	brokers     *string
	timeout     *time.Duration
	maxVersions *multiFlag
	saslMech    *string
	saslUser    *string
	saslPass    *string
	tlsCA       *string
}

func newCommon(name string) common {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	c := common{
		fs:          fs,
		brokers:     fs.String("brokers", "127.0.0.1:9092", "bootstrap servers, comma separated"),
		timeout:     fs.Duration("timeout", 30*time.Second, "deadline of the whole command"),
		maxVersions: &multiFlag{},
		saslMech:    fs.String("sasl-mechanism", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; none when empty"),
		saslUser:    fs.String("sasl-user", "", "SASL user name"),
		saslPass:    fs.String("sasl-password", "", "SASL password"),
		tlsCA:       fs.String("tls-ca", "", "PEM file of the CA certificates to trust; TLS when given"),
	}
	fs.Var(c.maxVersions, "max-version",
		"API=VERSION, the highest version of that API (by its Kafka name) to use (repeatable)")
	return c
}

// apiKey is the key of the API Kafka names `name` (DescribeGroups, ListOffsets, ...).
func apiKey(name string) int16 {
	for key := int16(0); key < 1000; key++ {
		if kmsg.NameForKey(key) == name {
			return key
		}
	}
	fatal("-max-version: no API is named %q", name)
	return -1
}

func (c common) parse(args []string) (context.Context, context.CancelFunc) {
	if err := c.fs.Parse(args); err != nil {
		fatal("%v", err)
	}
	return context.WithTimeout(context.Background(), *c.timeout)
}

func (c common) client(opts ...kgo.Opt) *kgo.Client {
	base := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(*c.brokers, ",")...),
		kgo.ClientID("kgoprobe"),
	}
	if len(*c.maxVersions) > 0 {
		versions := kversion.Stable()
		for _, pin := range *c.maxVersions {
			name, v, ok := strings.Cut(pin, "=")
			version, err := strconv.ParseInt(v, 10, 16)
			if !ok || err != nil {
				fatal("-max-version %q: expected API=VERSION", pin)
			}
			versions.SetMaxKeyVersion(apiKey(name), int16(version))
		}
		base = append(base, kgo.MaxVersions(versions))
	}
	base = append(base, c.security()...)
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		fatal("new client: %v", err)
	}
	return cl
}

// security is the client options of the -sasl-* and -tls-ca flags.
func (c common) security() []kgo.Opt {
	var opts []kgo.Opt
	if *c.saslMech != "" {
		var mech sasl.Mechanism
		switch strings.ToUpper(*c.saslMech) {
		case "PLAIN":
			mech = plain.Auth{User: *c.saslUser, Pass: *c.saslPass}.AsMechanism()
		case "SCRAM-SHA-256":
			mech = scram.Auth{User: *c.saslUser, Pass: *c.saslPass}.AsSha256Mechanism()
		case "SCRAM-SHA-512":
			mech = scram.Auth{User: *c.saslUser, Pass: *c.saslPass}.AsSha512Mechanism()
		default:
			fatal("-sasl-mechanism %q: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", *c.saslMech)
		}
		opts = append(opts, kgo.SASL(mech))
	}
	if *c.tlsCA != "" {
		pem, err := os.ReadFile(*c.tlsCA)
		if err != nil {
			fatal("-tls-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fatal("-tls-ca %s: no PEM certificate in it", *c.tlsCA)
		}
		// franz-go sets ServerName to each broker's host when it is empty.
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	return opts
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kgoprobe produce|consume|create-topics|list-offsets|"+
			"fetch-offsets|describe-groups|delete-records|metadata -brokers HOST:PORT ...")
		os.Exit(64)
	}
	commands := map[string]func([]string){
		"produce":         produce,
		"consume":         consume,
		"create-topics":   createTopics,
		"list-offsets":    listOffsets,
		"fetch-offsets":   fetchOffsets,
		"describe-groups": describeGroups,
		"delete-records":  deleteRecords,
		"metadata":        metadata,
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "kgoprobe: unknown subcommand %q\n", os.Args[1])
		os.Exit(64)
	}
	run(os.Args[2:])
}

// inRecord is one record to produce, as a JSON line on stdin. A missing key or value is null.
type inRecord struct {
	Key       *string     `json:"key"`
	Value     *string     `json:"value"`
	Headers   [][2]string `json:"headers"`
	Timestamp *int64      `json:"timestamp"` // milliseconds; the client's clock when missing
	Partition *int32      `json:"partition"` // only with -manual-partition
}

func strPtrBytes(s *string) []byte {
	if s == nil {
		return nil
	}
	return []byte(*s)
}

// produce sends the records on stdin with franz-go's defaults (acks=all, idempotent) and prints,
// per record in input order, {"index", "topic", "partition", "offset", "timestamp", "error"}.
func produce(args []string) {
	c := newCommon("produce")
	topic := c.fs.String("topic", "", "topic to produce to")
	manual := c.fs.Bool("manual-partition", false, "use each record's partition field")
	compression := c.fs.String("compression", "snappy",
		"batch codec: none, gzip, snappy, lz4 or zstd (franz-go's default: snappy)")
	ctx, cancel := c.parse(args)
	defer cancel()
	if *topic == "" {
		fatal("-topic is required")
	}
	var records []*kgo.Record
	dec := json.NewDecoder(os.Stdin)
	for {
		var in inRecord
		if err := dec.Decode(&in); err == io.EOF {
			break
		} else if err != nil {
			fatal("stdin record %d: %v", len(records), err)
		}
		r := &kgo.Record{Topic: *topic, Key: strPtrBytes(in.Key), Value: strPtrBytes(in.Value)}
		for _, h := range in.Headers {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: h[0], Value: []byte(h[1])})
		}
		if in.Timestamp != nil {
			r.Timestamp = time.UnixMilli(*in.Timestamp)
		}
		if in.Partition != nil {
			r.Partition = *in.Partition
		}
		records = append(records, r)
	}
	codecs := map[string]kgo.CompressionCodec{"none": kgo.NoCompression(),
		"gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
		"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression()}
	codec, ok := codecs[*compression]
	if !ok {
		fatal("-compression %q: expected none, gzip, snappy, lz4 or zstd", *compression)
	}
	// A batch goes out compressed only when that makes it smaller.
	opts := []kgo.Opt{kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerBatchCompression(codec)}
	if *manual {
		opts = append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	}
	cl := c.client(opts...)
	defer cl.Close()
	for i, res := range cl.ProduceSync(ctx, records...) {
		r := res.Record
		line := map[string]any{"index": i, "topic": r.Topic, "partition": r.Partition,
			"offset": r.Offset, "timestamp": r.Timestamp.UnixMilli(), "error": errName(res.Err)}
		if res.Err != nil {
			line["offset"] = nil
		}
		emit(line)
	}
}

func headersJSON(hs []kgo.RecordHeader) [][2]string {
	list := make([][2]string, 0, len(hs))
	for _, h := range hs {
		list = append(list, [2]string{h.Key, string(h.Value)})
	}
	return list
}

func bytesJSON(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// consume reads -topic from its start until -count records came, in the consumer group -group
// (none when empty), commits what it read, and prints one line per record, then
// {"committed": true} (or {"commit_error": ...}), then the group as DescribeGroups shows it while
// this member is in it when -describe, then {"closed": true} once it left the group.
func consume(args []string) {
	c := newCommon("consume")
	topic := c.fs.String("topic", "", "topic to consume")
	group := c.fs.String("group", "", "consumer group; none when empty")
	count := c.fs.Int("count", 0, "records to read before stopping")
	describe := c.fs.Bool("describe", false, "describe the group before leaving it")
	ctx, cancel := c.parse(args)
	defer cancel()
	if *topic == "" {
		fatal("-topic is required")
	}
	opts := []kgo.Opt{
		kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500 * time.Millisecond),
	}
	if *group != "" {
		opts = append(opts, kgo.ConsumerGroup(*group), kgo.DisableAutoCommit())
	}
	cl := c.client(opts...)
	seen := 0
	for seen < *count {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			cl.Close()
			fatal("read %d of %d records before the deadline", seen, *count)
		}
		for _, fe := range fetches.Errors() {
			emit(map[string]any{"fetch_error": errName(fe.Err), "topic": fe.Topic,
				"partition": fe.Partition})
		}
		fetches.EachRecord(func(r *kgo.Record) {
			seen++
			emit(map[string]any{"topic": r.Topic, "partition": r.Partition, "offset": r.Offset,
				"timestamp": r.Timestamp.UnixMilli(), "timestamp_type": r.Attrs.TimestampType(),
				"compression":  r.Attrs.CompressionType(),
				"leader_epoch": r.LeaderEpoch, "key": bytesJSON(r.Key),
				"value": bytesJSON(r.Value), "headers": headersJSON(r.Headers)})
		})
	}
	if *group != "" {
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			emit(map[string]any{"commit_error": errName(err)})
		} else {
			emit(map[string]any{"committed": true})
		}
		if *describe {
			groups, err := describeGroupsReady(ctx, kadm.NewClient(cl), *group)
			if err != nil {
				fatal("describe groups: %v", err)
			}
			emit(groupJSON(groups[*group]))
		}
	}
	cl.Close() // leaves the group
	emit(map[string]any{"closed": true})
}

// createTopics prints {"topic", "error", "message", "partitions", "replication_factor",
// "topic_id"} per topic.
func createTopics(args []string) {
	c := newCommon("create-topics")
	partitions := c.fs.Int("partitions", 1, "partitions (-1: the broker's default)")
	rf := c.fs.Int("replication-factor", 1, "replication factor (-1: the broker's default)")
	validate := c.fs.Bool("validate-only", false, "validate only")
	var configs multiFlag
	c.fs.Var(&configs, "config", "topic config key=value (repeatable)")
	ctx, cancel := c.parse(args)
	defer cancel()
	cfg := map[string]*string{}
	for _, kv := range configs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			fatal("-config %q: expected key=value", kv)
		}
		cfg[k] = kadm.StringPtr(v)
	}
	cl := c.client()
	defer cl.Close()
	adm := kadm.NewClient(cl)
	create := adm.CreateTopics
	if *validate {
		create = adm.ValidateCreateTopics
	}
	resp, err := create(ctx, int32(*partitions), int16(*rf), cfg, c.fs.Args()...)
	if err != nil {
		fatal("create topics: %v", err)
	}
	for _, r := range resp.Sorted() {
		emit(map[string]any{"topic": r.Topic, "error": errName(r.Err), "message": r.ErrMessage,
			"partitions": r.NumPartitions, "replication_factor": r.ReplicationFactor,
			"topic_id": r.ID.String()})
	}
}

// listOffsets prints {"topic", "partition", "offset", "timestamp", "leader_epoch", "error"} per
// partition, sorted.
func listOffsets(args []string) {
	c := newCommon("list-offsets")
	mode := c.fs.String("mode", "end", "start, end or after-milli")
	milli := c.fs.Int64("milli", 0, "timestamp for -mode after-milli")
	ctx, cancel := c.parse(args)
	defer cancel()
	cl := c.client()
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var listed kadm.ListedOffsets
	var err error
	switch *mode {
	case "start":
		listed, err = adm.ListStartOffsets(ctx, c.fs.Args()...)
	case "end":
		listed, err = adm.ListEndOffsets(ctx, c.fs.Args()...)
	case "after-milli":
		listed, err = adm.ListOffsetsAfterMilli(ctx, *milli, c.fs.Args()...)
	default:
		fatal("-mode %q: expected start, end or after-milli", *mode)
	}
	if err != nil && !shardErrors(err) {
		fatal("list offsets: %v", err)
	}
	var lines []kadm.ListedOffset
	listed.Each(func(o kadm.ListedOffset) { lines = append(lines, o) })
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].Topic != lines[j].Topic {
			return lines[i].Topic < lines[j].Topic
		}
		return lines[i].Partition < lines[j].Partition
	})
	for _, o := range lines {
		emit(map[string]any{"topic": o.Topic, "partition": o.Partition, "offset": o.Offset,
			"timestamp": o.Timestamp, "leader_epoch": o.LeaderEpoch, "error": errName(o.Err)})
	}
}

// fetchOffsets prints the group's committed offsets, {"topic", "partition", "offset",
// "leader_epoch", "metadata", "error"} per partition, sorted; {"group_error": ...} when the
// whole request failed with an error the broker answered.
func fetchOffsets(args []string) {
	c := newCommon("fetch-offsets")
	group := c.fs.String("group", "", "consumer group")
	ctx, cancel := c.parse(args)
	defer cancel()
	cl := c.client()
	defer cl.Close()
	var resp kadm.OffsetResponses
	err := untilCoordinator(ctx, func() error {
		var err error
		resp, err = kadm.NewClient(cl).FetchOffsets(ctx, *group)
		return err
	})
	if err != nil {
		var ke *kerr.Error
		if errors.As(err, &ke) {
			emit(map[string]any{"group_error": ke.Message})
			return
		}
		fatal("fetch offsets: %v", err)
	}
	var lines []kadm.OffsetResponse
	resp.Each(func(o kadm.OffsetResponse) { lines = append(lines, o) })
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].Topic != lines[j].Topic {
			return lines[i].Topic < lines[j].Topic
		}
		return lines[i].Partition < lines[j].Partition
	})
	for _, o := range lines {
		emit(map[string]any{"topic": o.Topic, "partition": o.Partition, "offset": o.At,
			"leader_epoch": o.LeaderEpoch, "metadata": o.Metadata, "error": errName(o.Err)})
	}
}

func groupJSON(g kadm.DescribedGroup) map[string]any {
	members := []map[string]any{}
	for _, m := range g.Members {
		assigned := map[string][]int32{}
		if ca, ok := m.Assigned.AsConsumer(); ok {
			for _, t := range ca.Topics {
				ps := append([]int32(nil), t.Partitions...)
				sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
				assigned[t.Topic] = ps
			}
		}
		subscribed := []string{}
		if cm, ok := m.Join.AsConsumer(); ok {
			subscribed = append(subscribed, cm.Topics...)
		}
		members = append(members, map[string]any{"member_id": m.MemberID,
			"client_id": m.ClientID, "client_host": m.ClientHost, "assigned": assigned,
			"subscribed": subscribed})
	}
	return map[string]any{"group": g.Group, "state": g.State, "protocol_type": g.ProtocolType,
		"protocol": g.Protocol, "coordinator": g.Coordinator.NodeID, "members": members,
		"error": errName(g.Err)}
}

// describeGroups prints one line per group: {"group", "state", "protocol_type", "protocol",
// "coordinator", "members": [{"member_id", "client_id", "client_host", "assigned",
// "subscribed"}], "error"}.
func describeGroups(args []string) {
	c := newCommon("describe-groups")
	ctx, cancel := c.parse(args)
	defer cancel()
	cl := c.client()
	defer cl.Close()
	groups, err := describeGroupsReady(ctx, kadm.NewClient(cl), c.fs.Args()...)
	if err != nil {
		fatal("describe groups: %v", err)
	}
	for _, name := range c.fs.Args() {
		g, ok := groups[name]
		if !ok {
			emit(map[string]any{"group": name, "error": "missing from the response"})
			continue
		}
		emit(groupJSON(g))
	}
}

// deleteRecords deletes records before each TOPIC:PARTITION:OFFSET (OFFSET -1: the high
// watermark) and prints {"topic", "partition", "low_watermark", "error"} per partition.
func deleteRecords(args []string) {
	c := newCommon("delete-records")
	ctx, cancel := c.parse(args)
	defer cancel()
	var offsets kadm.Offsets
	for _, arg := range c.fs.Args() {
		parts := strings.Split(arg, ":")
		if len(parts) != 3 {
			fatal("%q: expected TOPIC:PARTITION:OFFSET", arg)
		}
		p, err1 := strconv.ParseInt(parts[1], 10, 32)
		o, err2 := strconv.ParseInt(parts[2], 10, 64)
		if err1 != nil || err2 != nil {
			fatal("%q: expected TOPIC:PARTITION:OFFSET", arg)
		}
		offsets.AddOffset(parts[0], int32(p), o, -1)
	}
	cl := c.client()
	defer cl.Close()
	resp, err := kadm.NewClient(cl).DeleteRecords(ctx, offsets)
	if err != nil && !shardErrors(err) {
		fatal("delete records: %v", err)
	}
	var lines []kadm.DeleteRecordsResponse
	resp.Each(func(r kadm.DeleteRecordsResponse) { lines = append(lines, r) })
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].Topic != lines[j].Topic {
			return lines[i].Topic < lines[j].Topic
		}
		return lines[i].Partition < lines[j].Partition
	})
	for _, r := range lines {
		emit(map[string]any{"topic": r.Topic, "partition": r.Partition,
			"low_watermark": r.LowWatermark, "error": errName(r.Err)})
	}
}

// metadata prints {"cluster", "controller", "brokers": [{"node_id", "host", "port"}]} and then
// one line per topic: {"topic", "topic_id", "internal", "error", "partitions": [{"partition",
// "leader", "leader_epoch", "replicas", "isr", "error"}]}. Without topics it lists them all as
// ListTopics does (no internal topics), or with -all as Metadata does.
func metadata(args []string) {
	c := newCommon("metadata")
	all := c.fs.Bool("all", false, "keep internal topics when listing every topic")
	ctx, cancel := c.parse(args)
	defer cancel()
	cl := c.client()
	defer cl.Close()
	adm := kadm.NewClient(cl)
	m, err := adm.Metadata(ctx, c.fs.Args()...)
	if err != nil {
		fatal("metadata: %v", err)
	}
	if len(c.fs.Args()) == 0 && !*all {
		topics, err := adm.ListTopics(ctx)
		if err != nil {
			fatal("list topics: %v", err)
		}
		m.Topics = topics
	}
	brokers := []map[string]any{}
	for _, b := range m.Brokers {
		brokers = append(brokers, map[string]any{"node_id": b.NodeID, "host": b.Host,
			"port": b.Port})
	}
	emit(map[string]any{"cluster": m.Cluster, "controller": m.Controller, "brokers": brokers})
	for _, name := range m.Topics.Names() {
		t := m.Topics[name]
		partitions := []map[string]any{}
		for _, p := range t.Partitions.Sorted() {
			partitions = append(partitions, map[string]any{"partition": p.Partition,
				"leader": p.Leader, "leader_epoch": p.LeaderEpoch, "replicas": p.Replicas,
				"isr": p.ISR, "error": errName(p.Err)})
		}
		emit(map[string]any{"topic": t.Topic, "topic_id": t.ID.String(),
			"internal": t.IsInternal, "error": errName(t.Err), "partitions": partitions})
	}
}
