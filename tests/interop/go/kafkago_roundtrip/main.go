// segmentio/kafka-go against runnel: optionally create a topic, produce keyed records with a
// Writer (acks=all), read them back with a Reader in a consumer group, commit each record, and
// print one JSON line in the shape sarama_roundtrip prints (consumed records per partition in
// the order read; the test reads the committed offsets with another client).
//
// Debian's kafka-go is 0.2.1: it has no record headers and speaks the pre-0.11 protocol
// (Produce v2 and Fetch v2 with message format v1, CreateTopics v0), without asking the broker
// for its versions. The records are those of sarama_roundtrip without the headers.
//
// Usage: kafkago_roundtrip -bootstrap HOST:PORT -topic T [-partitions N] [-produce N]
//
//	[-first I] [-group G -consume N] [-timeout D]
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
	"time"

	kafka "github.com/segmentio/kafka-go"
)

type consumed struct {
	Partition int      `json:"partition"`
	Offset    int64    `json:"offset"`
	Key       []byte   `json:"key"`
	Value     []byte   `json:"value"`
	Headers   []string `json:"headers"` // always empty: this kafka-go has no headers
}

type summary struct {
	Consumed []consumed `json:"consumed"`
}

// record i: the key and value of sarama_roundtrip's record i (every tenth record has no key).
func record(i int) kafka.Message {
	var key []byte
	if i%10 != 9 {
		key = []byte(fmt.Sprintf("key-%d", i%5))
	}
	value := append([]byte(fmt.Sprintf("value-%04d-", i)), 0x00, 0xff, 0x80, byte(i))
	value = append(value, strings.Repeat("abcdefgh", 8)...)
	return kafka.Message{Key: key, Value: value}
}

func createTopic(bootstrap, topic string, partitions int) error {
	conn, err := kafka.Dial("tcp", bootstrap)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	return conn.CreateTopics(kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1})
}

func produce(ctx context.Context, bootstrap, topic string, first, n int) error {
	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:      []string{bootstrap},
		Topic:        topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: -1,
		MaxAttempts:  3,
		BatchTimeout: 10 * time.Millisecond,
	})
	msgs := make([]kafka.Message, 0, n)
	for i := first; i < first+n; i++ {
		msgs = append(msgs, record(i))
	}
	err := w.WriteMessages(ctx, msgs...)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

func consume(ctx context.Context, bootstrap, topic, group string, want int) ([]consumed, error) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: []string{bootstrap},
		Topic:   topic,
		GroupID: group,
		MaxWait: 500 * time.Millisecond,
		// CommitInterval 0: CommitMessages waits for the broker's answer.
	})
	defer r.Close()
	var out []consumed
	for len(out) < want {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return out, fmt.Errorf("fetch after %d of %d records: %w", len(out), want, err)
		}
		out = append(out, consumed{m.Partition, m.Offset, m.Key, m.Value, []string{}})
		if err := r.CommitMessages(ctx, m); err != nil {
			return out, fmt.Errorf("commit offset %d of partition %d: %w", m.Offset, m.Partition, err)
		}
	}
	return out, r.Close()
}

func run() error {
	bootstrap := flag.String("bootstrap", "", "broker address")
	topic := flag.String("topic", "", "topic")
	partitions := flag.Int("partitions", 0, "create the topic with this many partitions (0: auto-create)")
	n := flag.Int("produce", 0, "records to produce")
	first := flag.Int("first", 0, "sequence number of the first record produced")
	group := flag.String("group", "", "consumer group")
	want := flag.Int("consume", 0, "records to read with the group")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	// kafka-go retries a closed connection without end and without reporting it, so the
	// whole run has a deadline.
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	out := summary{Consumed: []consumed{}}
	var err error
	if *partitions > 0 {
		if err := createTopic(*bootstrap, *topic, *partitions); err != nil {
			return fmt.Errorf("create topic: %w", err)
		}
	}
	if *n > 0 {
		if err := produce(ctx, *bootstrap, *topic, *first, *n); err != nil {
			return fmt.Errorf("produce: %w", err)
		}
	}
	if *group != "" && *want > 0 {
		if out.Consumed, err = consume(ctx, *bootstrap, *topic, *group, *want); err != nil {
			return err
		}
	}
	sort.SliceStable(out.Consumed, func(a, b int) bool {
		return out.Consumed[a].Partition < out.Consumed[b].Partition
	})
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	log.SetFlags(0)
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kafkago_roundtrip:", err)
		os.Exit(1)
	}
}
