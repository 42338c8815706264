//! File sinks and `asset-agent exec`: against the emulator, on paused time where the agent
//! alone is involved, with the real binary for `exec`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use asset_agent::agent::{self, Options};
use asset_agent::config::{Config, LoadOptions};
use base64::Engine as _;
use common::{Agent, BIN, Device, alive, emulator, get, status, wait_for_token};
use emulator::{Emulator, Grant};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;

/// The device's config with `sinks` (TOML `[[sink]]` tables) appended.
fn with_sinks(dev: &Device, emu: &Emulator, token: &str, sinks: &str) -> Config {
    let p = dev.write_config(emu, "", token);
    let mut toml = std::fs::read_to_string(&p).unwrap();
    toml.push_str(sinks);
    std::fs::write(&p, toml).unwrap();
    Config::load(&LoadOptions::new(Some(p), HashMap::new())).unwrap()
}

/// A sink directory others may traverse (tempdirs are 0700).
fn sink_dir(dev: &Device) -> PathBuf {
    let d = dev.path("sinks");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The `exp` claim of a complete JWT; `None` for anything else (a torn write).
fn exp_of(jwt: &str) -> Option<i64> {
    let parts: Vec<&str> = jwt.split('.').collect();
    // RS256 with a 2048-bit key: a 256-byte signature, 342 base64url characters.
    if parts.len() != 3 || parts[2].len() != 342 {
        return None;
    }
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&payload).ok()?["exp"].as_i64()
}

/// Waits (virtual time) until `path` exists.
async fn wait_for_file(path: &Path) {
    for _ in 0..6000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test(start_paused = true)]
