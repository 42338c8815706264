//! A lean closed-loop load generator for the API socket, a new connection per request
//! (docs/benchmarks.md §1): `clients` connections at a time, each opened, sent
//! `GET /v1/token`, read to the end of its answer and closed, then opened again at once.
//!
//! It exists because oha's one thread is the bottleneck of that load: it spends 17–26 µs of
//! CPU on each connection, more than either server (about 14 µs), so at 16 clients its own
//! queue of connections makes most of their p99. This one spends about 1 µs of its own per
//! connection: one thread, one epoll instance, no allocation per request. The rest of its
//! ~11 µs is the kernel's share of the calls any client makes (`socket`; `connect`, which
//! for a Unix socket also builds the server's end; `write`, `epoll_ctl`, `read`, `close`).
//! Both sides then run near their core's limit, and the server's answer times weigh as much
//! in the latencies as the client's queue.
//!
//! Latency is timed from just before `socket` to the read that completes the answer (the
//! head and `content-length` bytes of body), on the monotonic clock.
//!
//! Usage (`scripts/bench.sh socket` runs it beside oha):
//! `cargo bench --bench newconn -- --socket run/agent.sock [--clients 16] [--secs 5]`
//! prints one JSON line: requests, seconds, rps, p50_ms, p99_ms, p999_ms, non_200, errors.
//! Without `--bench` on its command line (as under `cargo test`, which runs this target) it
//! tests itself: its answer parser, and a short run against a server of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // real sockets on the real clock: measured, not scheduled

#[path = "common/flags.rs"]
mod flags;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

const REQUEST: &[u8] = b"GET /v1/token HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
/// Room for the answer: the token's is about 1.6 KB.
const BUF: usize = 8192;

struct Args {
    socket: PathBuf,
    clients: usize,
    secs: f64,
}

fn parse_args() -> Option<Args> {
    let mut socket = None;
    let mut clients = 16;
    let mut secs = 5.0;
    for (flag, value) in flags::bench_flags()? {
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--clients" => clients = value.parse().expect("--clients N"),
            "--secs" => secs = value.parse().expect("--secs SECONDS"),
            other => panic!("unknown argument {other}"),
        }
    }
    Some(Args {
        socket: socket.expect("--socket PATH"),
        clients,
        secs,
    })
}

/// One client's connection in flight.
struct Slot {
    fd: Option<OwnedFd>,
    started: Instant,
    len: usize,
    buf: Box<[u8; BUF]>,
}

/// How far an answer has come.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Not all of it yet.
    Partial,
    /// All of it, with this status code.
    Complete(u16),
    /// Not HTTP, or no `content-length`.
    Malformed,
}

/// Reads an answer's head and says whether its body is all there.
fn answer(bytes: &[u8]) -> Answer {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer::Partial;
    };
    let head = &bytes[..end];
    let Some(status) = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with(b"HTTP/1.1 "))
    else {
        return Answer::Malformed;
    };
    let length = head.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end();
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        None => Answer::Malformed,
        Some(n) if bytes.len() >= end + 4 + n => Answer::Complete(status),
        Some(_) => Answer::Partial,
    }
}

/// Opens a connection for `slot` and sends the request: socket, connect, write, epoll_ctl.
fn start(
    slot: &mut Slot,
    index: u64,
    addr: &SocketAddrUnix,
    ep: &OwnedFd,
) -> rustix::io::Result<()> {
    slot.started = Instant::now();
    slot.len = 0;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, addr)?;
    // A new Unix stream socket's peer buffer is empty: the request always fits.
    if rustix::io::write(&fd, REQUEST)? != REQUEST.len() {
        return Err(Errno::AGAIN);
    }
    epoll::add(
        ep,
        &fd,
        epoll::EventData::new_u64(index),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )?;
    slot.fd = Some(fd);
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    // Nearest rank: the smallest value with at least q of the samples at or under it.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// What a run measured.
struct Report {
    seconds: f64,
    /// Sorted.
    latencies: Vec<Duration>,
    non_200: u64,
    errors: u64,
}

