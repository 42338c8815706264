//! The socket cannot be stalled: 1000 idle connections, slowloris clients, oversized and
//! malformed requests at once still leave a legitimate client its token promptly; busy
//! connections are capped per uid without touching other uids; shutdown drains in-flight
//! requests; the fast path answers as hyper does and hands it the rest of a connection.
//! Bounds are generous: this checks behaviour, the benchmarks measure speed.

#![allow(clippy::disallowed_methods)]
// real processes on the real clock: measured, not scheduled
// Helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use asset_agent::api::MAX_HEADERS;
use asset_agent::client;
use common::api::{NOBODY, config_with_api, curl_as, open_to_everyone, raw, root};
use common::{Agent, Device, emulator, get, wait_for_token};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use wire::clock::Clock;

const IDLE: usize = 1000;
/// A legitimate request must be answered within this (generous) bound.
const PROMPT: Duration = Duration::from_secs(5);

/// This process holds both ends of well over a thousand connections.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.map_or(16_384, |m| m.min(16_384));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: lim.maximum,
        },
    )
    .unwrap();
    assert!(
        want >= 4096,
        "the hard open-files limit is too low for this test"
    );
}

/// Sends a request head one byte every 200 ms, forever; returns how long the server let
/// it go on before closing the connection.
async fn slowloris(socket: std::path::PathBuf) -> Duration {
    let started = Instant::now();
    let mut s = UnixStream::connect(&socket).await.unwrap();
    let head = b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    for b in head.iter().chain(std::iter::repeat(&b'a')) {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slowloris never cut off"
        );
    }
    started.elapsed()
}

#[tokio::test]
async fn idle_slowloris_and_bad_requests_do_not_stall_a_legitimate_client() {
    raise_fd_limit();
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = config_with_api(&dev, &emu, "allow_gids = [4242]");
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let socket = dev.socket();

    // 1000 idle connections from this uid, held open.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        idle.push(UnixStream::connect(&socket).await.unwrap());
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // More keep arriving while the legitimate client works.
    let trickle = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut more = Vec::new();
            for _ in 0..300 {
                if let Ok(s) = UnixStream::connect(&socket).await {
                    more.push(s);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            more
        })
    };
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(slowloris(socket.clone())))
        .collect();

    // Oversized head, too many headers, garbage: refused at once, nobody else affected.
    let big = format!(
        "GET /v1/token HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /v1/token HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let wait = Duration::from_secs(5);
    let (big, many, garbage, bad_version) = tokio::join!(
        raw(&socket, big.as_bytes(), wait),
        raw(&socket, many.as_bytes(), wait),
        raw(&socket, b"\x16\x03\x01 not http at all\r\n\r\n", wait),
        raw(
            &socket,
            b"GET /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            wait
        ),
    );
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert!(many.starts_with("HTTP/1.1 431"), "{many}");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(bad_version.starts_with("HTTP/1.1 400"), "{bad_version}");
    for answer in [&big, &many, &garbage, &bad_version] {
        assert!(!answer.contains("eyJ"));
    }
    // The header-field cap is exact: MAX_HEADERS fields are served, one more is refused.
    let fields = |n: usize| {
        let extra: String = (1..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /v1/token HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
    };
    let at_cap = raw(&socket, fields(MAX_HEADERS).as_bytes(), wait).await;
    let over_cap = raw(&socket, fields(MAX_HEADERS + 1).as_bytes(), wait).await;
    assert!(at_cap.starts_with("HTTP/1.1 200"), "{at_cap}");
    assert!(over_cap.starts_with("HTTP/1.1 431"), "{over_cap}");

    // The legitimate client, same uid as the attackers: prompt every time.
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = tokio::time::timeout(PROMPT, client::get_json(&socket, "/v1/token"))
            .await
            .expect("answered promptly")
            .unwrap();
        assert_eq!(r.status, 200);
        latencies.push(t.elapsed());
    }
    // And one under another uid, if this test may switch uids.
    if root() {
        open_to_everyone(&dev);
        let s = socket.clone();
        let t = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            curl_as(NOBODY, 4242, &[], &s, "GET", "/v1/token", None)
        })
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(t.elapsed() < PROMPT);
    }
    latencies.sort();
    eprintln!(
        "token latency under attack: median {:?}, max {:?} ({} requests)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );

    // Slowloris clients are cut off by the header timeout (5 s), bounded generously.
    for s in slow {
        let lasted = s.await.unwrap();
        assert!(
            lasted < Duration::from_secs(15),
            "slowloris lasted {lasted:?}"
        );
    }
    let more = trickle.await.unwrap();
    let metrics = String::from_utf8_lossy(&get(&socket, "/metrics").await.body).into_owned();
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("asset_agent_api_connections_evicted_total "))
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("idle connections evicted to make room: {evicted}");
    assert!(evicted >= (IDLE - 32) as u64, "evicted {evicted}");
    drop((idle, more));
    agent.stop().await;
}