async fn a_reader_polling_every_10ms_across_50_rotations_never_sees_a_partial_or_expired_token() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |c| {
        c.asset_token_lifetime = Duration::from_secs(10);
    })
    .await;
    let dev = Device::new(&emu);
    let dir = sink_dir(&dev);
    // The hook's target: a process that shrugs SIGCONT off.
    let mut target = std::process::Command::new("sleep")
        .arg("100000")
        .spawn()
        .unwrap();
    std::fs::write(dev.path("app.pid"), target.id().to_string()).unwrap();
    let jwt = dir.join("token.jwt");
    let json = dir.join("token.json");
    let config = with_sinks(
        &dev,
        &emu,
        "refresh = \"on_demand\"",
        &format!(
            "\n[[sink]]\npath = \"{}\"\nsignal = \"CONT\"\npid_file = \"{}\"\n\n[[sink]]\npath = \"{}\"\nformat = \"json\"\nmode = \"0600\"\n",
            jwt.display(),
            dev.path("app.pid").display(),
            json.display()
        ),
    );
    let agent = Agent::start(&config, clock.clone()).await;
    wait_for_file(&jwt).await;
    let mode = std::fs::metadata(&jwt).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let mode = std::fs::metadata(&json).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A reader on another thread, in real time, hammering the file while the agent
    // rotates: every read is a whole token (rename is atomic), and the file never goes
    // missing while a token is held.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let hammer = {
        let (stop, reads, jwt) = (stop.clone(), reads.clone(), jwt.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&jwt).expect("the file is always there");
                assert!(exp_of(&text).is_some(), "partial read: {text:?}");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The 10 ms reader, on the agent's (virtual) clock: never an expired token.
    let mut seen = Vec::<String>::new();
    let mut polls = 0u64;
    while seen.len() < 51 {
        let text = std::fs::read_to_string(&jwt).expect("no gap at rotation");
        let exp = exp_of(&text).expect("a whole token");
        assert!(clock.unix_ms() < exp * 1000, "expired token in the sink");
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let json_exp = exp_of(body["token"].as_str().unwrap()).expect("a whole token");
        assert!(
            clock.unix_ms() < json_exp * 1000,
            "expired token in the JSON sink"
        );
        if seen.last() != Some(&text) {
            seen.push(text);
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!hammer.is_finished(), "the real-time reader failed");
    }
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    // 50 rotations at least 5 s apart (10 s tokens refreshed at 50-80 %).
    assert!(polls >= 50 * 450, "{polls} polls");

    // Each rotation was written once, and its hook fired once (status and /metrics).
    let s = status(&dev.socket()).await;
    let sinks = s["sinks"].as_array().unwrap();
    let exchanges = emu.grant_count(Grant::TokenExchange);
    assert_eq!(sinks[0]["writes"].as_u64().unwrap(), exchanges, "{s}");
    assert_eq!(sinks[0]["hook_runs_ok"].as_u64().unwrap(), exchanges, "{s}");
    assert_eq!(sinks[0]["hook_failures"], 0, "{s}");
    assert_eq!(sinks[1]["writes"].as_u64().unwrap(), exchanges, "{s}");
    // A sink is demand: on demand with no caller at all, the token never lapsed.
    assert_eq!(s["refresh"]["demand"], true, "{s}");
    assert_eq!(s["refresh"]["demand_holders"], 2, "{s}");
    let metrics = String::from_utf8(get(&dev.socket(), "/metrics").await.body.to_vec()).unwrap();
    let line = format!(
        "asset_agent_sink_hook_runs_total{{path=\"{}\",result=\"ok\"}} {exchanges}",
        jwt.display()
    );
    assert!(metrics.contains(&line), "{metrics}");

    // Salesforce goes away: the token runs out and the file goes before it does.
    emu.faults().fail_next(100_000, 503).await.unwrap();
    for _ in 0..3000 {
        match std::fs::read_to_string(&jwt) {
            Ok(text) => {
                let exp = exp_of(&text).expect("a whole token");
                assert!(clock.unix_ms() < exp * 1000, "expired token in the sink");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!jwt.exists() && !json.exists());
    let s = status(&dev.socket()).await;
    assert_eq!(s["sinks"][0]["present"], false, "{s}");
    assert!(s["sinks"][0]["removals"].as_u64().unwrap() >= 1, "{s}");
    agent.stop().await;
    target.kill().unwrap();
    let _ = target.wait();
}

/// Blocks the (single) runtime thread for 10 ms of real time. On paused time that is the
/// point: virtual time stands still while a real process (the hook) gets to run.
#[allow(clippy::disallowed_methods)]
fn real_pause() {
    std::thread::sleep(Duration::from_millis(10));
}

/// Whether `pid` is alive (a zombie counts as gone).
#[tokio::test(start_paused = true)]
async fn a_hanging_hook_is_killed_at_its_limit_and_refreshes_keep_their_schedule() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |c| {
        c.asset_token_lifetime = Duration::from_secs(60);
    })
    .await;
    let dev = Device::new(&emu);
    let dir = sink_dir(&dev);
    let jwt = dir.join("token");
    let pids = dev.path("pids");
    // The hook records its own pid and a background child's, then hangs.
    let config = with_sinks(
        &dev,
        &emu,
        "refresh = \"eager\"",
        &format!(
            "\n[[sink]]\npath = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 100000 & echo $$ $! > {}.tmp; mv {}.tmp {}; wait\"]\ntimeout = \"300s\"\n",
            jwt.display(),
            pids.display(),
            pids.display(),
            pids.display()
        ),
    );
    let agent = Agent::start(&config, clock.clone()).await;
    wait_for_file(&jwt).await;
    let started = tokio::time::Instant::now();
    // Let the hook start for real: blocking this (single) thread stops virtual time.
    let mut hook_pids = Vec::new();
    for _ in 0..1000 {
        tokio::task::yield_now().await;
        if let Ok(text) = std::fs::read_to_string(&pids) {
            hook_pids = text
                .split_whitespace()
                .map(|p| p.parse::<i32>().unwrap())
                .collect();
            break;
        }
        real_pause();
    }
    assert_eq!(hook_pids.len(), 2, "the hook never started");
    assert!(hook_pids.iter().all(|p| alive(*p)));

    // While it hangs, rotations go on: 299 s of 60 s tokens refreshed at 50-80 %.
    tokio::time::sleep_until(started + Duration::from_secs(299)).await;
    let s = status(&dev.socket()).await;
    let exchanges = emu.grant_count(Grant::TokenExchange);
    assert!((6..=11).contains(&exchanges), "{exchanges} exchanges");
    assert_eq!(s["sinks"][0]["writes"].as_u64().unwrap(), exchanges, "{s}");
    assert_eq!(s["sinks"][0]["hook_timeouts"], 0, "{s}");
    assert_eq!(s["state"], "ready", "{s}");
    let current = wait_for_token(&dev.socket()).await;
    assert_eq!(
        std::fs::read_to_string(&jwt).unwrap(),
        current["token"].as_str().unwrap()
    );
    assert!(hook_pids.iter().all(|p| alive(*p)));

    // At the limit, the whole process group goes.
    tokio::time::sleep_until(started + Duration::from_secs(301)).await;
    // Reaping the killed hook takes a moment of real time.
    let mut s = status(&dev.socket()).await;
    for _ in 0..500 {
        if s["sinks"][0]["hook_timeouts"] == 1 {
            break;
        }
        real_pause();
        s = status(&dev.socket()).await;
    }
    assert_eq!(s["sinks"][0]["hook_timeouts"], 1, "{s}");
    assert!(
        s["sinks"][0]["last_hook_error"]
            .as_str()
            .unwrap()
            .contains("killed"),
        "{s}"
    );
    for _ in 0..500 {
        if hook_pids.iter().all(|p| !alive(*p)) {
            break;
        }
        real_pause();
    }
    assert!(
        hook_pids.iter().all(|p| !alive(*p)),
        "hook processes survived"
    );
    agent.stop().await;
}

