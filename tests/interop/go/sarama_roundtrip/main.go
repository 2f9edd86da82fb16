// sarama against runnel: optionally create a topic with the admin API, produce records with
// keys, values and headers through a SyncProducer, then read records back with a consumer
// group, commit, and print one JSON line: what was produced (partition and offset of each),
// what was consumed (per partition in the order delivered), and the group's committed offsets
// as an OffsetFetch reports them after the group has left.
//
// The records are made by record(i) below; tests/interop/test_go_clients.py builds the same
// bytes to compare against. Any error exits 1 with the error on stderr.
//
// Usage: sarama_roundtrip -bootstrap HOST:PORT -topic T [-partitions N] [-produce N]
//
//	[-first I] [-mode acks-all|idempotent|snappy|lz4] [-group G -consume N] [-verbose]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

// The newest protocol level this sarama (1.22) knows. sarama does not negotiate versions with
// ApiVersions: Version decides which request versions it sends (Produce v3 and Fetch v4 with
// record batches v2, headers, idempotence), and the default (0.8.2) would send Produce v0.
var kafkaVersion = sarama.V2_1_0_0

type header struct {
	Key   string `json:"key"`
	Value []byte `json:"value"` // base64 in JSON
}

type consumed struct {
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Key       []byte   `json:"key"` // null for a null key
	Value     []byte   `json:"value"`
	Headers   []header `json:"headers"`
}

type produced struct {
	Seq       int   `json:"seq"`
	Partition int32 `json:"partition"`
	Offset    int64 `json:"offset"`
}

type summary struct {
	Produced  []produced       `json:"produced"`
	Consumed  []consumed       `json:"consumed"`
	Committed map[string]int64 `json:"committed"` // partition -> committed offset (-1: none)
}

// record i of the test data: binary bytes in values and headers, an empty header value, and
// every tenth record without a key (a null key, not an empty one).
func record(topic string, i int) *sarama.ProducerMessage {
	var key sarama.Encoder
	if i%10 != 9 {
		key = sarama.ByteEncoder(fmt.Sprintf("key-%d", i%5))
	}
	value := append([]byte(fmt.Sprintf("value-%04d-", i)), 0x00, 0xff, 0x80, byte(i))
	value = append(value, strings.Repeat("abcdefgh", 8)...) // compressible
	return &sarama.ProducerMessage{
		Topic: topic,
		Key:   key,
		Value: sarama.ByteEncoder(value),
		Headers: []sarama.RecordHeader{
			{Key: []byte("seq"), Value: []byte(fmt.Sprint(i))},
			{Key: []byte("bin"), Value: []byte{0x00, 0x01, 0xfe, 0xff}},
			{Key: []byte("empty"), Value: []byte{}},
		},
	}
}

func config(mode string, defaultRetention bool) (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.Version = kafkaVersion
	c.ClientID = "interop-sarama"
	// A broker that does not answer must fail the run within the test's time limit.
	c.Net.DialTimeout = 10 * time.Second
	c.Net.ReadTimeout = 15 * time.Second
	c.Net.WriteTimeout = 10 * time.Second
	c.Producer.Return.Successes = true // required by SyncProducer
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Partitioner = sarama.NewHashPartitioner
	switch mode {
	case "acks-all":
	case "idempotent":
		// sarama's preconditions for idempotence (Config.Validate checks them).
		c.Producer.Idempotent = true
		c.Net.MaxOpenRequests = 1
		c.Producer.Retry.Max = 3
	case "snappy":
		c.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		c.Producer.Compression = sarama.CompressionLZ4
	default:
		return nil, fmt.Errorf("unknown mode %q", mode)
	}
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	// With the default Retention (0) this sarama commits with OffsetCommit v1, a version Kafka
	// 4.0 removed and runnel refuses (it closes the connection). A retention time makes it
	// send v2, which carries one; runnel, like Kafka 2.1 and later, does not expire offsets by
	// it. -default-retention keeps the default to show the refusal.
	if !defaultRetention {
		c.Consumer.Offsets.Retention = 7 * 24 * time.Hour
	}
	c.Consumer.Return.Errors = true
	return c, c.Validate()
}

func produce(bootstrap []string, c *sarama.Config, topic string, first, n int) ([]produced, error) {
	p, err := sarama.NewSyncProducer(bootstrap, c)
	if err != nil {
		return nil, fmt.Errorf("new producer: %w", err)
	}
	var out []produced
	for i := first; i < first+n; i++ {
		// One at a time: each send waits for its acknowledgement, so the records land in
		// sequence order within each partition and every offset is known.
		part, off, err := p.SendMessage(record(topic, i))
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("send record %d: %w", i, err)
		}
		out = append(out, produced{Seq: i, Partition: part, Offset: off})
	}
	return out, p.Close()
}

// handler collects records from every claimed partition and cancels the session once `want`
// records arrived. Records are marked (to be committed) as they are collected.
type handler struct {
	mu     sync.Mutex
	want   int
	got    []consumed
	cancel context.CancelFunc
}

