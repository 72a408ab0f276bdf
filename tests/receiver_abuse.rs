//! The receiver under abuse: encoded slashes and query strings, traversal, unknown names in bulk,
//! slow headers and bodies, oversize bodies, garbage, forged and replayed signatures, floods.
//! Every case gets a prompt answer, and none makes a Kubernetes request (a stand-in API server
//! counts them), a Carerix request (the emulator's request log) or a write to PostgreSQL.

mod receiver_common;
mod sync_common;

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use carerix_operator::{
    carerix::Entity,
    metrics::Metrics,
    receiver::Limits,
    sync::{Settings, SyncManager, Target},
};
use carerix_sim::SimHandle;
use receiver_common::*;
use sync_common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const NS: &str = "team-a";

struct Abuse {
    rx: Rx,
    sim: SimHandle,
    target: Target,
    key: AppKey,
    name: String,
}

/// A receiver with one connection whose sync runs (against the emulator, into PostgreSQL), after
/// its initial pass, with the logs cleared.
async fn abuse(name: &str, tweak: impl FnOnce(&mut Limits)) -> Abuse {
    let sim = sim(20, |_| {}).await;
    let (kube, kube_requests) = counted_kube().await;
    let metrics = Arc::new(Metrics::new());
    let manager = Arc::new(SyncManager::new(kube.clone(), metrics.clone()));
    let mut limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    tweak(&mut limits);
    let rx = serve_receiver(kube, kube_requests, manager.clone(), metrics, limits).await;
    let key = AppKey::new();
    let mut target = target(&sim, &postgres_url(), name).await;
    let name = name.replace('_', "-");
    target.connection = format!("{NS}/{name}");
    rx.put(connection(NS, &name, Some(&key.pem), true));
    let settings = Settings {
        entities: vec![Entity::Candidates],
        interval: Duration::from_secs(3600),
        full_compare_interval: Duration::from_secs(3600),
    };
    manager.start(target.clone(), settings, "test", Some(key.pem.clone()));
    let progress = manager.progress(&target.connection).expect("running");
    assert!(eventually(Duration::from_secs(60), || async { progress.initial_done() }).await, "initial sync");
    // The sync may go on after its initial pass (the first comparison, an incremental pass):
    // wait until it has been quiet for two seconds, so only requests made for the tests count.
    let quiet_since = std::time::Instant::now();
    let mut seen = sim.sim().request_log().len();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = sim.sim().request_log().len();
        if now == seen || quiet_since.elapsed() > Duration::from_secs(60) {
            break;
        }
        seen = now;
    }
    sim.sim().clear_logs();
    Abuse { rx, sim, target, key, name }
}

impl Abuse {
    /// Rows and processed events in the sink, to compare before and after.
    async fn sink(&self) -> (std::collections::BTreeMap<String, (bool, serde_json::Value)>, i64) {
        let client = self.target.pool.get().await.expect("connection");
        let events: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", self.target.schema.table("processed_events")), &[])
            .await
            .expect("count")
            .get(0);
        (rows(&self.target, Entity::Candidates).await, events)
    }