#[tokio::test]
async fn refused_sink_paths_stop_the_agent_with_their_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let dir = sink_dir(&dev);
    let real = dir.join("real");
    std::fs::write(&real, "x").unwrap();
    std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
    let open = dev.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cases = [
        (dir.join("link"), "is a symbolic link"),
        (open.join("token"), "chmod o-w"),
        (dir.join("missing/token"), "does not exist"),
        (dir.clone(), "not a regular file"),
    ];
    for (path, want) in cases {
        let config = with_sinks(
            &dev,
            &emu,
            "",
            &format!("\n[[sink]]\npath = \"{}\"\n", path.display()),
        );
        let err = agent::start(&config, Options::default(), CancellationToken::new())
            .await
            .err()
            .expect("refused");
        let text = asset_agent_chain(&err);
        assert!(text.contains(want), "{path:?}: {text}");
    }
    // (A file another user owns is refused too: see the unit test in src/sink/path.rs,
    // which can name an untrusted owner without being root.)
}

/// A symlink on a sink's path or its `pid_file`'s, in a directory another user (uid 1001)
/// owns, is refused by `check`, naming that directory, and by `run` for the sink (the
/// PID file's is refused at each hook run instead): its owner could
/// re-point the link and have the agent (root) write a token into, or signal a process of,
/// any root-owned place. Root only (chown).
#[tokio::test]
async fn a_link_another_user_controls_on_a_sink_or_pid_file_path_is_refused() {
    testkit::require!(
        testkit::ROOT,
        testkit::is_root(),
        "root, to chown: run the tests as root"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    std::fs::set_permissions(dev.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = sink_dir(&dev);
    let home = dev.path("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(1001), Some(1001)).unwrap();
    std::os::unix::fs::symlink(&dir, home.join("tokens")).unwrap();
    let home_s = home.display().to_string();
    let cases = [
        format!("\n[[sink]]\npath = \"{}/tokens/token\"\n", home_s),
        format!(
            "\n[[sink]]\npath = \"{}/token\"\npid_file = \"{}/tokens/app.pid\"\n",
            dir.display(),
            home_s
        ),
    ];
    for sink in cases {
        let config = with_sinks(&dev, &emu, "", &sink);
        if sink.contains("pid_file") {
            // The PID file's user could plant that link at any time, so `run` does not
            // stop for it (it would be that user's switch to stop the agent): the hook
            // refuses to signal through it at every run (src/sink/hook.rs tests that).
            let agent = Agent::start(&config, Clock::system()).await;
            wait_for_token(&config.api.socket).await;
            agent.stop().await;
        } else {
            let err = agent::start(&config, Options::default(), CancellationToken::new())
                .await
                .err()
                .expect("refused");
            let text = asset_agent_chain(&err);
            assert!(text.contains(&home_s), "{sink}: {text}");
            assert!(err.is_config(), "{sink}: {text}");
            assert!(text.contains("install -d -o asset-agent"), "{text}");
        }
        let out = tokio::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(dev.path("agent.toml"))
            .output()
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{sink}: {report}");
        assert!(report.contains(&home_s), "{sink}: {report}");
    }
}

/// Whatever another user plants at a sink's name in a directory others may write (a FIFO
/// in a sticky shared directory) or at the `pid_file` (a link in the application's own
/// directory) does not keep the agent from starting: it serves tokens, and status says the
/// sink holds none. (Both used to stop the agent with exit 78, for good under systemd.)
#[tokio::test]
async fn what_another_user_plants_at_a_sink_or_pid_file_does_not_stop_the_agent() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let shared = dev.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sink = shared.join("token.jwt");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&sink)
            .status()
            .unwrap()
            .success()
    );
    let app = dev.path("app");
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::symlink("/proc/1/stat", app.join("app.pid")).unwrap();
    let config = with_sinks(
        &dev,
        &emu,
        "",
        &format!(
            "\n[[sink]]\npath = \"{}\"\npid_file = \"{}\"\n",
            sink.display(),
            app.join("app.pid").display()
        ),
    );
    let agent = Agent::start(&config, Clock::system()).await;
    let token = wait_for_token(&config.api.socket).await;
    let jwt = token["token"].as_str().unwrap().to_owned();
    // The agent's own user planted it here, so the agent may replace it (another user's
    // FIFO in a sticky directory it could not): either way status tells the truth.
    let mut outcome = None;
    for _ in 0..100 {
        let st = status(&config.api.socket).await;
        let present = st["sinks"][0]["present"].as_bool();
        let is_file = std::fs::symlink_metadata(&sink).is_ok_and(|m| m.is_file());
        if present == Some(true) && is_file {
            assert_eq!(std::fs::read_to_string(&sink).unwrap().trim(), jwt);
            outcome = Some("replaced");
            break;
        }
        if present == Some(false) && st["sinks"][0]["last_error_s"].is_number() {
            outcome = Some("refused");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(outcome.is_some(), "status never settled");
    agent.stop().await;
}

fn asset_agent_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[test]
fn world_readable_modes_and_clashing_hooks_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[salesforce]\ninstance_url = \"https://x.my.salesforce.com\"\nclient_id = \"c\"\n[asset]\ndevice_id = \"d\"\nname = \"n\"\nserial_number = \"1\"\n[state]\ndir = \"{}\"\n[api]\nsocket = \"{}/s\"\n",
        dir.path().display(),
        dir.path().display()
    );
    let cases = [
        ("mode = \"0644\"", "sink[0].mode"),
        ("mode = 640", "sink[0].mode"),
        (
            "pid_file = \"/run/a.pid\"\nunit = \"a.service\"",
            "at most one",
        ),
        ("command = [\"reload\"]", "absolute path"),
        ("signal = \"KILL\"\npid_file = \"/run/a.pid\"", "KILL"),
        ("timeout = \"5s\"", "only used with sink.command"),
    ];
    for (extra, want) in cases {
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            format!("{base}\n[[sink]]\npath = \"/run/t\"\n{extra}\n"),
        )
        .unwrap();
        let err = Config::load(&LoadOptions::new(Some(p.clone()), HashMap::new())).unwrap_err();
        let text = asset_agent_chain(&err);
        assert!(text.contains(want), "{extra}: {text}");
        assert!(
            text.contains("agent.toml") || want == "KILL",
            "{extra}: {text}"
        );
    }
}