func (h *handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *handler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		hs := []header{}
		for _, rh := range m.Headers {
			hs = append(hs, header{Key: string(rh.Key), Value: rh.Value})
		}
		h.mu.Lock()
		if len(h.got) < h.want {
			h.got = append(h.got, consumed{m.Partition, m.Offset, m.Key, m.Value, hs})
			s.MarkMessage(m, "")
		}
		if len(h.got) >= h.want {
			h.cancel()
		}
		h.mu.Unlock()
	}
	return nil
}

func consume(bootstrap []string, c *sarama.Config, topic, group string, want int) ([]consumed, error) {
	g, err := sarama.NewConsumerGroup(bootstrap, group, c)
	if err != nil {
		return nil, fmt.Errorf("new consumer group: %w", err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	h := &handler{want: want, cancel: cancel}
	// Errors the group reports in the background (a failed fetch or offset commit) fail
	// the run: sarama would otherwise retry or carry on and leave nothing committed.
	var groupErrs []error
	errsDone := make(chan struct{})
	go func() {
		defer close(errsDone)
		for err := range g.Errors() {
			log.Printf("consumer group error: %v", err)
			groupErrs = append(groupErrs, err)
		}
	}()
	// Consume returns at the end of each session (a rebalance); go on until cancelled.
	for ctx.Err() == nil {
		if err := g.Consume(ctx, []string{topic}, h); err != nil {
			return nil, fmt.Errorf("consume: %w", err)
		}
	}
	h.mu.Lock()
	got := h.got
	h.mu.Unlock()
	if len(got) < want {
		return got, fmt.Errorf("only %d of %d records within the time limit", len(got), want)
	}
	// Leaving the group commits the marked offsets (the session's offset manager flushes on
	// close); the committed offsets are read back afterwards.
	if err := g.Close(); err != nil {
		return got, fmt.Errorf("close consumer group: %w", err)
	}
	<-errsDone // Close closes the Errors channel
	if len(groupErrs) > 0 {
		return got, fmt.Errorf("%d consumer group errors, the first: %w", len(groupErrs), groupErrs[0])
	}
	return got, nil
}

func committed(bootstrap []string, c *sarama.Config, topic, group string) (map[string]int64, error) {
	client, err := sarama.NewClient(bootstrap, c)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		return nil, err
	}
	admin, err := sarama.NewClusterAdmin(bootstrap, c)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, p := range parts {
		b := resp.GetBlock(topic, p)
		if b == nil {
			return nil, fmt.Errorf("no offset block for partition %d", p)
		}
		if b.Err != sarama.ErrNoError {
			return nil, fmt.Errorf("partition %d: %w", p, b.Err)
		}
		out[fmt.Sprint(p)] = b.Offset
	}
	return out, nil
}

func run() error {
	bootstrap := flag.String("bootstrap", "", "broker address")
	topic := flag.String("topic", "", "topic")
	partitions := flag.Int("partitions", 0, "create the topic with this many partitions (0: auto-create)")
	n := flag.Int("produce", 0, "records to produce")
	first := flag.Int("first", 0, "sequence number of the first record produced")
	mode := flag.String("mode", "acks-all", "acks-all, idempotent, snappy or lz4")
	group := flag.String("group", "", "consumer group")
	want := flag.Int("consume", 0, "records to read with the group")
	verbose := flag.Bool("verbose", false, "sarama's own log on stderr")
	defaultRetention := flag.Bool("default-retention", false, "leave Consumer.Offsets.Retention at 0 (OffsetCommit v1)")
	flag.Parse()
	if *verbose {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags|log.Lmicroseconds)
	}
	addrs := []string{*bootstrap}
	c, err := config(*mode, *defaultRetention)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	out := summary{Produced: []produced{}, Consumed: []consumed{}, Committed: map[string]int64{}}

	if *partitions > 0 {
		admin, err := sarama.NewClusterAdmin(addrs, c)
		if err != nil {
			return fmt.Errorf("new admin: %w", err)
		}
		detail := &sarama.TopicDetail{NumPartitions: int32(*partitions), ReplicationFactor: 1}
		if err := admin.CreateTopic(*topic, detail, false); err != nil {
			return fmt.Errorf("create topic: %w", err)
		}
		admin.Close()
	}
	if *n > 0 {
		if out.Produced, err = produce(addrs, c, *topic, *first, *n); err != nil {
			return err
		}
	}
	if *group != "" {
		if *want > 0 {
			if out.Consumed, err = consume(addrs, c, *topic, *group, *want); err != nil {
				return err
			}
		}
		if out.Committed, err = committed(addrs, c, *topic, *group); err != nil {
			return fmt.Errorf("fetch committed offsets: %w", err)
		}
	}
	// Per partition in delivery order (partitions are consumed concurrently, so only the
	// order within one partition means anything); a stable sort keeps that order.
	sort.SliceStable(out.Consumed, func(a, b int) bool {
		return out.Consumed[a].Partition < out.Consumed[b].Partition
	})
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	log.SetFlags(0)
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sarama_roundtrip:", err)
		os.Exit(1)
	}
}
