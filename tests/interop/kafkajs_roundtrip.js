// kafkajs against runnel: create a topic, produce keyed records with headers (gzip), read them
// back with a consumer group, commit, list the broker's log levels, and report what was seen as
// one JSON line.
// Usage: node kafkajs_roundtrip.js BOOTSTRAP TOPIC GROUP COUNT
const { Kafka, CompressionTypes, ConfigResourceTypes, logLevel } = require("kafkajs");

const [bootstrap, topic, group, countArg] = process.argv.slice(2);
const count = Number(countArg);

async function main() {
  const kafka = new Kafka({ clientId: "interop-kafkajs", brokers: [bootstrap], logLevel: logLevel.WARN });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
  const listed = await admin.listTopics();
  // The broker's log levels, as kafka-configs --entity-type broker-loggers lists them.
  const described = await admin.describeConfigs({
    resources: [{ type: ConfigResourceTypes.BROKER_LOGGER, name: "1" }],
    includeSynonyms: false,
  });
  const loggers = Object.fromEntries(
    described.resources[0].configEntries.map((e) => [e.configName, e.configValue]),
  );
  await admin.disconnect();

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    messages.push({ key: `key-${i % 7}`, value: `value-${i}`, headers: { seq: `${i}` } });
  }
  await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 10000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${count} records`)), 30000);
    consumer
      .run({
        eachMessage: async ({ partition, message }) => {
          seen.push({
            partition,
            key: message.key.toString(),
            value: message.value.toString(),
            seq: message.headers.seq.toString(),
          });
          if (seen.length === count) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  await consumer.commitOffsets([]);
  await consumer.disconnect();
  const admin2 = kafka.admin();
  await admin2.connect();
  const offsets = await admin2.fetchOffsets({ groupId: group, topics: [topic] });
  await admin2.disconnect();
  console.log(JSON.stringify({ listed: listed.includes(topic), loggers, seen, offsets }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