fn exec_cmd(socket: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("exec").arg("--socket").arg(socket);
    cmd
}

#[tokio::test]
async fn exec_passes_the_token_and_returns_the_exit_code() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let token = wait_for_token(&dev.socket()).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = dev.path("tok");
    let out = dev.path("out");
    let status = exec_cmd(&dev.socket())
        .args(["--env", "TOK", "--file"])
        .arg(&file)
        .arg("--")
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "test \"$TOK\" = \"$(cat {f})\" && stat -c %a {f} > {o} && echo \"$TOK\" >> {o}; exit 7",
            f = file.display(),
            o = out.display()
        ))
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text, format!("600\n{token}\n"));
    assert!(
        !file.exists(),
        "the private file goes when the command ends"
    );
    agent.stop().await;
}

#[tokio::test]
async fn exec_forwards_sigterm_to_the_child() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let ready = dev.path("ready");
    let got = dev.path("got");
    let mut child = exec_cmd(&dev.socket())
        .arg("--")
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "trap 'echo \"$ASSET_TOKEN\" > {g}; exit 3' TERM; touch {r}; while :; do sleep 0.05; done",
            g = got.display(),
            r = ready.display()
        ))
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready.exists(), "the command never started");
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(3), "exec exits with the child's status");
    assert!(
        std::fs::read_to_string(&got).unwrap().trim().len() > 100,
        "the child had the token"
    );
    agent.stop().await;
}