/// Loads `args.socket` with `args.clients` connections at a time for `args.secs` seconds.
fn run(args: &Args) -> Report {
    let addr = SocketAddrUnix::new(&args.socket).expect("socket path");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    let mut slots: Vec<Slot> = (0..args.clients)
        .map(|_| Slot {
            fd: None,
            started: Instant::now(),
            len: 0,
            buf: Box::new([0; BUF]),
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(4_000_000);
    let (mut non_200, mut errors) = (0u64, 0u64);
    let begin = Instant::now();
    let end = begin + Duration::from_secs_f64(args.secs);
    for (i, slot) in slots.iter_mut().enumerate() {
        start(slot, i as u64, &addr, &ep).expect("first connection");
    }
    let mut events = vec![
        epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        };
        256
    ];
    let tick = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    loop {
        let n = match epoll::wait(&ep, &mut events[..], Some(&tick)) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        if Instant::now() >= end {
            break;
        }
        for event in &events[..n] {
            let i = usize::try_from(event.data.u64()).expect("slot index");
            let slot = &mut slots[i];
            let Some(fd) = slot.fd.as_ref() else { continue };
            let mut closed = false;
            loop {
                match rustix::io::read(fd, &mut slot.buf[slot.len..]) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(k) => {
                        slot.len += k;
                        if slot.len == BUF {
                            break;
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let done = match answer(&slot.buf[..slot.len]) {
                Answer::Complete(status) => {
                    latencies.push(slot.started.elapsed());
                    non_200 += u64::from(status != 200);
                    true
                }
                Answer::Partial if !closed && slot.len < BUF => false,
                Answer::Partial | Answer::Malformed => {
                    errors += 1;
                    true
                }
            };
            if done {
                // Closing removes it from the epoll set.
                slot.fd = None;
                while let Err(e) = start(slot, i as u64, &addr, &ep) {
                    errors += 1;
                    if Instant::now() >= end {
                        panic!("could not connect: {e}");
                    }
                }
            }
        }
    }
    let seconds = begin.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Report {
        seconds,
        latencies,
        non_200,
        errors,
    }
}

fn main() {
    let Some(args) = parse_args() else {
        self_test();
        return;
    };
    let r = run(&args);
    if r.latencies.is_empty() {
        panic!("no answer in {:.1} s", r.seconds);
    }
    println!(
        "{{\"requests\": {}, \"seconds\": {:.3}, \"rps\": {:.1}, \"p50_ms\": {:.4}, \"p99_ms\": {:.4}, \"p999_ms\": {:.4}, \"non_200\": {}, \"errors\": {}}}",
        r.latencies.len(),
        r.seconds,
        r.latencies.len() as f64 / r.seconds,
        percentile(&r.latencies, 0.50),
        percentile(&r.latencies, 0.99),
        percentile(&r.latencies, 0.999),
        r.non_200,
        r.errors,
    );
}

/// Under `cargo test`: the parser, the percentiles, and a short run against a server that
/// answers the way the agent does (200, `content-length`, then close), on its own thread.
fn self_test() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 4\r\n\r\n";
    let whole = [&head[..], b"{\"a\"", b"}"].concat();
    assert_eq!(answer(&whole[..head.len()]), Answer::Partial);
    assert_eq!(answer(&whole[..head.len() + 3]), Answer::Partial);
    assert_eq!(answer(&whole[..head.len() + 4]), Answer::Complete(200));
    assert_eq!(answer(&head[..20]), Answer::Partial);
    assert_eq!(
        answer(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
        Answer::Complete(503)
    );
    assert_eq!(answer(b"HTTP/1.1 200 OK\r\n\r\n"), Answer::Malformed);
    assert_eq!(answer(b"SSH-2.0-x\r\n\r\n"), Answer::Malformed);

    let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(percentile(&v, 0.50), 50.0);
    assert_eq!(percentile(&v, 0.99), 99.0);
    assert_eq!(percentile(&v, 0.999), 100.0);
    assert_eq!(percentile(&v[..1], 0.99), 1.0);

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    // Left running when the test ends (the process exits).
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let body = br#"{"token":"x"}"#;
        let answer = [
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            if req == REQUEST {
                let _ = conn.write_all(&answer);
            }
        }
    });
    let r = run(&Args {
        socket,
        clients: 4,
        secs: 0.3,
    });
    assert!(
        r.latencies.len() >= 10,
        "{} answers in {:.1} s",
        r.latencies.len(),
        r.seconds
    );
    assert_eq!((r.non_200, r.errors), (0, 0));
    assert!(r.latencies.windows(2).all(|w| w[0] <= w[1]));
    println!("newconn: self-test passed ({} answers)", r.latencies.len());
}