#[tokio::test]
async fn busy_connections_are_capped_per_uid_without_touching_other_uids() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = config_with_api(
        &dev,
        &emu,
        "allow_gids = [4242]\nmax_connections_per_uid = 4",
    );
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let socket = dev.socket();

    // Four watch streams keep four connections of this uid busy: they cannot be evicted.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut w = client::watch(&socket).await.unwrap();
        assert_eq!(w.status, 200);
        w.next_line().await.unwrap().unwrap();
        streams.push(w);
    }
    let r = client::get_json(&socket, "/v1/token").await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("\"busy\""));
    assert_eq!(r.headers["retry-after"], "1");

    if root() {
        open_to_everyone(&dev);
        let s = socket.clone();
        let r = tokio::task::spawn_blocking(move || {
            curl_as(NOBODY, 4242, &[], &s, "GET", "/v1/token", None)
        })
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Closing one stream frees a place.
    streams.pop();
    let mut ok = false;
    for _ in 0..50 {
        if client::get_json(&socket, "/v1/token").await.unwrap().status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the place was freed");
    drop(streams);
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    // Cannot be met: waits the whole min_ttl_wait (2 s), then answers 503.
    let socket = dev.socket();
    let in_flight =
        tokio::spawn(async move { client::get_json(&socket, "/v1/token?min_ttl=100000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    agent.cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("answered")
        .unwrap()
        .expect("a response, not a reset connection");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::timeout(Duration::from_secs(10), agent.running.wait())
        .await
        .expect("stopped after draining");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dev.socket().exists(), "socket removed");
}

/// Without pressure to evict it, a slowloris client is cut off by the header timeout
/// (5 s), and a connected-but-silent one too.
#[tokio::test]
async fn slowloris_and_silent_clients_are_cut_off_by_the_header_timeout() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let silent = async {
        let started = Instant::now();
        let mut s = UnixStream::connect(dev.socket()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0) | Err(_))),
            "closed, not answered: {n:?}"
        );
        started.elapsed()
    };
    // Answered once, then silent: the timeout runs again from the answer.
    let quiet_after_answer = async {
        let mut s = UnixStream::connect(dev.socket()).await.unwrap();
        s.write_all(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let answered = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0) | Err(_))),
            "closed, not answered: {n:?}"
        );
        answered.elapsed()
    };
    // A request sent well after connecting: the accept loop's one poll of the connection
    // finds nothing, so the connection becomes a task, which the socket must then wake.
    let late = async {
        let mut s = UnixStream::connect(dev.socket()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer))
            .await
            .expect("a late request is answered")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    };
    let (slow, silent, quiet, ()) =
        tokio::join!(slowloris(dev.socket()), silent, quiet_after_answer, late);
    for lasted in [slow, silent, quiet] {
        assert!(
            lasted >= Duration::from_secs(4),
            "cut off early: {lasted:?}"
        );
        assert!(lasted < Duration::from_secs(15), "lasted {lasted:?}");
    }
    agent.stop().await;
}

