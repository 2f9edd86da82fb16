//! Operating plugins: hot reload of a changed config file through the admin API and by SIGHUP
//! to a real `runnel serve` with producers running meanwhile; `runnel plugin list|reload|test`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::wasm::wasm_dir;

/// A config file: Kafka and admin on the given addresses, the JSON filter with `condition` on
/// topic `readings`.
fn write_config(
    path: &Path,
    data: &Path,
    kafka: &str,
    admin: &str,
    plugin_path: &Path,
    condition: &str,
) {
    let text = format!(
        r#"
[broker]
data_dir = "{data}"

[listeners.kafka]
address = "{kafka}"

[listeners.quic]
enabled = false

[listeners.admin]
enabled = true
address = "{admin}"

[[plugins.load]]
name = "hot"
path = "{plugin}"
config = "{condition}"

[[plugins.bindings]]
topic = "readings"
chain = ["hot"]
"#,
        data = data.display(),
        plugin = plugin_path.display(),
    );
    std::fs::write(path, text).unwrap();
}

/// An HTTP/1.1 request to the admin listener; the status code and body.
async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_from(addr, method, path, None).await
}

/// [`http`] with an `Origin` header, as a browser sends from a web page.
async fn http_from(addr: &str, method: &str, path: &str, origin: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: runnel\r\n{origin}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn producer(bootstrap: &str) -> FutureProducer {
    common::client_config(bootstrap)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces `{"n":i,"temp":t}` for each (i, t), keyed `i`; panics on any failed delivery.
async fn produce(p: &FutureProducer, readings: &[(usize, u32)]) {
    let records: Vec<(String, String)> = readings
        .iter()
        .map(|(i, t)| (i.to_string(), format!(r#"{{"n":{i},"temp":{t}}}"#)))
        .collect();
    let mut futures = Vec::new();
    for (key, value) in &records {
        let rec = FutureRecord::to("readings")
            .key(key)
            .payload(value)
            .partition(0);
        futures.push(p.send(rec, Duration::from_secs(10)));
    }
    for f in futures {
        f.await.expect("delivery");
    }
}

/// Reads `readings` from the start until a record keyed `last` arrives; the keys in order.
fn keys_until(bootstrap: &str, last: usize) -> Vec<usize> {
    let consumer = common::reader(bootstrap, "readings");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let k: usize = std::str::from_utf8(m.key().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            keys.push(k);
            if k == last {
                return keys;
            }
        }
    }
    panic!("key {last} never arrived; got {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_swaps_the_filter_while_producers_run_and_keeps_it_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runnel.toml");
    let wasm = wasm_dir().join("json_filter.wasm");
    let data = dir.path().join("data");
    write_config(
        &file,
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &wasm,
        "temp > 20",
    );
    let cfg = runnel::Config::load(Some(&file)).unwrap();
    let broker = runnel::start_broker_from(cfg, Some(file.clone()))
        .await
        .unwrap();
    let bootstrap = broker.bootstrap();
    let admin = broker.admin_addr.unwrap().to_string();
    let p = producer(&bootstrap);

    // Before: temp > 20 keeps 22 and 30.
    produce(&p, &[(0, 22), (1, 30), (2, 10)]).await;

    // A producer keeps sending readings every filter keeps while the plugins are swapped.
    // It counts the readings it has started to send and those acknowledged.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let steady = producer(&bootstrap);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, acked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop2, sent2, acked2) = (stop.clone(), sent.clone(), acked.clone());
    let background = tokio::spawn(async move {
        let mut n = 1000;
        while !stop2.load(Ordering::Relaxed) {
            sent2.fetch_add(1, Ordering::SeqCst);
            produce(&steady, &[(n, 90)]).await;
            acked2.fetch_add(1, Ordering::SeqCst);
            n += 1;
        }
        n
    });
    // Waits until every reading the steady producer had started to send by now is acknowledged,
    // and one more: a reading sent after this point.
    let one_more_acked = || {
        let (sent, acked) = (sent.clone(), acked.clone());
        async move {
            let want = sent.load(Ordering::SeqCst) + 1;
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.load(Ordering::SeqCst) < want {
                assert!(Instant::now() < deadline, "the steady producer is stuck");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // One reading acknowledged before the reload.
    one_more_acked().await;
    let calls = async || {
        let (_, body) = http(&admin, "GET", "/plugins").await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list["plugins"][0]["calls"].as_u64().unwrap()
    };
    let before = calls().await;
    assert!(before >= 1);

    write_config(
        &file,
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &wasm,
        "temp > 25",
    );
    // Not from a web page (a cross-site form post): nothing is reloaded.
    let (status, body) = http_from(
        &admin,
        "POST",
        "/plugins/reload",
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(&admin, "GET", "/plugins").await;
    assert!(status == 200 && body.contains("\"reloads\":0"), "{body}");
    let (status, body) = http(&admin, "POST", "/plugins/reload").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["plugins"], 1);
    assert_eq!(report["bindings"], 1);
    // Port 0 in the file differs from nothing the running broker has: no restart needed.
    assert_eq!(report["needs_restart"], serde_json::json!([]));
    // The plugin's counters go on from where they were.
    assert!(calls().await >= before);

    // After: temp > 25 keeps only 30.
    produce(&p, &[(3, 22), (4, 30)]).await;

    // A reload that cannot load its plugin changes nothing.
    write_config(
        &file,
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &dir.path().join("missing.wasm"),
        "temp > 0",
    );
    let (status, body) = http(&admin, "POST", "/plugins/reload").await;
    assert_eq!(status, 422, "{body}");
    // The config check names the key and line of the missing file.
    assert!(
        body.contains("plugins.load[0].path") && body.contains("missing.wasm: no such file"),
        "{body}"
    );
    // Nor one whose plugin refuses its new config: the error names the plugin's key.
    write_config(
        &file,
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &wasm_dir().join("json_filter.wasm"),
        "temp >> 0",
    );
    let (status, body) = http(&admin, "POST", "/plugins/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("plugins.load[0]: plugin hot: init refused its config"),
        "{body}"
    );
    // Nor an empty file (one cut short): it would have unloaded every plugin.
    std::fs::write(&file, "").unwrap();
    let (status, body) = http(&admin, "POST", "/plugins/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("the config file is empty"), "{body}");
    produce(&p, &[(5, 22), (6, 30)]).await;

    // And one sent after the reloads.
    one_more_acked().await;
    stop.store(true, Ordering::Relaxed);
    let next = background.await.unwrap();
    produce(&p, &[(7, 30)]).await;
    p.flush(Duration::from_secs(10)).unwrap();

    let keys = tokio::task::spawn_blocking(move || keys_until(&bootstrap, 7))
        .await
        .unwrap();
    let filtered: Vec<usize> = keys.iter().copied().filter(|k| *k < 1000).collect();
    assert_eq!(filtered, vec![0, 1, 4, 6, 7]);
    // Every reading of the steady producer was acknowledged and stored once, in order.
    let steady: Vec<usize> = keys.iter().copied().filter(|k| *k >= 1000).collect();
    assert_eq!(steady, (1000..next).collect::<Vec<_>>());
    assert!(
        steady.len() >= 2,
        "the steady producer ran across the reload"
    );

    let (status, body) = http(&admin, "GET", "/plugins").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["reloads"], 1);
    assert_eq!(list["plugins"][0]["name"], "hot");
    assert_eq!(
        list["plugins"][0]["topics"],
        serde_json::json!(["readings"])
    );
    assert!(list["plugins"][0]["calls"].as_u64().unwrap() >= 3, "{body}");

    // The CLI shows the same.
    let out = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["plugin", "list", "--admin", &admin])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.lines().find(|l| l.starts_with("hot ")).expect(&text);
    assert!(
        line.contains("readings") && line.contains("json_filter.wasm"),
        "{line}"
    );
    assert!(text.contains("reloads since start: 1"), "{text}");
    broker.shutdown().await;
}

/// Kills the child on drop, so a failed assertion leaves no broker behind.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_broker_and_the_cli_reload_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runnel.toml");
    let wasm = wasm_dir().join("json_filter.wasm");
    let data = dir.path().join("data");
    let kafka = format!("127.0.0.1:{}", common::free_port());
    let admin = format!("127.0.0.1:{}", common::free_port());
    write_config(&file, &data, &kafka, &admin, &wasm, "temp > 20");
    let serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&admin).await.is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = producer(&kafka);
    produce(&p, &[(0, 22), (1, 30)]).await;

    write_config(&file, &data, &kafka, &admin, &wasm, "temp > 25");
    let hup = Command::new("kill")
        .args(["-HUP", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(&admin, "GET", "/plugins").await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        if list["reloads"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&p, &[(2, 22), (3, 30)]).await;
    p.flush(Duration::from_secs(10)).unwrap();
    let bootstrap = kafka.clone();
    let keys = tokio::task::spawn_blocking(move || keys_until(&bootstrap, 3))
        .await
        .unwrap();
    assert_eq!(keys, vec![0, 1, 3]);

    // `runnel plugin reload` names what is wrong and exits non-zero; the broker keeps serving.
    std::fs::write(&file, "[plugins]\ncall_timeout = \"soon\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["plugin", "reload", "--admin", &admin])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("call_timeout"), "{err}");
    produce(&p, &[(4, 30)]).await;
    drop(serve);
}

fn plugin_test(wasm: &str, input: &str, config: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["plugin", "test"])
        .arg(wasm_dir().join(wasm))
        .arg("--input")
        .arg(&file)
        .args(["--config", config])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `runnel plugin test` runs each kind of plugin over sample lines and says what it did.
#[test]
fn plugin_test_shows_what_filters_transforms_and_quota_policies_do() {
    let records = r#"{"key":"d1","value":{"device":"d1","temp":25.5,"owner":"alice"}}
{"key":"d2","value":{"device":"d2","temp":18}}
# comments and blank lines are skipped

{"key":"d3","value":"not json","headers":{"src":"lab"}}
"#;
    let (ok, out) = plugin_test("json_filter.wasm", records, "temp > 20", &[]);
    assert!(ok, "{out}");
    assert!(out.contains("filter plugin"), "{out}");
    let kept: Vec<&str> = out.lines().filter(|l| l.contains(" kept ")).collect();
    assert_eq!(kept.len(), 1, "{out}");
    // The value is shown as written, field order kept.
    assert!(
        kept[0].contains(r#"key=d1 value={"device":"d1","temp":25.5,"owner":"alice"}"#),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.contains(" dropped ")).count(), 2);
    assert!(out.contains("kept 1 of 3 records"), "{out}");

    let (ok, out) = plugin_test(
        "redact_enrich.wasm",
        records,
        r#"{"mask": ["owner"], "headers": {"gateway-id": "gw-7"}, "copy_to": "audit"}"#,
        &["--topic", "readings"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("transform plugin"), "{out}");
    assert!(
        out.contains(r#"-> readings      key=d1 value={"device":"d1","temp":25.5,"owner":"***"} headers={gateway-id=gw-7}"#),
        "{out}"
    );
    assert!(out.contains("-> audit"), "{out}");
    assert!(
        out.contains("3 records in, 6 out (3 routed to other topics)"),
        "{out}"
    );
    // A route the broker refuses whatever its topics (an internal topic) fails as there.
    let (ok, out) = plugin_test(
        "redact_enrich.wasm",
        records,
        r#"{"copy_to": "__consumer_offsets"}"#,
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED: plugin redact_enrich: bad answer: routes a record to a topic the broker refuses")
            && out.contains("internal topics"),
        "{out}"
    );

    let requests = r#"{"client_id":"a","bytes":600000,"now_ms":0}
{"client_id":"a","bytes":600000,"now_ms":100}
{"client_id":"b","bytes":1000,"now_ms":100}
"#;
    let (ok, out) = plugin_test(
        "token_bucket.wasm",
        requests,
        r#"rate = "1MiB/s", burst = "1MiB""#,
        &[],
    );
    assert!(ok, "{out}");
    assert!(out.contains("quota policy"), "{out}");
    let decisions: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("client_id="))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(decisions, ["allow", "throttle", "allow"], "{out}");

    // A failing plugin: every batch says why, and the exit status is non-zero.
    let (ok, out) = plugin_test("faulty_filter.wasm", records, "trap", &["--batch", "2"]);
    assert!(!ok);
    assert_eq!(
        out.matches("FAILED: plugin faulty_filter: trapped: panicked at faulty-filter/src/lib.rs:")
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("2 call(s) failed"), "{out}");
    // A failing quota policy too.
    let (ok, out) = plugin_test("faulty_quota.wasm", requests, "trap", &[]);
    assert!(!ok, "{out}");
    assert_eq!(
        out.matches("FAILED: plugin faulty_quota: trapped: panicked at")
            .count(),
        3,
        "{out}"
    );
    assert!(out.contains("3 call(s) failed"), "{out}");
}