    /// Nothing reached Kubernetes, Carerix or PostgreSQL.
    async fn assert_untouched(
        &self,
        before: &(std::collections::BTreeMap<String, (bool, serde_json::Value)>, i64),
    ) {
        assert_eq!(self.rx.kube_requests.load(Ordering::SeqCst), 0, "a Kubernetes request was made");
        let log = self.sim.sim().request_log();
        assert!(
            log.is_empty(),
            "Carerix requests were made: {:?}",
            log.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        assert_eq!(&self.sink().await, before, "the sink changed");
    }

    fn url(&self) -> String {
        self.rx.url(NS, &self.name)
    }
}

/// POSTs a raw path (sent as is, not normalised) and returns the status code.
async fn post_raw(addr: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    status_of(&answer)
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn paths_that_are_not_dns_names_are_404_at_once_with_nothing_looked_up() {
    let a = abuse("abuse_paths", |_| {}).await;
    let before = a.sink().await;
    let body = payload("e1", "1");
    let sig = format!("Cx-Signature: {}\r\n", a.key.sign(body.as_bytes()));
    let name = a.name.clone();
    for path in [
        // The encoded slash and query string that once opened a Kubernetes watch.
        "/webhooks/x%2Fcarerixconnections%3Fwatch%3Dtrue%26z%3D/a".to_string(),
        format!("/webhooks/{NS}%2F{name}/x"),
        format!("/webhooks/{NS}/{name}%3Fwatch%3Dtrue"),
        format!("/webhooks/{NS}/{name}%00"),
        format!("/webhooks/..%2F{NS}/{name}"),
        format!("/webhooks/../{name}"),
        format!("/webhooks/{NS}/.."),
        format!("/webhooks/%2e%2e/{name}"),
        format!("/webhooks/{NS}/%2E%2E"),
        format!("/webhooks/{NS}/%ff%fe"),
        format!("/webhooks/{}/{name}", NS.to_uppercase()),
        format!("/webhooks/{NS}/{}", "a".repeat(64)),
        format!("/webhooks/{NS}/-{name}"),
        format!("/webhooks/{NS}/{name}/extra"),
        format!("/webhooks/{NS}.x/{name}"),
    ] {
        assert_eq!(post_raw(&a.rx.addr(), &path, &sig, body.as_bytes()).await, 404, "{path}");
    }
    a.assert_untouched(&before).await;
    // The real connection still works after all that.
    let answer = reqwest::Client::new()
        .post(a.url())
        .header("Cx-Signature", a.key.sign(body.as_bytes()))
        .body(body)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn unknown_names_in_bulk_get_401_like_a_bad_signature_and_cost_nothing() {
    let a = abuse("abuse_bulk", |_| {}).await;
    let before = a.sink().await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let body = payload("e1", "1");
    let sig = a.key.sign(body.as_bytes());
    let answers = futures::future::join_all((0..400).map(|i| {
        let req = http
            .post(a.rx.url(&format!("ns-{}", i % 7), &format!("nobody-{i}")))
            .header("Cx-Signature", sig.clone())
            .body(body.clone());
        async move { req.send().await.expect("an answer").status().as_u16() }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 401), "{answers:?}");
    assert_eq!(a.rx.deliveries("unknown_connection"), 400);
    assert!(a.rx.rechecks().is_empty(), "no re-check for connections that do not exist");
    a.assert_untouched(&before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn garbage_forged_and_replayed_signatures_are_refused_and_change_nothing() {
    let a = abuse("abuse_signatures", |_| {}).await;
    let before = a.sink().await;
    let body = payload("e-forged", "1");
    let good = a.key.sign(body.as_bytes());
    let other_body = payload("e-other", "2");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("".into(), body.clone().into_bytes()),
        ("not base64 at all!".into(), body.clone().into_bytes()),
        ("AAAA".into(), body.clone().into_bytes()),
        ("A".repeat(8192), body.clone().into_bytes()),
        (AppKey::new().sign(body.as_bytes()), body.clone().into_bytes()),
        // A captured signature replayed on another body, or on the body with one byte changed.
        (good.clone(), other_body.clone().into_bytes()),
        (good.clone(), body.replace("e-forged", "e-forgee").into_bytes()),
        (good.clone(), format!("{body} ").into_bytes()),
        (good.clone(), Vec::new()),
        // A signature of another body on that body's neighbour.
        (a.key.sign(other_body.as_bytes()), body.clone().into_bytes()),
    ];
    cases.push((format!("{good}\u{7f}"), body.clone().into_bytes()));
    for (sig, payload) in cases {
        let mut req = http.post(a.url()).body(payload);
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&sig) {
            req = req.header("Cx-Signature", value);
        }
        assert_eq!(req.send().await.expect("an answer").status().as_u16(), 401, "signature {sig:?}");
    }
    // Garbage bodies signed by nobody.
    for garbage in [&b"\x00\xff\xfe"[..], b"{", b"[]", &[b'x'; 4096]] {
        let status = http
            .post(a.url())
            .header("Cx-Signature", good.clone())
            .body(garbage.to_vec())
            .send()
            .await
            .expect("an answer")
            .status()
            .as_u16();
        assert_eq!(status, 401);
    }
    assert_eq!(a.rx.rechecks().len(), 1, "a flood of forgeries asks for one re-check a minute");
    a.assert_untouched(&before).await;

    // A valid delivery lands once; replayed as is, it is acknowledged without any work.
    let id = a.sim.sim().list_records(TENANT, sim_entity(Entity::Candidates)).expect("records")[0]["_id"]
        .as_str()
        .expect("id")
        .to_string();
    let real = payload("e-real", &id);
    let sig = a.key.sign(real.as_bytes());
    let send = || http.post(a.url()).header("Cx-Signature", sig.clone()).body(real.clone()).send();
    assert_eq!(send().await.expect("answer").status().as_u16(), 200);
    let after_first = a.sink().await;
    a.sim.sim().clear_logs();
    for _ in 0..20 {
        assert_eq!(send().await.expect("answer").status().as_u16(), 200);
    }
    assert_eq!(a.rx.deliveries("duplicate"), 20);
    a.assert_untouched(&after_first).await;
    assert_eq!(after_first.1, before.1 + 1, "one processed event for 21 deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn oversize_bodies_are_refused_without_being_read() {
    let a = abuse("abuse_oversize", |_| {}).await;
    let before = a.sink().await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let sig = format!("Cx-Signature: {}\r\n", a.key.sign(&big));
    let path = format!("/webhooks/{NS}/{}", a.name);
    // Declared too large: refused from the headers alone (only the head is sent here).
    let mut stream = TcpStream::connect(a.rx.addr()).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{sig}\r\n", big.len());
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer before the body")
        .expect("read");
    assert_eq!(status_of(&answer[..n]), 413);
    // Streamed without a length (chunked): cut off at the cap.
    let mut stream = TcpStream::connect(a.rx.addr()).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{sig}\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..17 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    assert_eq!(status_of(&answer[..n]), 413);
    assert_eq!(a.rx.deliveries("too_large"), 2);
    a.assert_untouched(&before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn slow_headers_and_slow_bodies_are_cut_off_by_their_timeouts() {
    let a = abuse("abuse_slow", |_| {}).await;
    let before = a.sink().await;
    let path = format!("/webhooks/{NS}/{}", a.name);

    // Headers dripped one byte at a time: the connection is closed after the header timeout (1 s).
    // The server's timer starts when it accepts the connection: start ours before connecting.
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(a.rx.addr()).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    stream.write_all(head.as_bytes()).await.expect("write");
    let closed = async {
        let mut buf = [0u8; 256];
        loop {
            // Keep dripping; the server must close on us regardless.
            if stream.write_all(b"a").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {} // an error answer (408); wait for the close
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the slow-header connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the header timeout");

    // A body dripped one byte at a time: 408 after the body timeout (1 s).
    let body = payload("e-slow", "1");
    let mut stream = TcpStream::connect(a.rx.addr()).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nCx-Signature: {}\r\n\r\n",
        body.len(),
        a.key.sign(body.as_bytes())
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let (mut read, mut write) = stream.into_split();
    let drip = tokio::spawn(async move {
        for b in body.bytes() {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut answer))
        .await
        .expect("an answer while the body still drips")
        .expect("read");
    assert_eq!(status_of(&answer[..n]), 408);
    drip.abort();
    assert_eq!(a.rx.deliveries("slow_body"), 1);
    a.assert_untouched(&before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_flood_is_limited_per_connection_and_in_flight_while_probes_still_answer() {
    let a = abuse("abuse_flood", |l| {
        l.rate_per_second = std::num::NonZeroU32::new(5).expect("non-zero");
        l.max_concurrency = 4;
        l.body_read_timeout = Duration::from_secs(3);
    })
    .await;
    let before = a.sink().await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let body = payload("e-flood", "1");
    let forged = AppKey::new().sign(body.as_bytes());
    let burst = |name: String| {
        let http = http.clone();
        let (body, forged) = (body.clone(), forged.clone());
        let url = a.rx.url(NS, &name);
        async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r =
                    http.post(&url).header("Cx-Signature", forged.clone()).body(body.clone()).send().await;
                statuses.push(r.expect("an answer").status().as_u16());
            }
            statuses
        }
    };
    // The known connection and an unknown one are limited alike: 429 says nothing about existence.
    let known = burst(a.name.clone()).await;
    let unknown = burst("nobody".into()).await;
    for statuses in [&known, &unknown] {
        assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
        assert!(statuses.contains(&429), "a burst of 40 is limited at 5/s: {statuses:?}");
        assert!(
            statuses.iter().filter(|s| **s == 401).count() >= 10,
            "the burst allowance passes: {statuses:?}"
        );
    }
    // Another connection name is not slowed by the first one's flood.
    let other = http
        .post(a.rx.url(NS, "another"))
        .header("Cx-Signature", forged.clone())
        .body(body.clone())
        .send()
        .await
        .expect("answer");
    assert_eq!(other.status().as_u16(), 401);

    // Four requests hold their slots (bodies not sent yet): the fifth is answered 503 at once,
    // and the probe port answers all along.
    let path = format!("/webhooks/{NS}/{}", a.name);
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(a.rx.addr()).await.expect("connect");
        let head = format!(
            "POST /webhooks/{NS}/hold-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nCx-Signature: x\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        held.push(s);
    }
    // Once the server has read all four heads, the fifth request finds no slot (the held ones
    // are let go after the 3 s body timeout, so ask within 2 s).
    let mut answers = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answers.push(post_raw(&a.rx.addr(), &path, "Cx-Signature: x\r\n", body.as_bytes()).await);
        if answers.last() == Some(&503) {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&503), "the fifth request is shed: {answers:?}");
    let health = reqwest::get(format!("{}/healthz", a.rx.probes)).await.expect("probe answers");
    assert_eq!(health.status().as_u16(), 200);
    assert!(a.rx.deliveries("overloaded") >= 1);
    drop(held);
    a.assert_untouched(&before).await;
}
