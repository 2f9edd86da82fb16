// kafkajs transactions against runnel: a transactional producer commits, aborts, and commits
// again with a consumer group's offsets in the transaction (sendOffsets); a read_committed
// consumer (kafkajs's default) reads the output topic. Reports one JSON line.
// Usage: node kafkajs_transactions.js BOOTSTRAP OUT_TOPIC IN_TOPIC GROUP
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, out, input, group] = process.argv.slice(2);

async function main() {
  const kafka = new Kafka({ clientId: "interop-kafkajs-tx", brokers: [bootstrap], logLevel: logLevel.WARN });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: out }, { topic: input }], waitForLeaders: true });

  const producer = kafka.producer({
    transactionalId: `${out}-producer`,
    idempotent: true,
    maxInFlightRequests: 1,
  });
  await producer.connect();
  const send = (txn, values) =>
    txn.send({ topic: out, messages: values.map((value) => ({ key: "k", value })) });

  let txn = await producer.transaction();
  await send(txn, ["committed-1", "committed-2"]);
  await txn.commit();

  txn = await producer.transaction();
  await send(txn, ["aborted-1", "aborted-2"]);
  await txn.abort();

  txn = await producer.transaction();
  await send(txn, ["committed-3"]);
  await txn.sendOffsets({
    consumerGroupId: group,
    topics: [{ topic: input, partitions: [{ partition: 0, offset: "5" }] }],
  });
  await txn.commit();
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${group}-reader`, sessionTimeout: 10000 });
  await consumer.connect();
  await consumer.subscribe({ topic: out, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} records: ${seen}`)), 30000);
    consumer
      .run({
        eachMessage: async ({ message }) => {
          seen.push({ offset: message.offset, value: message.value.toString() });
          if (seen.length === 3) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  // Anything more (an aborted record) would arrive within this time.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await consumer.disconnect();
  const offsets = await admin.fetchOffsets({ groupId: group, topics: [input] });
  const ends = await admin.fetchTopicOffsets(out);
  await admin.disconnect();
  console.log(JSON.stringify({ seen, offsets, ends }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
