//! The floor: an HTTP server over a Unix socket that does nothing but answer every request
//! with the same bytes (docs/benchmarks.md §1). `scripts/bench.sh socket` runs it as a third
//! server beside the agent and nginx, pinned to the same core and sent the same load, so
//! each cell shows what a server that spends next to nothing on a request gets from that
//! load generator. Where even the floor is no better than nginx, the cell measures the
//! client, not the server.
//!
//! One thread, one epoll instance, level-triggered. A connection is accepted and registered
//! (as nginx does, its request is read when the poller says it is there), then each complete
//! request head is answered with one write of the answer file, and the connection is closed
//! after the answer when the request asked for `connection: close`. No allocation per
//! request; a head split across reads is kept until its end arrives. An answer that does
//! not go out in one write (a client that stopped reading) closes the connection: the
//! load generators here read every answer whole.
//!
//! Usage: `cargo bench --bench floor -- --socket PATH --answer FILE` serves until killed;
//! FILE holds a whole answer, head and body, as the agent sends it to a keep-alive request.
//! Without `--bench` on its command line (as under `cargo test`, which runs this target) it
//! tests itself against clients of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a benchmark tool: real sockets, real threads, real time

#[path = "common/flags.rs"]
mod flags;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;

/// The listener's token in the epoll set; connections use their index in `conns`.
const LISTENER: u64 = u64::MAX;
/// One read's worth: a request head is a few hundred bytes.
const READ: usize = 4096;

/// One client connection.
struct Conn {
    fd: OwnedFd,
    /// The start of a head whose end has not arrived yet (empty almost always).
    pending: Vec<u8>,
}

/// What the bytes read so far asked for.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    /// Whole request heads, each owed one answer.
    heads: usize,
    /// Bytes they take; the rest is the start of the next head.
    used: usize,
    /// One of them asked to close the connection.
    close: bool,
}

/// Counts the complete request heads at the start of `bytes`.
fn asked(bytes: &[u8]) -> Asked {
    let mut at = Asked {
        heads: 0,
        used: 0,
        close: false,
    };
    while let Some(end) = bytes[at.used..].windows(4).position(|w| w == b"\r\n\r\n") {
        let head = &bytes[at.used..at.used + end];
        at.close |= head.split(|&b| b == b'\n').any(|line| {
            let mut field = line.splitn(2, |&b| b == b':');
            let (name, value) = (
                field.next().unwrap_or_default(),
                field.next().unwrap_or_default(),
            );
            name.eq_ignore_ascii_case(b"connection")
                && value.trim_ascii().eq_ignore_ascii_case(b"close")
        });
        at.heads += 1;
        at.used += end + 4;
    }
    at
}

/// Serves `answer` on `socket` until the process ends.
fn serve(socket: &Path, answer: &[u8]) -> ! {
    // A socket file left by an earlier run would make the bind fail.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .unwrap_or_else(|e| panic!("could not listen on {}: {e}", socket.display()));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )
    .expect("epoll_ctl on the listener");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = vec![
        epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        };
        256
    ];
    let mut buf = [0u8; READ];
    loop {
        let n = match epoll::wait(&ep, &mut events[..], None) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for event in &events[..n] {
            let token = event.data.u64();
            if token == LISTENER {
                accept_all(&listener, &ep, &mut conns, &mut free);
                continue;
            }
            let i = usize::try_from(token).expect("connection index");
            let keep = conns[i]
                .as_mut()
                .is_some_and(|conn| on_readable(conn, &mut buf, answer));
            if !keep {
                // Closing the socket takes it out of the epoll set.
                conns[i] = None;
                free.push(i);
            }
        }
    }
}

/// Accepts every connection waiting and registers it for reading.
fn accept_all(
    listener: &UnixListener,
    ep: &OwnedFd,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) {
    loop {
        let fd = match rustix::net::accept_with(
            listener,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(Errno::INTR | Errno::CONNABORTED) => continue,
            // AGAIN: none left. Anything else (out of descriptors): the listener stays
            // readable, and the next wait comes back to it.
            Err(_) => return,
        };
        let i = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let token = epoll::EventData::new_u64(u64::try_from(i).expect("index"));
        if epoll::add(ep, &fd, token, epoll::EventFlags::IN).is_err() {
            free.push(i);
            continue;
        }
        conns[i] = Some(Conn {
            fd,
            pending: Vec::new(),
        });
    }
}

