//! Cold-start timing harness (docs/benchmarks.md): starts the agent binary again and again and
//! times, from just before `spawn` (the device key already present):
//! - `socket`: the first successful connect to the agent's socket;
//! - `ready`: the first `GET /v1/health/ready` answered 200 (a valid token is held);
//! - `token`: the first `GET /v1/token` answered 200 (a client got its token);
//! - `notify`: `READY=1` on `$NOTIFY_SOCKET` (a datagram socket this harness binds), when
//!   the agent sends one (sd_notify support), else reported as absent.
//!
//! The socket is polled every `--poll-us` microseconds (default 250), so each figure is
//! late by at most that much. The agent is stopped with SIGTERM after each run.
//!
//! Usage (`scripts/bench.sh` drives it against a running emulator):
//! `cargo bench --bench coldstart -- --agent target/device/asset-agent --config agent.toml
//!  --socket run/agent.sock [--runs 50] [--cache keep|remove] [--state-dir DIR]`
//! Without `--bench` on its command line (as under `cargo test --benches`) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // real processes on the real clock: measured, not scheduled

#[path = "common/flags.rs"]
mod flags;

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    agent: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    state_dir: Option<PathBuf>,
    runs: usize,
    poll: Duration,
    remove_cache: bool,
}

fn parse_args() -> Option<Args> {
    let mut agent = None;
    let mut config = None;
    let mut socket = None;
    let mut state_dir = None;
    let mut runs = 50;
    let mut poll = Duration::from_micros(250);
    let mut remove_cache = true;
    for (flag, value) in flags::bench_flags()? {
        match flag.as_str() {
            "--agent" => agent = Some(PathBuf::from(value)),
            "--config" => config = Some(PathBuf::from(value)),
            "--socket" => socket = Some(PathBuf::from(value)),
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--runs" => runs = value.parse().expect("--runs N"),
            "--poll-us" => poll = Duration::from_micros(value.parse().expect("--poll-us N")),
            "--cache" => remove_cache = value == "remove",
            other => panic!("unknown argument {other}"),
        }
    }
    Some(Args {
        agent: agent.expect("--agent PATH"),
        config: config.expect("--config PATH"),
        socket: socket.expect("--socket PATH"),
        state_dir,
        runs,
        poll,
        remove_cache,
    })
}

/// The status code of `GET path`, or None if the socket is not accepting yet.
fn get_status(socket: &Path, path: &str) -> Option<u16> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::with_capacity(4096);
    s.read_to_end(&mut buf).ok()?;
    let head = std::str::from_utf8(buf.get(..12)?).ok()?;
    head.get(9..12)?.parse().ok()
}

/// Whether a datagram waiting on the notify socket says `READY=1`.
fn got_ready(notify: &UnixDatagram) -> bool {
    let mut buf = [0u8; 512];
    notify.recv(&mut buf).is_ok_and(|n| {
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
    })
}

#[derive(Default, Clone, Copy)]
struct Run {
    socket: Option<Duration>,
    ready: Option<Duration>,
    token: Option<Duration>,
    notify: Option<Duration>,
}

fn one_run(args: &Args, notify: &UnixDatagram, notify_path: &Path) -> Run {
    if args.remove_cache
        && let Some(dir) = &args.state_dir
    {
        let _ = std::fs::remove_file(dir.join("token-cache.json"));
    }
    while notify.recv(&mut [0u8; 512]).is_ok() {}
    let mut run = Run::default();
    let t0 = Instant::now();
    let mut child = Command::new(&args.agent)
        .arg("--config")
        .arg(&args.config)
        .arg("run")
        .env("NOTIFY_SOCKET", notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the agent");
    let deadline = t0 + Duration::from_secs(20);
    while Instant::now() < deadline && (run.token.is_none() || run.ready.is_none()) {
        if run.notify.is_none() && got_ready(notify) {
            run.notify = Some(t0.elapsed());
        }
        if run.ready.is_none()
            && let Some(code) = get_status(&args.socket, "/v1/health/ready")
        {
            run.socket.get_or_insert_with(|| t0.elapsed());
            if code == 200 {
                run.ready = Some(t0.elapsed());
            }
        }
        if run.ready.is_some() && get_status(&args.socket, "/v1/token") == Some(200) {
            run.token = Some(t0.elapsed());
        }
        if run.token.is_none() {
            std::thread::sleep(args.poll);
        }
    }
    // READY=1 may come just after the first token; give it a moment.
    let grace = Instant::now() + Duration::from_millis(200);
    while run.notify.is_none() && Instant::now() < grace {
        if got_ready(notify) {
            run.notify = Some(t0.elapsed());
        }
        std::thread::sleep(args.poll);
    }
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = child.wait();
    run
}

fn report(name: &str, mut v: Vec<Duration>, runs: usize) {
    if v.is_empty() {
        println!("{name:>7}: never seen in {runs} runs");
        return;
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| ms(v[((v.len() - 1) as f64 * p).round() as usize]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|d| (ms(*d) - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    println!(
        "{name:>7}: n={:<3} min {:>7.2} ms  p50 {:>7.2}  p90 {:>7.2}  max {:>7.2}  mean {:>7.2} ± {:.2}",
        v.len(),
        ms(v[0]),
        pct(0.5),
        pct(0.9),
        ms(v[v.len() - 1]),
        mean,
        sd
    );
}

fn main() {
    let Some(args) = parse_args() else {
        println!("coldstart: skipped (run it with `cargo bench --bench coldstart -- ...`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let mut runs = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        runs.push(one_run(&args, &notify, &notify_path));
    }
    println!(
        "{} runs of `{} run` (token cache {}), polled every {} µs",
        args.runs,
        args.agent.display(),
        if args.remove_cache {
            "removed before each start"
        } else {
            "kept"
        },
        args.poll.as_micros()
    );
    report(
        "socket",
        runs.iter().filter_map(|r| r.socket).collect(),
        args.runs,
    );
    report(
        "ready",
        runs.iter().filter_map(|r| r.ready).collect(),
        args.runs,
    );
    report(
        "token",
        runs.iter().filter_map(|r| r.token).collect(),
        args.runs,
    );
    report(
        "READY=1",
        runs.iter().filter_map(|r| r.notify).collect(),
        args.runs,
    );
}