/// The answers of one connection, split by their `content-length`, each with its `date`
/// value blanked (it may differ by a second).
fn answers(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let head: String = head
            .split_inclusive("\r\n")
            .map(|l| {
                if l.starts_with("date: ") {
                    "date: -\r\n"
                } else {
                    l
                }
            })
            .collect();
        out.push(head + &String::from_utf8_lossy(&rest[end..end + len]));
        rest = &rest[end + len..];
    }
    out
}

/// The fast path's answers are hyper's byte for byte; the first request it does not
/// answer passes the connection to hyper with what was read (pipelined requests included),
/// and `Connection: close` closes after the answer on both.
#[tokio::test]
async fn the_fast_path_answers_as_hyper_does_and_hands_it_the_rest() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let live = "GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    let plain = "GET /v1/token HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n";
    let bad_close = "GET /v1/token?min_ttl=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let wait = Duration::from_secs(10);
    // All in one write: the fast path answers the first two, hyper the rest.
    let both = format!(
        "{live}{plain}GET /v1/nope HTTP/1.1\r\nHost: x\r\n\r\n{live}{plain}{bad_close}{live}"
    );
    let both = answers(raw(&socket, both.as_bytes(), wait).await.as_bytes());
    assert_eq!(both.len(), 6, "{both:#?}");
    assert!(both[2].starts_with("HTTP/1.1 404"), "{}", both[2]);
    assert!(both[0].starts_with("HTTP/1.1 200"), "{}", both[0]);
    assert_eq!(both[0], both[3]);
    assert!(both[1].starts_with("HTTP/1.1 200") && both[1].contains("\r\n\r\neyJ"));
    assert_eq!(both[1], both[4]);
    assert!(both[5].starts_with("HTTP/1.1 400") && both[5].contains("connection: close"));
    // On the fast path alone, then closed after the answer though the client keeps
    // its side open.
    let mut s = UnixStream::connect(&socket).await.unwrap();
    s.write_all(format!("{plain}{bad_close}").as_bytes())
        .await
        .unwrap();
    let mut fast = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut fast))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert_eq!(answers(&fast), [both[4].clone(), both[5].clone()]);
    agent.stop().await;
}

/// Writes `request`, half-closes (as `socat` and `nc -N` do), and reads until the agent
/// closes; "" when nothing came within `wait`.
async fn half_closed(socket: &std::path::Path, request: &[u8], wait: Duration) -> String {
    raw(socket, request, wait).await
}

/// A client that half-closes after its request is answered, whichever path serves it: a
/// route hyper serves (`POST /v1/sign`, a 404) as well as one the fast path answers.
#[tokio::test]
async fn half_closing_clients_are_answered_on_both_paths() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let body = r#"{"aud":"https://backend.example.com"}"#;
    let sign = format!(
        "POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let cases = [
        (sign.as_str(), "HTTP/1.1 200"),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"),
        ("GET /v1/token HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200"),
        (
            "DELETE /v1/token HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ];
    for (request, want) in cases {
        let mut answered = 0;
        for _ in 0..20 {
            let answer = half_closed(&socket, request.as_bytes(), Duration::from_secs(5)).await;
            if answer.starts_with(want) {
                answered += 1;
            }
        }
        assert_eq!(answered, 20, "{request:?}: answered {answered} of 20");
    }
    agent.stop().await;
}

/// Reads `n` answers from `s` (or what came before it closed or went quiet) and returns
/// each one's status line.
async fn status_lines(s: &mut UnixStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut lines = Vec::new();
    loop {
        // Split off every whole answer read so far.
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() < end + 4 + len {
                break;
            }
            lines.push(head.lines().next().unwrap_or_default().to_owned());
            got.drain(..end + 4 + len);
        }
        if lines.len() >= n {
            return lines;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return lines,
        }
    }
}