#[tokio::test]
async fn exec_rewrites_the_file_and_signals_the_child_on_rotation() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let file = dev.path("tok");
    let log = dev.path("log");
    let mut child = exec_cmd(&dev.socket())
        .arg("--file")
        .arg(&file)
        .args(["--on-rotation", "signal", "--signal", "USR1", "--"])
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "trap 'cat {f} >> {l}; echo >> {l}' USR1; while :; do sleep 0.05; done",
            f = file.display(),
            l = log.display()
        ))
        .spawn()
        .unwrap();
    // 4 s tokens rotate every 2-3.2 s: two signals within 20 s.
    let mut tokens = Vec::new();
    for _ in 0..200 {
        tokens = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if tokens.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tokens.len() >= 2, "{tokens:?}");
    assert_ne!(
        tokens[0], tokens[1],
        "each signal follows a new token in the file"
    );
    assert!(tokens.iter().all(|t| exp_of(t).is_some()), "{tokens:?}");
    // SIGTERM, not SIGKILL: exec forwards it, so the command does not outlive the test.
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "died of the forwarded SIGTERM"
    );
    assert!(!file.exists(), "the file goes with the command");
    agent.stop().await;
}

/// A command that cannot be started ends exec with an error, and the token file written
/// for it does not stay behind.
#[tokio::test]
async fn exec_leaves_no_token_file_when_the_command_cannot_start() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let file = dev.path("tok");
    let out = exec_cmd(&dev.socket())
        .arg("--file")
        .arg(&file)
        .args(["--", "/nonexistent/program"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/program"), "{stderr}");
    assert!(!file.exists(), "the token file stayed behind");
    agent.stop().await;
}

/// A token file that cannot be rewritten on rotation (its directory is gone) is no reason
/// to abandon the command: exec still signals it on each rotation, forwards SIGTERM and
/// returns its status.
#[tokio::test]
async fn exec_keeps_supervising_when_the_token_file_cannot_be_rewritten() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let dir = dev.path("exec");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("tok");
    let ready = dev.path("ready");
    let rotated = dev.path("rotated");
    let mut child = exec_cmd(&dev.socket())
        .arg("--file")
        .arg(&file)
        .args(["--on-rotation", "signal", "--signal", "USR1", "--"])
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "trap 'echo >> {r}' USR1; trap 'exit 3' TERM; touch {ready}; while :; do sleep 0.05; done",
            r = rotated.display(),
            ready = ready.display()
        ))
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready.exists() && file.exists(), "the command never started");
    std::fs::remove_dir_all(&dir).unwrap();
    // 4 s tokens rotate every 2-3.2 s: a signal within 20 s, with the file not rewritten.
    for _ in 0..200 {
        if rotated.exists() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "exec ended at the rotation and left the command unsupervised"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rotated.exists(),
        "the command was not signalled on rotation"
    );
    assert!(!file.exists());
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "exec exits with the command's status"
    );
    agent.stop().await;
}

