//! The `runnel` command line, run as a user would: config commands, and the client commands
//! against a running broker.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn runnel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `runnel ARGS -b BOOTSTRAP` logged in with SCRAM-SHA-256 as `user` with `secret`, `input`
/// on stdin: (success, stdout, stderr, how long it took).
fn runnel_as(
    bootstrap: &str,
    (user, secret): (&str, &str),
    args: &[&str],
    input: &[u8],
) -> (bool, String, String, std::time::Duration) {
    let login = [
        "-b".to_string(),
        bootstrap.to_string(),
        "-X".to_string(),
        "security.protocol=SASL_PLAINTEXT".to_string(),
        "-X".to_string(),
        "sasl.mechanism=SCRAM-SHA-256".to_string(),
        "-X".to_string(),
        format!("sasl.username={user}"),
        "-X".to_string(),
        format!("sasl.password={secret}"),
    ];
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(login.iter().map(String::as_str))
        .collect();
    let started = std::time::Instant::now();
    let out = runnel_with_input(&all, input);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// Runs `runnel` with `input` on its standard input.
fn runnel_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn config_default_is_valid_and_validate_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = runnel(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[listeners.kafka]") && text.contains("# "),
        "a commented file"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let out = runnel(&["config", "validate", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[broker]\nnode_id = 1\n\n[log]\nflush = \"sometimes\"\n",
    )
    .unwrap();
    let out = runnel(&["config", "validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5") && err.contains("log.flush") && err.contains("always"),
        "{err}"
    );

    // A federation link's librdkafka property that librdkafka refuses: its line too, when
    // validated and when the broker starts.
    // (The data directory a started broker makes is the test's, not the working directory's.)
    let link = dir.path().join("link.toml");
    std::fs::write(
        &link,
        format!(
            "[[federation.links]]\nname = \"c\"\nbootstrap_servers = \"127.0.0.1:1\"\n\
             topics = [\"t\"]\n\n[federation.links.client]\n\"bogus.prop\" = \"1\"\n\n\
             [broker]\ndata_dir = {:?}\n",
            dir.path().join("link-data")
        ),
    )
    .unwrap();
    for command in [&["config", "validate"][..], &["serve", "--config"]] {
        let mut args = command.to_vec();
        args.push(link.to_str().unwrap());
        let out = runnel(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("link.toml:6: federation.links[0].client: link \"c\"")
                && err.contains("bogus.prop"),
            "{command:?}: {err}"
        );
    }

    // A listener address in use is named with its key and line, before the data directory is
    // made or touched.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = dir.path().join("busy.toml");
    std::fs::write(
        &busy,
        format!(
            "[broker]\ndata_dir = {:?}\n\n[listeners.kafka]\naddress = \"{}\"\n",
            dir.path().join("busy-data"),
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = runnel(&["serve", "--config", busy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("busy.toml:5: listeners.kafka.address: cannot listen on"),
        "{err}"
    );
    assert!(!dir.path().join("busy-data").exists());
    drop(taken);

    // The users file is read as the broker would read it: a line without a secret is named.
    let users = dir.path().join("users");
    std::fs::write(&users, "alice a11ce-s3cret\nbob\n").unwrap();
    let with_users = dir.path().join("users.toml");
    std::fs::write(
        &with_users,
        format!("[listeners.kafka]\nsasl_plain_file = {:?}\n", users),
    )
    .unwrap();
    let out = runnel(&["config", "validate", with_users.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("listeners.kafka.sasl_plain_file") && err.contains(":2"),
        "{err}"
    );
    std::fs::write(&users, "alice a11ce-s3cret\nbob b0b-s3cret\n").unwrap();
    let out = runnel(&["config", "validate", with_users.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // So are the certificate and key of an enabled TLS listener.
    let tls = dir.path().join("tls.toml");
    let missing = dir.path().join("missing.pem");
    std::fs::write(
        &tls,
        format!("[listeners.kafka_tls]\nenabled = true\ncert = {missing:?}\nkey = {missing:?}\n"),
    )
    .unwrap();
    let out = runnel(&["config", "validate", tls.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("listeners.kafka_tls.cert"), "{err}");

    // And those of TLS between brokers, as the broker would read them.
    common::make_pki(dir.path(), "replica");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "[listeners.kafka_tls]\nenabled = true\ncert = {cert:?}\nkey = {key:?}\n\
             [cluster]\nbrokers = [\"1@127.0.0.1:9092\", \"2@127.0.0.1:9192\"]\n\
             tls_brokers = [\"1@127.0.0.1:9096\", \"2@127.0.0.1:9196\"]\n\
             leader = 2\ntls = true\ntls_ca = {missing:?}\n"
        ),
    )
    .unwrap();
    let out = runnel(&["config", "validate", cluster.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // With the line that names the file, as other config errors.
    assert!(
        err.contains("cluster.toml:10: cluster.tls_ca: cannot read"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_produce_and_consume_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let b = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let out = runnel(&[
            "topics",
            "create",
            "cli",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
            "-b",
            &b,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = runnel(&["topics", "list", "-b", &b]);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "cli")
        );
        // A refused config is named with its reason.
        let out = runnel(&[
            "topics",
            "create",
            "cli-2",
            "--config",
            "min.compaction.lag.ms=60000",
            "-b",
            &b,
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("min.compaction.lag.ms") && err.contains(r#"only "0" is supported"#),
            "{err}"
        );
        // A count the broker could not take is refused before anything is sent.
        let out = runnel(&["topics", "create", "cli-3", "--partitions", "0", "-b", &b]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("at least 1, or -1"),
            "{err}"
        );
        let out = runnel(&["topics", "describe", "cli", "-b", &b]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("partitions: 2"), "{text}");
        assert!(text.contains("  configs: retention.ms=3600000\n"), "{text}");
        // Without a name, every topic, as kafka-topics --describe; on one broker no partition
        // is under-replicated or without a leader.
        let out = runnel(&["topics", "describe", "-b", &b]);
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(all.contains(&text), "{all}");
        let stdout = |args: &[&str]| {
            let out = runnel(args);
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let topics = all.lines().filter(|l| l.starts_with("topic: ")).count();
        assert_eq!(
            topics,
            stdout(&["topics", "list", "-b", &b]).lines().count()
        );
        for filter in ["--under-replicated-partitions", "--unavailable-partitions"] {
            assert_eq!(stdout(&["topics", "describe", filter, "-b", &b]), "");
        }
        // Altered as kafka-topics --alter and kafka-configs --alter do; a bad value refused
        // with the broker's reason, nothing changed.
        let out = runnel(&[
            "topics",
            "alter",
            "cli",
            "--partitions",
            "3",
            "--config",
            "segment.ms=600000",
            "--delete-config",
            "retention.ms",
            "-b",
            &b,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "topic cli: 3 partitions\ntopic cli: configs: segment.ms=600000\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = runnel(&[
            "topics",
            "alter",
            "cli",
            "--partitions",
            "4",
            "--config",
            "retention.ms=soon",
            "-b",
            &b,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(r#"invalid value "soon""#),
            "{err}"
        );
        // Refused before anything changed: the partitions are as they were too.
        let out = runnel(&["topics", "describe", "cli", "-b", &b]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("partitions: 3") && text.contains("  configs: segment.ms=600000\n"),
            "{text}"
        );
        // Fewer partitions: refused with the count it has (the broker's reason, which
        // librdkafka does not pass on); deleting a config the topic does not set: refused, as
        // kafka-configs does; the last own config deleted: said.
        let out = runnel(&["topics", "alter", "cli", "--partitions", "2", "-b", &b]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("topic cli has 3: partitions can be added, not removed"),
            "{err}"
        );
        let args = [
            "topics",
            "alter",
            "cli",
            "--delete-config",
            "segment.mss",
            "-b",
            &b,
        ];
        let out = runnel(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("no config of its own named segment.mss")
                && err.contains("its own: segment.ms"),
            "{err}"
        );
        // A name that collides with another in metric names, and a replication factor other
        // than the brokers': the broker's reason.
        let out = runnel(&["topics", "create", "c.l.i", "-b", &b]);
        assert!(out.status.success());
        let out = runnel(&["topics", "create", "c_l_i", "-b", &b]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(r#"collides with the existing topic "c.l.i""#),
            "{err}"
        );
        let args = [
            "topics",
            "create",
            "three",
            "--replication-factor",
            "3",
            "-b",
            &b,
        ];
        let err = String::from_utf8_lossy(&runnel(&args).stderr).into_owned();
        assert!(
            err.contains("InvalidReplicationFactor: invalid replication factor 3"),
            "{err}"
        );
        let args = [
            "topics",
            "create",
            "one",
            "--replication-factor",
            "1",
            "-b",
            &b,
        ];
        assert!(runnel(&args).status.success());
        let out = runnel(&[
            "topics",
            "alter",
            "cli",
            "--delete-config",
            "segment.ms",
            "-b",
            &b,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "topic cli: configs: none of its own (the broker's defaults)\n"
        );
        let out = runnel(&["topics", "describe", "nosuch", "-b", &b]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "topic nosuch: UnknownTopicOrPartition (Broker: Unknown topic or partition)"
            ),
            "{err}"
        );

        let out = runnel_with_input(
            &["produce", "cli", "-b", &b],
            b"k1\tfirst\nplain value\nk1\tsecond\n",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let out = runnel(&[
            "consume",
            "cli",
            "--from-beginning",
            "--max",
            "3",
            "--group",
            "cli-g",
            "-b",
            &b,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        // Same key, same partition: order kept between them.
        let k1: Vec<&String> = lines.iter().filter(|l| l.starts_with("k1\t")).collect();
        assert_eq!(k1, ["k1\tfirst", "k1\tsecond"]);
        lines.sort();
        assert_eq!(lines, ["k1\tfirst", "k1\tsecond", "plain value"]);

        // The group committed its position: nothing more to read.
        let out = runnel(&[
            "consume",
            "cli",
            "--group",
            "cli-g",
            "--idle-timeout",
            "2s",
            "-b",
            &b,
        ]);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");

        // A null value (a tombstone) is printed as null, apart from an empty one.
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = common::client_config(&b).create().unwrap();
        producer
            .send(BaseRecord::<str, [u8]>::to("cli").key("gone").partition(0))
            .unwrap();
        producer
            .send(
                BaseRecord::<str, [u8]>::to("cli")
                    .key("empty")
                    .payload(b"")
                    .partition(0),
            )
            .unwrap();
        producer.flush(std::time::Duration::from_secs(10)).unwrap();
        // From the start of partition 0 where the group has no position there yet (the first
        // three records may all have gone to partition 1), and not waiting for ever.
        let out = runnel(&[
            "consume",
            "cli",
            "--group",
            "cli-g",
            "--from-beginning",
            "--max",
            "2",
            "--idle-timeout",
            "10s",
            "-b",
            &b,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "gone\tnull\nempty\t\n"
        );

        let out = runnel(&["topics", "delete", "cli", "-b", &b]);
        assert!(out.status.success());
        // Reading a topic that does not exist says so.
        let out = runnel(&["consume", "cli", "--idle-timeout", "1s", "-b", &b]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("topic cli does not exist"), "{err}");
        let out = runnel(&["topics", "list", "-b", &b]);
        assert!(
            !String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "cli")
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// `runnel produce` fails, saying how many and why, when the broker refuses records: here a
/// compacted topic refuses a record without a key (INVALID_RECORD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fails_when_the_broker_refuses_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let b = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let out = runnel(&[
            "topics",
            "create",
            "state",
            "--config",
            "cleanup.policy=compact",
            "-b",
            &b,
        ]);
        assert!(out.status.success());
        let produce = |input: &[u8]| {
            let out = runnel_with_input(&["produce", "state", "-b", &b], input);
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, err) = produce(b"valve-1\topen\n");
        assert!(ok, "{err}");
        let (ok, err) = produce(b"no key\n");
        assert!(!ok, "a refused record reported as produced: {err}");
        assert!(err.contains("1 of 1 records were refused"), "{err}");
        assert!(
            err.contains("InvalidRecord") || err.contains("Invalid"),
            "{err}"
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// Lines are bytes (a value need not be UTF-8); a produce the broker cannot take says why; a
/// consumer stopped with Ctrl-C commits what it printed and leaves its group at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_takes_bytes_and_says_why_and_an_interrupted_consumer_commits_and_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.auto_create_topics = false;
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let inner = broker.broker.clone();
    // The producer ids of the batches of bin-0, in order.
    let producers = move || {
        let p = inner.catalog.get("bin").unwrap().partition(0).unwrap();
        let bytes = p.log().read(0, 1 << 20).unwrap();
        runnel::storage::parse_batches(&bytes)
            .map(|b| b.unwrap().1.producer_id)
            .collect::<Vec<_>>()
    };
    tokio::task::spawn_blocking(move || {
        assert!(
            runnel(&["topics", "create", "bin", "-b", &b])
                .status
                .success()
        );
        let input = b"plain\n\xff\xfe\tv\x00\xc3\n\xf0\x28\x8c\x28\r\nlast";
        let out = runnel_with_input(&["produce", "bin", "-b", &b], input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("4 records produced to bin"), "{err}");
        let out = runnel(&["consume", "bin", "--from-beginning", "--max", "4", "-b", &b]);
        assert_eq!(
            out.stdout,
            b"plain\n\xff\xfe\tv\x00\xc3\n\xf0\x28\x8c\x28\nlast\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A topic that does not exist, where the broker makes none on produce: said, not only
        // "timed out".
        let out = runnel_with_input(
            &[
                "produce",
                "nosuch",
                "-b",
                &b,
                "-X",
                "message.timeout.ms=1500",
            ],
            b"x\n",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("1 of 1 records were refused")
                && err.contains("topic nosuch does not exist"),
            "{err}"
        );
        // A topic asking for more replicas in sync than a broker alone has: said too.
        let args = [
            "topics",
            "create",
            "two",
            "--config",
            "min.insync.replicas=2",
            "-b",
            &b,
        ];
        assert!(runnel(&args).status.success());
        let args = ["produce", "two", "-b", &b, "-X", "message.timeout.ms=1500"];
        let out = runnel_with_input(&args, b"x\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(
                    "topic two sets min.insync.replicas = 2 and 1 of its replicas are in sync: "
                ),
            "{err}"
        );
        // What Kafka refuses, refused before anything is sent.
        let out = runnel_with_input(&["produce", "bin", "--acks", "2", "-b", &b], b"x\n");
        assert!(!out.status.success());
        let out = runnel_with_input(&["produce", "bin", "--acks", "-1", "-b", &b], b"y\n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = runnel(&["consume", "bin", "--idle-timeout", "3", "-b", &b]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("needs a unit"),
            "{err}"
        );

        // Ctrl-C: what was printed is committed and the group is left, not held for the
        // session timeout.
        let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args([
                "consume",
                "bin",
                "--group",
                "ctrl-c",
                "--from-beginning",
                "-b",
                &b,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut printed = 0;
        let mut line = Vec::new();
        while printed < 5 {
            line.clear();
            let n = std::io::BufRead::read_until(&mut stdout, b'\n', &mut line).unwrap();
            assert!(n > 0, "the consumer ended early");
            printed += 1;
        }
        let interrupted = std::time::Instant::now();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(interrupted.elapsed() < std::time::Duration::from_secs(10));
        let out = runnel(&["groups", "describe", "ctrl-c", "-b", &b]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Empty, 0 member(s)"), "{text}");
        let committed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("bin "))
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(committed, ["5"], "{text}");

        // With acks=all the producer is idempotent (a retried write is stored once): its
        // batches carry a producer id; with acks=1, or when told not to be, they do not.
        let out = runnel_with_input(&["produce", "bin", "--acks", "1", "-b", &b], b"z\n");
        assert!(out.status.success());
        let args = ["produce", "bin", "-b", &b, "-X", "enable.idempotence=false"];
        assert!(runnel_with_input(&args, b"w\n").status.success());
        let ids = producers();
        let (idempotent, plain) = ids.split_at(ids.len().saturating_sub(2));
        assert!(
            idempotent.len() >= 2 && idempotent.iter().all(|&id| id >= 0),
            "{ids:?}"
        );
        assert_eq!(plain, [-1, -1]);
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// A refused login ends the client commands at once with the broker's reason, not after
/// librdkafka's timeouts with a transport error; the right password works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_stop_at_a_refused_login_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice a11ce-s3cret\n").unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str], password: &str, input: &[u8]| {
            let (ok, _, err, took) = runnel_as(&b, ("alice", password), args, input);
            (ok, err, took)
        };
        for args in [
            &["produce", "logins"][..],
            &["topics", "list"][..],
            &["consume", "logins", "--max", "1"][..],
        ] {
            let (ok, err, took) = run(args, "guess", b"reading\n");
            assert!(!ok, "{args:?}: {err}");
            assert!(
                err.contains("the broker refused the login")
                    && err.contains("wrong password for user"),
                "{args:?}: {err}"
            );
            // librdkafka's own timeouts are 10 s (metadata) and 30 s (flush).
            assert!(
                took < std::time::Duration::from_secs(8),
                "{args:?} took {took:?}"
            );
        }
        let (ok, err, _) = run(&["produce", "logins"], "a11ce-s3cret", b"reading\n");
        assert!(ok, "{err}");
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// Client properties from a file (`-F`, or `RUNNEL_CLIENT_CONFIG`), as kcat takes them, so
/// that a password need not be on the command line; -X overrides the file, and a line or a
/// property a command cannot use is named by file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_properties_come_from_a_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice a11ce-s3cret\n").unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let file = dir.path().join("alice.properties");
    std::fs::write(
        &file,
        "# alice's login\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism = SCRAM-SHA-256\n\n\
         sasl.username=alice\nsasl.password=a11ce-s3cret\n",
    )
    .unwrap();
    let everything = dir.path().join("everything.properties");
    std::fs::write(
        &everything,
        format!(
            "{}bootstrap.servers={}\n",
            std::fs::read_to_string(&file).unwrap(),
            broker.bootstrap()
        ),
    )
    .unwrap();
    let typo = dir.path().join("typo.properties");
    std::fs::write(&typo, "sasl.pasword=TopSecret-123\n").unwrap();
    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "security.protocol=SASL_PLAINTEXT\nsasl.password\n").unwrap();
    let other = dir.path().join("other.properties");
    std::fs::write(
        &other,
        "security.protocol=ssl\nssl.endpoint.identification.algorithm=none\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (file, bad, other, everything, typo) = (
        path(&file),
        path(&bad),
        path(&other),
        path(&everything),
        path(&typo),
    );
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str], env: Option<&str>, input: &[u8]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
            cmd.args(args);
            // A file that names the brokers needs no -b.
            if !args.iter().any(|a| a.ends_with("everything.properties")) {
                cmd.args(["-b", &b]);
            }
            cmd.env_remove("RUNNEL_CLIENT_CONFIG");
            cmd.env_remove("RUNNEL_BOOTSTRAP");
            if let Some(f) = env {
                cmd.env("RUNNEL_CLIENT_CONFIG", f);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, _, err) = run(&["produce", "logins", "-F", &file], None, b"from-a-file\n");
        assert!(ok, "{err}");
        let (ok, out, err) = run(
            &[
                "consume",
                "logins",
                "--from-beginning",
                "--max",
                "1",
                "--idle-timeout",
                "20s",
            ],
            Some(&file),
            b"",
        );
        assert!(ok && out.contains("from-a-file"), "{out} {err}");
        let (ok, _, err) = run(&["quotas", "list", "-F", &file], None, b"");
        assert!(ok, "{err}");
        let (ok, out, err) = run(&["topics", "list", "-F", &everything], None, b"");
        assert!(
            ok && out.contains("logins"),
            "bootstrap.servers from the file: {out} {err}"
        );
        let (ok, _, err) = run(&["quotas", "list", "-F", &everything], None, b"");
        assert!(ok, "{err}");

        // -X wins over the file.
        let (ok, _, err) = run(
            &["topics", "list", "-F", &file, "-X", "sasl.password=guess"],
            None,
            b"",
        );
        assert!(!ok && err.contains("the broker refused the login"), "{err}");

        // A mistyped key is named, its value (a password, say) never.
        let (ok, _, err) = run(&["topics", "list", "-F", &typo], None, b"");
        assert!(
            !ok && err.contains("sasl.pasword") && !err.contains("TopSecret"),
            "{err}"
        );
        let (ok, _, err) = run(&["topics", "list", "-F", &bad], None, b"");
        assert!(
            !ok && err.contains(&format!("{bad}:2: expected KEY=VALUE")),
            "{err}"
        );
        let (ok, _, err) = run(&["quotas", "list", "-F", &other], None, b"");
        assert!(
            !ok && err.contains(&format!(
                "{other}:2: ssl.endpoint.identification.algorithm: not taken"
            )),
            "{err}"
        );
        let (ok, _, err) = run(
            &["topics", "list", "-F", "/nonexistent.properties"],
            None,
            b"",
        );
        assert!(
            !ok && err.contains("-F /nonexistent.properties: cannot read it"),
            "{err}"
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// `runnel quotas` over mutual TLS: it presents the certificate of -X ssl.certificate.location
/// and ssl.key.location, and without one the broker's refusal is what the command says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_commands_present_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    common::make_pki(dir.path(), "operator");
    let mut cfg = common::test_config(&dir.path().join("data"));
    let tls = &mut cfg.listeners.kafka_tls;
    tls.enabled = true;
    tls.address = "127.0.0.1:0".parse().unwrap();
    tls.cert = dir.path().join("server.pem");
    tls.key = dir.path().join("server.key");
    tls.client_ca = dir.path().join("ca.pem");
    let broker = common::start_with(cfg).await;
    let address = broker.kafka_tls_addr.expect("a TLS listener").to_string();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("operator.pem"), file("operator.key"));
    let quotas = broker.broker.clone();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str], with_cert: bool| {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend([
                "-b".into(),
                address.clone(),
                "-X".into(),
                "security.protocol=ssl".into(),
            ]);
            all.extend(["-X".into(), format!("ssl.ca.location={ca}")]);
            if with_cert {
                all.extend(["-X".into(), format!("ssl.certificate.location={cert}")]);
                all.extend(["-X".into(), format!("ssl.key.location={key}")]);
            }
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = runnel(&all);
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, _, err) = run(
            &[
                "quotas",
                "set",
                "--client-id",
                "meter",
                "producer_byte_rate=64KiB",
            ],
            true,
        );
        assert!(ok, "{err}");
        let (ok, out, err) = run(&["quotas", "list"], true);
        assert!(
            ok && out.contains("meter") && out.contains("65536"),
            "{out} {err}"
        );
        let (ok, _, err) = run(&["quotas", "list"], false);
        assert!(!ok && err.contains("CertificateRequired"), "{err}");
    })
    .await
    .unwrap();
    let set = quotas
        .client_quotas
        .describe(&runnel::client_quotas::Filter {
            components: Vec::new(),
            strict: false,
        });
    assert_eq!(set.len(), 1, "{set:?}");
    broker.shutdown().await;
}

/// `runnel quotas`: set, list and remove client quotas, over SASL SCRAM, that the broker then
/// holds clients to; a client without AlterConfigs on the cluster is refused with the reason,
/// and properties or values it cannot use are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_commands_set_list_and_remove_the_quotas_the_broker_enforces() {
    use runnel::client_quotas::QuotaKey;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::secured_config(dir.path(), "admin adm1n-s3cret\nalice a11ce-s3cret\n");
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let admin = ("admin", "adm1n-s3cret");
    let (b2, quotas) = (b.clone(), broker.broker.clone());
    tokio::task::spawn_blocking(move || {
        let b = b2;
        let run = |who, args: &[&str]| {
            let (ok, out, err, _) = runnel_as(&b, who, args, b"");
            (ok, out, err)
        };
        let (ok, _, err) = run(
            ("alice", "a11ce-s3cret"),
            &[
                "quotas",
                "set",
                "--user",
                "alice",
                "producer_byte_rate=1GiB",
            ],
        );
        assert!(!ok && err.contains("ClusterAuthorizationFailed"), "{err}");
        let set = [
            "quotas",
            "set",
            "--client-id",
            "sensor-7",
            "producer_byte_rate=50KiB",
            "consumer_byte_rate=1MiB",
        ];
        let (ok, _, err) = run(admin, &set);
        assert!(ok, "{err}");
        let (ok, _, err) = run(
            admin,
            &[
                "quotas",
                "set",
                "--user-default",
                "--client-default",
                "producer_byte_rate=2048",
            ],
        );
        assert!(ok, "{err}");
        let (ok, out, err) = run(admin, &["quotas", "list"]);
        assert!(ok, "{err}");
        assert_eq!(
            out,
            "client-id=sensor-7\tconsumer_byte_rate=1048576\tproducer_byte_rate=51200\n\
             user=<default> client-id=<default>\tproducer_byte_rate=2048\n"
        );
        let (ok, out, _) = run(admin, &["quotas", "list", "--client-id", "sensor-7"]);
        assert!(ok);
        assert_eq!(out.lines().count(), 1, "{out}");
        // In force, in Kafka's order: the default user's default client id (2048 bytes a
        // second) comes before sensor-7's own quota. 3KiB owes 1KiB: half a second.
        let over = quotas.client_quotas.charge(
            QuotaKey::ProducerByteRate,
            "alice",
            "sensor-7",
            3.0 * 1024.0,
        );
        assert!((450..=500).contains(&over), "{over} ms");
        // Kafka's other two keys, which are not whole numbers.
        let bob = ["--user", "bob"];
        let keys = ["request_percentage", "controller_mutation_rate"];
        let set = [
            &["quotas", "set"][..],
            &bob,
            &["request_percentage=50", "controller_mutation_rate=2.5"],
        ];
        let (ok, _, err) = run(admin, &set.concat());
        assert!(ok, "{err}");
        let (ok, out, err) = run(admin, &[&["quotas", "list"][..], &bob].concat());
        assert!(ok, "{err}");
        assert_eq!(
            out,
            "user=bob\tcontroller_mutation_rate=2.5\trequest_percentage=50\n"
        );
        let (ok, _, err) = run(admin, &[&["quotas", "remove"][..], &bob, &keys].concat());
        assert!(ok, "{err}");
        // An IP address's connection rate.
        let ip = ["--ip", "10.1.2.3"];
        let (ok, _, err) = run(
            admin,
            &[
                &["quotas", "set"][..],
                &ip,
                &["connection_creation_rate=20"],
            ]
            .concat(),
        );
        assert!(ok, "{err}");
        let (ok, out, err) = run(admin, &[&["quotas", "list"][..], &ip].concat());
        assert!(ok, "{err}");
        assert_eq!(out, "ip=10.1.2.3\tconnection_creation_rate=20\n");
        let (ok, _, err) = run(
            admin,
            &[
                &["quotas", "remove"][..],
                &ip,
                &["connection_creation_rate"],
            ]
            .concat(),
        );
        assert!(ok, "{err}");
        // What the broker refuses, and what the command cannot send, are named.
        let (ok, _, err) = run(admin, &["quotas", "set", "--user", "bob", "fetch_rate=5"]);
        assert!(!ok && err.contains("not a client quota"), "{err}");
        let (ok, _, err) = run(admin, &["quotas", "set", "producer_byte_rate=1"]);
        assert!(!ok && err.contains("name the entity"), "{err}");
        let (ok, _, err) = run(admin, &["quotas", "list", "-X", "ssl.keystore.location=/x"]);
        assert!(
            !ok && err.contains("-X ssl.keystore.location: not taken"),
            "{err}"
        );
        let (ok, _, err) = run(
            admin,
            &[
                "quotas",
                "remove",
                "--client-id",
                "sensor-7",
                "producer_byte_rate",
                "consumer_byte_rate",
            ],
        );
        assert!(ok, "{err}");
        let (ok, out, _) = run(admin, &["quotas", "list"]);
        assert!(ok);
        assert_eq!(
            out,
            "user=<default> client-id=<default>\tproducer_byte_rate=2048\n"
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// `runnel acls`: add, list and remove ACLs that the broker then enforces on the other client
/// commands; a refused login stops it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_commands_add_list_and_remove_the_acls_the_broker_enforces() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::secured_config(dir.path(), "admin adm1n-s3cret\nalice a11ce-s3cret\n");
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    const ADMIN: (&str, &str) = ("admin", "adm1n-s3cret");
    const ALICE: (&str, &str) = ("alice", "a11ce-s3cret");
    tokio::task::spawn_blocking(move || {
        let run = |who: (&str, &str), args: &[&str], input: &[u8]| {
            let (ok, out, err, _) = runnel_as(&b, who, args, input);
            (ok, out, err)
        };
        let (ok, out, err) = run(
            ADMIN,
            &[
                "acls",
                "add",
                "--topic",
                "sensors.",
                "--prefixed",
                "--principal",
                "User:alice",
                "--operation",
                "write",
                "--operation",
                "create",
            ],
            b"",
        );
        assert!(ok, "{err}");
        assert_eq!(
            out,
            "created\ttopic\tsensors.\tprefixed\tUser:alice\t*\tWRITE\tALLOW\n\
             created\ttopic\tsensors.\tprefixed\tUser:alice\t*\tCREATE\tALLOW\n"
        );
        // Alice writes where the ACLs let her, and is refused elsewhere.
        let (ok, _, err) = run(ALICE, &["produce", "sensors.t1"], b"21.5\n");
        assert!(ok, "{err}");
        let (ok, _, err) = run(ALICE, &["produce", "other"], b"21.5\n");
        assert!(!ok && err.contains("TopicAuthorizationFailed"), "{err}");
        // Reading a topic she may not see is refused as such, not as a topic that does not
        // exist; so is a group she may not use, at once.
        let (ok, _, err) = run(ADMIN, &["produce", "other"], b"21.5\n");
        assert!(ok, "{err}");
        let (ok, _, err) = run(
            ALICE,
            &["consume", "other", "--from-beginning", "--max", "1"],
            b"",
        );
        assert!(!ok && err.contains("TopicAuthorizationFailed"), "{err}");
        let (ok, _, err) = run(
            ADMIN,
            &[
                "consume",
                "other",
                "--group",
                "g-admin",
                "--from-beginning",
                "--max",
                "1",
            ],
            b"",
        );
        assert!(ok, "{err}");
        let started = std::time::Instant::now();
        let (ok, _, err) = run(ALICE, &["groups", "describe", "g-admin"], b"");
        assert!(
            !ok && err.contains("not authorized to access group g-admin"),
            "{err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        // Listing the groups names no group of its own, which the ACLs would refuse.
        let (ok, out, err) = run(ALICE, &["groups", "list"], b"");
        assert!(
            ok && out.starts_with("GROUP") && err.is_empty(),
            "{out}{err}"
        );
        // She may not make ACLs herself.
        let (ok, _, err) = run(
            ALICE,
            &[
                "acls",
                "add",
                "--topic",
                "other",
                "--principal",
                "User:alice",
                "--operation",
                "write",
            ],
            b"",
        );
        assert!(!ok && err.contains("needs Alter on the cluster"), "{err}");
        // An operation the resource has no use for is refused, as kafka-acls does.
        let (ok, _, err) = run(
            ADMIN,
            &[
                "acls",
                "add",
                "--group",
                "g",
                "--principal",
                "User:alice",
                "--operation",
                "write",
            ],
            b"",
        );
        assert!(
            !ok && err.contains(
                "a group takes the operations all, read, delete, describe, describe-configs, \
                 alter-configs, not write"
            ),
            "{err}"
        );
        let (ok, out, err) = run(
            ADMIN,
            &["acls", "list", "--topic", "sensors.t1", "--matching"],
            b"",
        );
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 2, "{out}");
        // A principal without its type is refused, not taken to match nothing.
        let (ok, out, err) = run(ADMIN, &["acls", "list", "--principal", "alice"], b"");
        assert!(!ok && err.contains("is not a principal"), "{out}{err}");
        // A filter that matches nothing lists nothing, and is no error.
        let (ok, out, err) = run(ADMIN, &["acls", "list", "--topic", "no-such-topic"], b"");
        assert!(
            ok && out.is_empty() && err.contains("no ACLs matched"),
            "{out}{err}"
        );
        let (ok, out, err) = run(
            ADMIN,
            &[
                "acls",
                "remove",
                "--principal",
                "User:alice",
                "--operation",
                "write",
            ],
            b"",
        );
        assert!(ok, "{err}");
        assert_eq!(
            out,
            "removed\ttopic\tsensors.\tprefixed\tUser:alice\t*\tWRITE\tALLOW\n"
        );
        let (ok, _, err) = run(ALICE, &["produce", "sensors.t1"], b"21.6\n");
        assert!(!ok && err.contains("TopicAuthorizationFailed"), "{err}");
        // Allowed to see the topic but to write nowhere, she is refused a producer id: the
        // summary says so, not only that her records were purged.
        let (ok, _, err) = run(
            ADMIN,
            &[
                "acls",
                "add",
                "--principal",
                "User:alice",
                "--operation",
                "describe",
                "--topic",
                "sensors.t1",
            ],
            b"",
        );
        assert!(ok, "{err}");
        let (ok, _, err) = run(ALICE, &["produce", "sensors.t1"], b"21.6\n");
        let summary = err.lines().last().unwrap_or_default();
        assert!(
            !ok && summary.contains("fatal error: ClusterAuthorizationFailed")
                && !summary.contains("PurgeQueue"),
            "{err}"
        );
        let (ok, _, err) = run(ADMIN, &["acls", "remove"], b"");
        assert!(!ok && err.contains("say which ACLs to remove"), "{err}");
        // Listing needs Describe on the cluster: alice is refused, not told "no ACLs matched".
        let (ok, out, err) = run(ALICE, &["acls", "list"], b"");
        assert!(
            !ok && out.is_empty() && err.contains("the broker refused: ClusterAuthorizationFailed"),
            "{out}{err}"
        );
        // A refused login stops the command at once, with the broker's reason.
        let started = std::time::Instant::now();
        let (ok, _, err) = run(("admin", "guess"), &["acls", "list"], b"");
        assert!(!ok && err.contains("the broker refused the login"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// `runnel groups`: describe shows committed offsets, lag and the member holding a partition;
/// reset-offsets plans, refuses while the group has members, and commits with --execute;
/// delete removes the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_commands_describe_reset_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let b = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let ok = |out: std::process::Output| {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{err}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        ok(runnel(&["topics", "create", "gt", "-b", &b]));
        let lines: String = (0..10).map(|i| format!("r{i}\n")).collect();
        ok(runnel_with_input(
            &["produce", "gt", "-b", &b],
            lines.as_bytes(),
        ));
        let consume = ["consume", "gt", "--group", "gg", "-b", &b];
        ok(runnel(
            &[&consume[..], &["--from-beginning", "--max", "4"]].concat(),
        ));
        // The row of partition 0: topic, partition, current, end, lag, member, host, client.
        let row = || -> Vec<String> {
            let text = ok(runnel(&["groups", "describe", "gg", "-b", &b]));
            let line = text
                .lines()
                .find(|l| l.starts_with("gt "))
                .unwrap_or_else(|| panic!("{text}"));
            line.split_whitespace().map(String::from).collect()
        };
        assert_eq!(row()[..5], ["gt", "0", "4", "10", "6"]);
        // Every group, as kafka-consumer-groups --describe --all-groups: this one among them.
        let all = ok(runnel(&["groups", "describe", "--all-groups", "-b", &b]));
        let one = ok(runnel(&["groups", "describe", "gg", "-b", &b]));
        assert!(all.contains(&one), "{all}");
        let err = runnel(&["groups", "describe", "-b", &b]);
        assert!(!err.status.success(), "a group or --all-groups is needed");
        let listed = ok(runnel(&["groups", "list", "-b", &b]));
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["gg", "Empty", "0"]),
            "{listed}"
        );

        // A member reads the rest; while it is in the group, its offsets cannot be reset.
        let member = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args([&consume[..], &["--idle-timeout", "4s"]].concat())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while row()[5] == "-" {
            assert!(
                std::time::Instant::now() < deadline,
                "the member never showed"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(row()[5].starts_with("rdkafka-"), "{:?}", row());
        let reset = |to: &[&str], execute: bool| {
            let mut args = vec!["groups", "reset-offsets", "gg", "--topic", "gt", "-b", &b];
            args.extend_from_slice(to);
            if execute {
                args.push("--execute");
            }
            runnel(&args)
        };
        let out = reset(&["--to-earliest"], true);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("only be reset while it has no members"),
            "{err}"
        );
        assert!(member.wait_with_output().unwrap().status.success());
        assert_eq!(row()[..6], ["gt", "0", "10", "10", "0", "-"]);

        // Without --execute only the plan is printed.
        let plan = ok(reset(&["--to-earliest"], false));
        assert!(plan.contains("dry run"), "{plan}");
        assert!(
            plan.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["gt", "0", "10", "0"]),
            "{plan}"
        );
        assert_eq!(row()[2], "10");
        for (to, expect) in [
            (&["--to-earliest"][..], "0"),
            (&["--shift-by", "3"], "3"),
            (&["--shift-by", "-1"], "2"),
            (&["--to-offset", "99"], "10"),
            (&["--to-offset", "-5"], "0"),
            (&["--to-datetime", "2000-01-01T00:00:00Z"], "0"),
            (&["--to-latest"], "10"),
        ] {
            ok(reset(to, true));
            assert_eq!(row()[2], expect, "after {to:?}");
        }

        assert!(ok(runnel(&["groups", "delete", "gg", "-b", &b])).contains("deleted"));
        let out = runnel(&["groups", "describe", "gg", "-b", &b]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

        // The group's own configs: shown beside the broker's, set, refused with the reason,
        // removed.
        let configs =
            |extra: &[&str]| runnel(&[&["groups", "configs", "gg", "-b", &b][..], extra].concat());
        assert_eq!(
            ok(configs(&[])),
            "consumer.session.timeout.ms\t45000\tdefault\n\
             consumer.heartbeat.interval.ms\t5000\tdefault\n"
        );
        assert_eq!(
            ok(configs(&["--config", "consumer.session.timeout.ms=50000"])),
            "consumer.session.timeout.ms\t50000\tgroup\n\
             consumer.heartbeat.interval.ms\t5000\tdefault\n"
        );
        let out = configs(&["--config", "consumer.heartbeat.interval.ms=100"]);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("cannot change the configs of group gg")
                && said.contains("is less than group.consumer.min.heartbeat.interval.ms (5000)"),
            "{said}"
        );
        assert!(
            ok(configs(&["--delete-config", "consumer.session.timeout.ms"]))
                .starts_with("consumer.session.timeout.ms\t45000\tdefault\n")
        );

        // Two members of a group of a one-partition topic: the one holding no partition is
        // listed too, with dashes, as kafka-consumer-groups lists it.
        let members: Vec<_> = (0..2)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_runnel"))
                    .args([
                        "consume",
                        "gt",
                        "--group",
                        "gi",
                        "--idle-timeout",
                        "60s",
                        "-b",
                        &b,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = ok(runnel(&["groups", "describe", "gi", "-b", &b]));
            let idle = text.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() == 8 && words[..5] == ["-"; 5] && words[5].starts_with("rdkafka-")
            });
            if text.contains("2 member(s)") && idle && text.lines().any(|l| l.starts_with("gt ")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        for mut m in members {
            m.kill().unwrap();
            m.wait().unwrap();
        }
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[test]
fn example_configs_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // Their certificates and users files are where a gateway keeps them, not here.
            let out = runnel(&["config", "validate", "--skip-files", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n > 0, "examples/configs holds configs");
}

/// `runnel bench quic-floor` on a small fleet: every device's requests come back from the echo
/// child, and the report gives the round trips and both sides' CPU.
#[test]
fn bench_quic_floor_reports_the_round_trips_of_a_small_fleet() {
    let out = runnel(&[
        "bench",
        "quic-floor",
        "--devices",
        "20",
        "--interval",
        "50ms",
        "--duration",
        "2s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 20 devices x 20 round trips/s = 400 offered; a loaded machine may finish fewer.
    let done: f64 = text
        .split_once("devices, ")
        .and_then(|(_, rest)| rest.split_once(" round trips/s of 400 offered"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no round-trip count in {text:?}"));
    assert!(done > 100.0, "{text}");
    assert!(
        text.contains("cpu per round trip: devices ") && !text.contains("? us"),
        "{text}"
    );
}

/// `runnel bench transactions` against a broker: every phase completes (a transaction that
/// failed to commit, or a consumer that stalled, fails the run) and the report names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_transactions_runs_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let out = tokio::task::spawn_blocking(move || {
        runnel(&[
            "bench",
            "transactions",
            "--bootstrap",
            &bootstrap,
            "--records",
            "2000",
            "--per-transaction",
            "100,1000",
        ])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for phase in [
        "idempotent producer:",
        "transactions of    100 records:",
        "transactions of   1000 records:",
        "consume read_committed",
        "consume read_uncommitted",
    ] {
        assert!(text.contains(phase), "{phase} missing from {text}");
    }
    // 2,000 records in transactions of 100, then of 1000: 20 + 2 commits, each one marker.
    let end = |topic: &str| {
        let t = broker.broker.catalog.list();
        let t = t.iter().find(|t| t.name.starts_with(topic)).unwrap();
        t.partition(0).unwrap().log().log_end_offset()
    };
    assert_eq!(end("bench-txn100-"), 2020);
    assert_eq!(end("bench-txn1000-"), 2002);
    broker.shutdown().await;
}

/// A config in `dir` for a broker with its Kafka listener alone (on a free port), its data in
/// `dir/data`: the config's path and the bootstrap address.
fn kafka_only_config(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let port = common::free_port();
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\
             [listeners.quic]\nenabled = false\n[listeners.admin]\nenabled = false\n",
            dir.join("data")
        ),
    )
    .unwrap();
    (config, format!("127.0.0.1:{port}"))
}

/// `runnel serve --config config` as a child process under `ulimit -n limit` (which lowers the
/// hard limit too, so the broker cannot raise it), its stderr kept for the test to read.
fn serve_with_open_files_limit(config: &std::path::Path, limit: u32) -> common::BrokerProcess {
    let child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n {limit} && exec \"$0\" serve --config \"$1\""),
        ])
        .arg(env!("CARGO_BIN_EXE_runnel"))
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::BrokerProcess::new(child)
}

/// A raw client of the broker at `bootstrap`, once it listens (at most 20 s after its start).
async fn connected(bootstrap: &str) -> common::RawClient {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(s) = tokio::net::TcpStream::connect(bootstrap).await {
            return common::RawClient::from_stream(s);
        }
        assert!(
            std::time::Instant::now() < until,
            "the broker never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One request auto-creating more topics than the broker's open-files limit allows gets
/// POLICY_VIOLATION for those past a tenth of the limit kept free, so the broker still takes
/// connections, and opens every partition it made when started again under the same limit
/// (without the check it could do neither: each partition holds a file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creating_thousands_of_topics_leaves_the_broker_files_to_serve_and_restart() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let (config, bootstrap) = kafka_only_config(dir.path());
    let serve = || serve_with_open_files_limit(&config, 400);
    let broker = serve();
    let mut c = connected(&bootstrap).await;
    let topics = (0..600)
        .map(|i| {
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(format!("t{i}")))))
        })
        .collect();
    let request = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(true);
    let r = c.call(&request, 12).await;
    let made = r.topics.iter().filter(|t| t.error_code == 0).count();
    let refused = r.topics.iter().filter(|t| t.error_code == 44).count();
    let codes: std::collections::BTreeSet<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        made + refused,
        600,
        "only made or POLICY_VIOLATION: {codes:?}"
    );
    assert!(made >= 50 && refused > 0, "{made} made, {refused} refused");
    // Connections are still taken.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = connected(&bootstrap).await;
        client.call(&ApiVersionsRequest::default(), 3).await;
        clients.push(client);
    }
    drop(clients);
    drop(c);

    let stopped = broker.stop();
    let log = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        log.contains("new partitions refused") && log.contains("open files"),
        "{log}"
    );
    // Started again under the same limit: every partition opens, and clients connect.
    let _broker = serve();
    let mut c = connected(&bootstrap).await;
    let all = c
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(all.topics.len(), made);
    assert!(all.topics.iter().all(|t| t.error_code == 0));
    for _ in 0..20 {
        connected(&bootstrap)
            .await
            .call(&ApiVersionsRequest::default(), 3)
            .await;
    }
}

/// Segments that roll until they reach the share of the open-files limit kept free: `/health`
/// says so (503, with what to do), `/metrics` still has the process's figures (its `/proc`
/// files were opened at start), and a start under a lower limit warns that the segments hold
/// most of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_nearly_out_of_file_descriptors_says_so() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (common::free_port(), common::free_port());
    let config = dir.path().join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\
             [listeners.quic]\nenabled = false\n[listeners.admin]\naddress = \"127.0.0.1:{admin_port}\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let bootstrap = format!("127.0.0.1:{port}");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let serve = || serve_with_open_files_limit(&config, 400);
    let broker = serve();
    let mut c = connected(&bootstrap).await;
    assert!(common::http_get(admin, "/health").await.contains("ok"));
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("rolling")))
        .with_num_partitions(1)
        .with_replication_factor(-1)
        .with_configs(vec![
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("segment.bytes"))
                .with_value(Some(StrBytes::from_static_str("1024"))),
        ]);
    let made = c
        .call(&CreateTopicsRequest::default().with_topics(vec![topic]), 5)
        .await;
    assert_eq!(made.topics[0].error_code, 0);
    // Each batch of 700 bytes takes a segment of its own, until the rolls reach the share of the
    // limit kept free for connections (a tenth, at least 256): then /health says so.
    let mut health = String::new();
    for i in 0..600 {
        let record = common::record(0, None, &[b'x'; 700], runnel::broker::now_ms());
        let batch = common::encode_batch(&[record], kafka_protocol::records::Compression::None);
        c.call(&common::produce_request("rolling", 0, 1, batch), 9)
            .await;
        health = common::http_get(admin, "/health").await;
        if health.contains("503") {
            assert!(i > 10, "unhealthy from the start: {health}");
            break;
        }
    }
    assert!(
        health.contains("503")
            && health.contains("file descriptors")
            && health.contains("LimitNOFILE"),
        "{health}"
    );
    let metrics = common::http_get(admin, "/metrics").await;
    for family in [
        "process_open_fds ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ] {
        assert!(
            metrics.contains(&format!("\n{family}")),
            "{family}: {metrics}"
        );
    }
    drop(c);
    broker.stop();
    // Started again under a lower limit, its segments alone reach into the share kept free: it
    // says so at start.
    let broker = serve_with_open_files_limit(&config, 300);
    connected(&bootstrap).await;
    let stopped = broker.kill_with_output();
    let log = String::from_utf8_lossy(&stopped.stderr);
    assert!(log.contains("hold most of the open-files limit"), "{log}");
}

/// `runnel produce` places keys as Kafka's Java and console producers do (murmur2), so that a
/// key written by it and by a Java, kafkajs or franz-go producer lands in one partition (QA: 17
/// of 20 keys went elsewhere with librdkafka's CRC32 default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_places_keys_as_kafkas_default_partitioner() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let b2 = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let made = runnel(&["topics", "create", "keyed", "--partitions", "6", "-b", &b2]);
        assert!(made.status.success(), "{made:?}");
        let lines: String = (1..=20).map(|i| format!("sensor-{i}\tv{i}\n")).collect();
        let out = runnel_with_input(&["produce", "keyed", "-b", &b2], lines.as_bytes());
        assert!(out.status.success(), "{out:?}");
    })
    .await
    .unwrap();
    let topic = broker.broker.catalog.get("keyed").unwrap();
    let mut placed = 0;
    for p in 0..6 {
        let mut bytes = topic.partition(p).unwrap().log().read(0, 1 << 20).unwrap();
        while !bytes.is_empty() {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
            for r in set.records {
                let key = r.key.unwrap();
                let expected = runnel::plugins::output::partition_for(Some(&key), 6);
                assert_eq!(p, expected, "{}", String::from_utf8_lossy(&key));
                placed += 1;
            }
        }
    }
    assert_eq!(placed, 20);
    broker.shutdown().await;
}

/// As kafka-topics: a topic made without --partitions gets the broker's default partitions;
/// --if-not-exists and --if-exists make an existing or a missing topic no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_and_delete_take_kafka_topics_defaults_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.default_partitions = 3;
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let ok = |args: &[&str]| {
            let out = runnel(args);
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        ok(&["topics", "create", "d", "-b", &b]);
        assert!(ok(&["topics", "describe", "d", "-b", &b]).contains("partitions: 3"));
        let again = runnel(&["topics", "create", "d", "-b", &b]);
        assert!(!again.status.success());
        assert_eq!(
            ok(&["topics", "create", "d", "--if-not-exists", "-b", &b]),
            ""
        );
        ok(&["topics", "delete", "d", "-b", &b]);
        let gone = runnel(&["topics", "delete", "d", "-b", &b]);
        assert!(!gone.status.success());
        assert_eq!(ok(&["topics", "delete", "d", "--if-exists", "-b", &b]), "");
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

/// `runnel loggers` changes a running broker's log levels: a module set to DEBUG logs its debug
/// lines from then on and stops when reset; a bad level or name, removing the root's level and
/// an unknown broker are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loggers_commands_change_a_running_brokers_log_levels() {
    let dir = tempfile::tempdir().unwrap();
    let (config, bootstrap) = kafka_only_config(dir.path());
    let log_path = dir.path().join("broker.log");
    let broker = common::BrokerProcess::new(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    drop(connected(&bootstrap).await);
    let b = bootstrap.as_str();
    let ok = |args: &[&str]| {
        let out = runnel(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "runnel {args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = |args: &[&str]| {
        let out = runnel(args);
        assert!(!out.status.success(), "runnel {args:?} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let opened = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .matches("connection opened")
            .count()
    };
    let settle = || std::thread::sleep(std::time::Duration::from_millis(300));

    let listed = ok(&["loggers", "list", "-b", b]);
    assert!(listed.starts_with("root\tINFO\n"), "{listed}");
    assert!(listed.contains("runnel::net\tINFO\n"), "{listed}");
    ok(&["topics", "list", "-b", b]);
    settle();
    assert_eq!(opened(), 0, "no debug line at INFO");

    assert_eq!(
        ok(&["loggers", "set", "runnel::net=debug", "-b", b]),
        "set\trunnel::net=debug\n"
    );
    let listed = ok(&["loggers", "list", "-b", b]);
    assert!(listed.contains("runnel::net\tDEBUG\n"), "{listed}");
    assert!(listed.contains("runnel::storage\tINFO\n"), "{listed}");
    ok(&["topics", "list", "-b", b]);
    settle();
    assert!(opened() >= 2, "runnel::net logs its debug lines once set");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("log levels changed"), "{log}");

    ok(&["loggers", "reset", "runnel::net", "-b", b]);
    assert!(ok(&["loggers", "list", "-b", b]).contains("runnel::net\tINFO\n"));
    settle();
    let before = opened();
    ok(&["topics", "list", "-b", b]);
    settle();
    assert_eq!(opened(), before, "reset: no more debug lines");

    let why = refused(&["loggers", "set", "runnel::net=loud", "-b", b]);
    assert!(why.contains("not a supported log level"), "{why}");
    let why = refused(&["loggers", "set", "runnel net=debug", "-b", b]);
    assert!(why.contains("does not exist"), "{why}");
    let why = refused(&["loggers", "reset", "root", "-b", b]);
    assert!(why.contains("root logger is not allowed"), "{why}");
    let why = refused(&["loggers", "list", "--broker", "9", "-b", b]);
    assert!(why.contains("no broker 9"), "{why}");
    let out = broker.stop();
    assert!(out.status.success());
}

/// Every client command says the same when no broker listens at the bootstrap address, rather
/// than librdkafka's errors, which differ by command and some of which come after a 10 s
/// timeout.
#[test]
fn client_commands_say_at_once_that_no_broker_listens() {
    let port = common::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    for command in [
        &["topics", "list"][..],
        &["topics", "describe", "t"],
        &["groups", "list"],
        &["acls", "list"],
        &["quotas", "list"],
        &["loggers", "list"],
        &["consume", "t"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["-b", &bootstrap]).collect();
        let out = runnel(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?}");
        assert!(
            stderr.contains(&format!(
                "cannot connect to {bootstrap}: Connection refused"
            )),
            "{command:?}: {stderr}"
        );
    }
}