/// One head limit, however the connection was served before: a head over 16 KiB is 431
/// on a fresh connection, after a request the fast path answered and after one hyper
/// answered; one just under it is served in each case.
#[tokio::test]
async fn the_head_limit_is_the_same_after_any_request() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let limit = asset_agent::api::Limits::default().max_head_bytes;
    // A token request whose head is exactly `len` bytes long.
    let head = |len: usize| {
        let start = "GET /v1/token HTTP/1.1\r\nHost: x\r\nX-Pad: ";
        let pad = len - start.len() - 4;
        format!("{start}{}\r\n\r\n", "a".repeat(pad))
    };
    // Big requests before grow hyper's read buffer past the limit.
    let big_404 = format!(
        "GET /nope HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "b".repeat(limit - 100)
    );
    let sign_body = format!(
        r#"{{"aud":"https://backend.example.com","pad":"{}"}}"#,
        "c".repeat(limit - 200)
    );
    let big_sign = format!(
        "POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{sign_body}",
        sign_body.len()
    );
    for before in [
        None,
        Some("GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some("DELETE /v1/token HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(big_404.as_str()),
        Some(big_sign.as_str()),
    ] {
        for (len, want) in [
            (limit, "HTTP/1.1 200"),
            (limit + 1, "HTTP/1.1 431"),
            (2 * limit - 100, "HTTP/1.1 431"),
        ] {
            // The request before and this one in one write, as a pipelining client sends.
            let mut s = UnixStream::connect(&socket).await.unwrap();
            let _ = s
                .write_all(format!("{}{}", before.unwrap_or_default(), head(len)).as_bytes())
                .await;
            let n = 1 + usize::from(before.is_some());
            let answers = status_lines(&mut s, n).await;
            assert_eq!(answers.len(), n, "{answers:?}");
            assert!(
                answers[n - 1].starts_with(want),
                "after {:?}, a {len}-byte head: {answers:?}",
                before.map(|b| &b[..30]),
            );
        }
    }
    agent.stop().await;
}

/// A request with `Upgrade` and a body is answered, 400 on every route (the agent upgrades
/// nothing), also when its body comes after its head (it used to be closed unanswered when
/// the route does not read a body), as the first request of a connection and after another,
/// and half-closed; with no body, `Upgrade` is ignored.
#[tokio::test]
async fn an_upgrade_request_with_a_body_is_answered_400() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let sign_body = r#"{"aud":"https://backend.example.com"}"#;
    let request = |method: &str, path: &str, upgrade: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{upgrade}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for (method, path, body) in [
        ("GET", "/v1/token", "hello"),
        ("GET", "/v1/token", ""),
        ("GET", "/nope", "hello"),
        ("POST", "/v1/sign", sign_body),
        ("POST", "/v1/token", "hello"),
    ] {
        for upgrade in [
            "Connection: upgrade\r\nUpgrade: websocket\r\n",
            "Upgrade: h2c\r\n",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ] {
            for first in [
                None,
                Some("GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n"),
            ] {
                let mut p = UnixStream::connect(&socket).await.unwrap();
                p.write_all(request(method, path, "", body).as_bytes())
                    .await
                    .unwrap();
                let plain = status_lines(&mut p, 1).await.concat();
                for (half_close, split) in [(false, false), (false, true), (true, false)] {
                    let mut s = UnixStream::connect(&socket).await.unwrap();
                    if let Some(first) = first {
                        s.write_all(first.as_bytes()).await.unwrap();
                        assert!(status_lines(&mut s, 1).await[0].starts_with("HTTP/1.1 200"));
                    }
                    let whole = request(method, path, upgrade, body);
                    let (head, rest) = whole.split_at(whole.len() - body.len());
                    if split {
                        // The body comes after the agent has read the head.
                        s.write_all(head.as_bytes()).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = s.write_all(rest.as_bytes()).await;
                    } else {
                        s.write_all(whole.as_bytes()).await.unwrap();
                    }
                    if half_close {
                        s.shutdown().await.unwrap();
                    }
                    let answer = status_lines(&mut s, 1).await.concat();
                    // The agent upgrades nothing: with a body, 400; without, as usual.
                    let want = if body.is_empty() {
                        plain.clone()
                    } else {
                        "HTTP/1.1 400 Bad Request".to_owned()
                    };
                    assert_eq!(
                        answer,
                        want,
                        "after {first:?}, {method} {path} with {upgrade:?} and {} body bytes, half-closed {half_close}, split {split}",
                        body.len()
                    );
                }
            }
        }
    }
    agent.stop().await;
}