/// Status reflects what the file holds: after a failed write the file keeps the older
/// token and `present` is false at once (not "holds a valid token now"), with the error and
/// its age; when that older token runs out the file is removed.
#[tokio::test]
async fn a_failed_write_shows_in_status_and_the_older_token_is_removed_at_its_expiry() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let dev = Device::new(&emu);
    let dir = sink_dir(&dev);
    let file = dir.join("token");
    let config = with_sinks(
        &dev,
        &emu,
        "",
        &format!("\n[[sink]]\npath = \"{}\"\n", file.display()),
    );
    let agent = Agent::start(&config, Clock::system()).await;
    for _ in 0..200 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = status(&dev.socket()).await;
    assert_eq!(s["sinks"][0]["present"], true, "{s}");
    let first = std::fs::read_to_string(&file).unwrap();
    // The agent's next temporary file cannot be created: every write from now on fails.
    std::fs::create_dir(dir.join(format!(".token.tmp-{}", std::process::id()))).unwrap();
    let mut s = status(&dev.socket()).await;
    for _ in 0..100 {
        if s["sinks"][0]["write_failures"].as_u64().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = status(&dev.socket()).await;
    }
    let k = &s["sinks"][0];
    assert!(k["write_failures"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        k["present"], false,
        "a failed write reported as present: {s}"
    );
    assert!(k["last_error"].as_str().unwrap().contains("tmp"), "{s}");
    assert!(k["last_error_s"].is_u64(), "{s}");
    if file.exists() {
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    }
    // The older token's expiry (4 s tokens): the file goes, and status says so.
    for _ in 0..100 {
        if !file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!file.exists(), "the file kept an expired token");
    // Status is recorded just after the unlink (and the directory's fsync): poll for it.
    let mut s = status(&dev.socket()).await;
    for _ in 0..100 {
        if s["sinks"][0]["removals"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        s = status(&dev.socket()).await;
    }
    assert!(s["sinks"][0]["removals"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["sinks"][0]["present"], false, "{s}");
    assert!(s["sinks"][0]["expires_in_s"].is_null(), "{s}");
    agent.stop().await;
}

/// kill -9 of exec: its command is stopped and its token file removed all the same (by
/// exec's guard process), within a second or two, not left running on an expiring token.
#[tokio::test]
async fn a_killed_exec_leaves_neither_its_command_nor_its_token_file() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let file = dev.path("tok");
    let pid_file = dev.path("child.pid");
    let mut exec = exec_cmd(&dev.socket())
        .arg("--file")
        .arg(&file)
        .args(["--", "/bin/sh", "-c"])
        .arg(format!(
            "echo $$ > {p}.tmp; mv {p}.tmp {p}; while :; do sleep 0.05; done",
            p = pid_file.display()
        ))
        .spawn()
        .unwrap();
    let mut child = None;
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            child = Some(text.trim().parse::<i32>().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let child = child.expect("the command never started");
    assert!(file.exists() && alive(child));
    exec.start_kill().unwrap();
    exec.wait().await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !file.exists() && !alive(child) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(child) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(
        gone,
        "5 s after kill -9 of exec: token file there: {}, command alive: {}",
        file.exists(),
        alive(child)
    );
    agent.stop().await;
}