/// Reads what arrived and answers every complete head; false when the connection is done.
fn on_readable(conn: &mut Conn, buf: &mut [u8; READ], answer: &[u8]) -> bool {
    let n = match rustix::io::read(&conn.fd, &mut buf[..]) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(Errno::AGAIN | Errno::INTR) => return true,
        Err(_) => return false,
    };
    let bytes: &[u8] = if conn.pending.is_empty() {
        &buf[..n]
    } else {
        conn.pending.extend_from_slice(&buf[..n]);
        &conn.pending
    };
    let at = asked(bytes);
    let rest = bytes[at.used..].to_vec();
    for _ in 0..at.heads {
        match rustix::net::send(&conn.fd, answer, rustix::net::SendFlags::NOSIGNAL) {
            Ok(sent) if sent == answer.len() => {}
            _ => return false,
        }
    }
    conn.pending = rest;
    // A head that never ends is not kept growing.
    !at.close && conn.pending.len() < 64 * 1024
}

fn main() {
    let Some(flags) = flags::bench_flags() else {
        self_test();
        return;
    };
    let (mut socket, mut answer) = (None, None);
    for (flag, value) in flags {
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--answer" => answer = Some(PathBuf::from(value)),
            other => panic!("unknown argument {other}"),
        }
    }
    let answer = answer.expect("--answer FILE");
    let bytes = std::fs::read(&answer)
        .unwrap_or_else(|e| panic!("could not read {}: {e}", answer.display()));
    assert!(!bytes.is_empty(), "{} is empty", answer.display());
    serve(&socket.expect("--socket PATH"), &bytes);
}

/// Under `cargo test`: the head counter, then keep-alive, close, split and pipelined
/// requests against a server on its own thread.
fn self_test() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixStream;

    let get = b"GET /v1/token HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let close = b"GET /v1/token HTTP/1.1\r\nhost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(
        asked(b"GET / HTTP/1.1\r\n"),
        Asked {
            heads: 0,
            used: 0,
            close: false
        }
    );
    assert_eq!(
        asked(get),
        Asked {
            heads: 1,
            used: get.len(),
            close: false
        }
    );
    assert_eq!(
        asked(close),
        Asked {
            heads: 1,
            used: close.len(),
            close: true
        }
    );
    let two = [&get[..], &get[..], b"GET"].concat();
    assert_eq!(
        asked(&two),
        Asked {
            heads: 2,
            used: 2 * get.len(),
            close: false
        }
    );
    assert!(asked(b"GET / HTTP/1.1\r\nConnection:close\r\n\r\n").close);
    // Only the field, not a value that merely contains it.
    assert!(!asked(b"GET / HTTP/1.1\r\nx-note: connection: close please\r\n\r\n").close);

    let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("floor.sock");
    let path = socket.clone();
    // Left running when the test ends (the process exits).
    std::thread::spawn(move || serve(&path, answer));
    let connect = || {
        for _ in 0..200 {
            if let Ok(s) = UnixStream::connect(&socket) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the floor server did not start");
    };
    let read_n = |s: &mut UnixStream, n: usize| {
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).expect("answer");
        got
    };
    // Keep-alive: three requests, three answers, on one connection.
    let mut s = connect();
    for _ in 0..3 {
        s.write_all(get).expect("request");
        assert_eq!(read_n(&mut s, answer.len()), answer);
    }
    // A head split across writes is answered once, when it is whole.
    s.write_all(&get[..10]).expect("first part");
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.write_all(&get[10..]).expect("second part");
    assert_eq!(read_n(&mut s, answer.len()), answer);
    // Pipelined: two heads in one write, two answers.
    s.write_all(&[&get[..], &get[..]].concat())
        .expect("two requests");
    assert_eq!(read_n(&mut s, 2 * answer.len()), [answer, answer].concat());
    // `Connection: close`: the answer, then the end of the stream.
    s.write_all(close).expect("close request");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("to the end");
    assert_eq!(rest, answer);
    // Many connections, one request each.
    for _ in 0..100 {
        let mut s = connect();
        s.write_all(close).expect("request");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("to the end");
        assert_eq!(got, answer);
    }
    println!("floor: self-test passed");
}
