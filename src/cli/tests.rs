//! Every rule of the command line, one test each (the binary's side is in tests/cli.rs).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;
use std::time::Duration;

use super::spec::{self, Kind};
use super::*;

fn parse_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Cli, Stop> {
    let vars: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    Cli::parse_from(args.iter().map(OsString::from), &|name: &str| {
        vars.get(name).cloned()
    })
}

fn parse(args: &[&str]) -> Cli {
    match parse_with(args, &[]) {
        Ok(cli) => cli,
        Err(stop) => panic!("{args:?}: {}", stop.text()),
    }
}

/// The mistake in `args`, and the command it was found in.
fn mistake(args: &[&str]) -> (UsageError, &'static str) {
    match parse_with(args, &[]) {
        Err(Stop::Usage { error, command }) => (error, command),
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

fn help(args: &[&str]) -> String {
    match parse_with(args, &[]) {
        Err(Stop::Help(text)) => text,
        other => panic!("{args:?}: expected help, got {other:?}"),
    }
}

fn token(args: &[&str]) -> TokenArgs {
    match parse(args).command {
        Command::Token(t) => t,
        other => panic!("{other:?}"),
    }
}

fn exec(args: &[&str]) -> ExecArgs {
    match parse(args).command {
        Command::Exec(e) => e,
        other => panic!("{other:?}"),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn every_subcommand_parses_to_its_command() {
    type Is = fn(&Command) -> bool;
    let cases: &[(&[&str], Is)] = &[
        (&["run"], |c| matches!(c, Command::Run)),
        (&["token"], |c| matches!(c, Command::Token(_))),
        (&["status"], |c| matches!(c, Command::Status(_))),
        (&["watch"], |c| matches!(c, Command::Watch(_))),
        (&["refresh"], |c| matches!(c, Command::Refresh(_))),
        (&["reload"], |c| matches!(c, Command::Reload(_))),
        (&["check"], |c| matches!(c, Command::Check(_))),
        (&["key", "show"], |c| {
            matches!(c, Command::Key(KeyCommand::Show(_)))
        }),
        (&["key", "generate"], |c| {
            matches!(c, Command::Key(KeyCommand::Generate))
        }),
        (&["enroll"], |c| matches!(c, Command::Enroll)),
        (&["exec", "--", "true"], |c| matches!(c, Command::Exec(_))),
    ];
    for (args, is) in cases {
        let cli = parse(args);
        assert!(is(&cli.command), "{args:?}: {:?}", cli.command);
        assert!(cli.config.is_none());
    }
}

#[test]
fn flags_default_to_off_and_are_set_when_given() {
    let t = token(&["token"]);
    assert!(!t.raw && !t.json && t.min_ttl.is_none() && t.asset.asset.is_none());
    assert!(token(&["token", "--raw"]).raw);
    assert!(token(&["token", "--json"]).json);
    let Command::Check(c) = parse(&["check", "--json", "--exchange"]).command else {
        panic!()
    };
    assert!(c.json && c.exchange);
    let Command::Watch(w) = parse(&["watch", "--raw"]).command else {
        panic!()
    };
    assert!(w.raw && !w.json);
    for (flag, expect) in [
        ("--jwk", (true, false, false)),
        ("--pem", (false, true, false)),
        ("--thumbprint", (false, false, true)),
    ] {
        let Command::Key(KeyCommand::Show(k)) = parse(&["key", "show", flag]).command else {
            panic!()
        };
        assert_eq!((k.jwk, k.pem, k.thumbprint), expect, "{flag}");
    }
    for cmd in ["refresh", "reload"] {
        let json = match parse(&[cmd, "--json"]).command {
            Command::Refresh(r) => r.json,
            Command::Reload(r) => r.json,
            other => panic!("{other:?}"),
        };
        assert!(json, "{cmd}");
    }
}

#[test]
fn values_are_taken_in_both_forms() {
    for args in [
        &["token", "--min-ttl", "30", "--socket", "/run/a.sock"][..],
        &["token", "--min-ttl=30", "--socket=/run/a.sock"],
    ] {
        let t = token(args);
        assert_eq!(t.min_ttl, Some(30), "{args:?}");
        assert_eq!(t.socket.socket.as_deref(), Some(Path::new("/run/a.sock")));
    }
    // A value may contain '=' after the first one.
    let e = exec(&["exec", "--env=A=B", "--", "true"]);
    assert_eq!(e.env.as_deref(), Some("A=B"));
    // "-" is a value, not an option.
    let e = exec(&["exec", "--file", "-", "--", "true"]);
    assert_eq!(e.file.as_deref(), Some(Path::new("-")));
}

#[test]
fn the_asset_name_goes_anywhere_among_the_options() {
    for args in [
        &["token", "pump-7", "--raw"][..],
        &["token", "--raw", "pump-7"],
        &["token", "--raw", "--", "pump-7"],
    ] {
        let t = token(args);
        assert_eq!(t.asset.asset.as_deref(), Some("pump-7"), "{args:?}");
        assert!(t.raw);
    }
    // After `--`, a name that looks like an option.
    assert_eq!(
        token(&["token", "--", "-odd"]).asset.asset.as_deref(),
        Some("-odd")
    );
    let Command::Status(s) = parse(&["status", "meter-2", "--json"]).command else {
        panic!()
    };
    assert_eq!(s.asset.base(), "/v1/assets/meter-2");
    let Command::Watch(w) = parse(&["watch", "meter-2"]).command else {
        panic!()
    };
    assert_eq!(w.asset.asset.as_deref(), Some("meter-2"));
}

#[test]
fn one_asset_name_at_most_and_none_where_not_taken() {
    assert_eq!(
        mistake(&["status", "a", "b"]),
        (UsageError::UnexpectedArgument("b".into()), "status")
    );
    assert_eq!(
        mistake(&["token", "a", "--", "b"]),
        (UsageError::UnexpectedArgument("b".into()), "token")
    );
    assert_eq!(
        mistake(&["run", "extra"]),
        (UsageError::UnexpectedArgument("extra".into()), "run")
    );
    assert_eq!(
        mistake(&["key", "show", "extra"]),
        (UsageError::UnexpectedArgument("extra".into()), "key show")
    );
}

#[test]
fn exec_takes_everything_after_the_double_dash_verbatim() {
    let e = exec(&[
        "exec",
        "--env",
        "TOK",
        "--file",
        "/run/t",
        "--on-rotation",
        "signal",
        "--signal",
        "USR1",
        "--wait",
        "2m 5s",
        "--socket",
        "/run/a.sock",
        "--",
        "prog",
        "--help",
        "--",
        "-V",
    ]);
    assert_eq!(e.env.as_deref(), Some("TOK"));
    assert_eq!(e.file.as_deref(), Some(Path::new("/run/t")));
    assert_eq!(e.on_rotation, Some(OnRotation::Signal));
    assert_eq!(e.signal, "USR1");
    assert_eq!(e.wait, Duration::from_secs(125));
    assert_eq!(e.socket.socket.as_deref(), Some(Path::new("/run/a.sock")));
    assert_eq!(e.command, os(&["prog", "--help", "--", "-V"]));
}

#[test]
fn exec_passes_arguments_that_are_not_utf8() {
    let odd = OsString::from_vec(vec![b'a', 0xff, b'b']);
    let args = [
        os(&["exec", "--"]),
        vec![OsString::from("prog"), odd.clone()],
    ]
    .concat();
    let Ok(Cli {
        command: Command::Exec(e),
        ..
    }) = Cli::parse_from(args, &|_: &str| None)
    else {
        panic!()
    };
    assert_eq!(e.command, vec![OsString::from("prog"), odd]);
}

#[test]
fn exec_defaults() {
    let e = exec(&["exec", "--", "true"]);
    assert_eq!(e.env, None);
    assert_eq!(e.file, None);
    assert_eq!(e.on_rotation, None);
    assert_eq!(e.signal, "HUP");
    assert_eq!(e.wait, Duration::from_secs(30));
    assert_eq!(e.socket.socket, None);
    for (word, want) in [
        ("restart", OnRotation::Restart),
        ("signal", OnRotation::Signal),
        ("none", OnRotation::None),
    ] {
        let e = exec(&["exec", "--on-rotation", word, "--", "true"]);
        assert_eq!(e.on_rotation, Some(want), "{word}");
    }
}

#[test]
fn exec_needs_a_command_after_the_double_dash() {
    assert_eq!(mistake(&["exec"]), (UsageError::MissingCommand, "exec"));
    assert_eq!(
        mistake(&["exec", "--"]),
        (UsageError::MissingCommand, "exec")
    );
    assert_eq!(
        mistake(&["exec", "--env", "T"]),
        (UsageError::MissingCommand, "exec")
    );
    assert_eq!(
        mistake(&["exec", "prog"]),
        (UsageError::UnexpectedArgument("prog".into()), "exec")
    );
}

#[test]
fn config_before_or_after_the_subcommand_the_later_wins() {
    assert_eq!(
        parse(&["--config", "/a.toml", "run"]).config.as_deref(),
        Some(Path::new("/a.toml"))
    );
    assert_eq!(
        parse(&["run", "--config=/b.toml"]).config.as_deref(),
        Some(Path::new("/b.toml"))
    );
    assert_eq!(
        parse(&["key", "show", "--config", "/c.toml", "--pem"])
            .config
            .as_deref(),
        Some(Path::new("/c.toml"))
    );
    assert_eq!(
        parse(&["key", "--config", "/d.toml", "generate"])
            .config
            .as_deref(),
        Some(Path::new("/d.toml"))
    );
    assert_eq!(
        parse(&["--config", "/a.toml", "check", "--config", "/b.toml"])
            .config
            .as_deref(),
        Some(Path::new("/b.toml"))
    );
    // Twice at the same level is a mistake, as it was with clap.
    assert_eq!(
        mistake(&["--config", "/a", "--config", "/b", "run"]),
        (UsageError::Duplicate("config"), "")
    );
    assert_eq!(
        mistake(&["run", "--config", "/a", "--config=/b"]),
        (UsageError::Duplicate("config"), "run")
    );
}

#[test]
fn config_and_socket_fall_back_to_the_environment() {
    let vars = [
        ("ASSET_AGENT_CONFIG", "/env/agent.toml"),
        ("ASSET_AGENT_SOCKET", "/env/agent.sock"),
    ];
    let Ok(cli) = parse_with(&["status"], &vars) else {
        panic!()
    };
    assert_eq!(cli.config.as_deref(), Some(Path::new("/env/agent.toml")));
    let Command::Status(s) = cli.command else {
        panic!()
    };
    assert_eq!(
        s.socket.socket.as_deref(),
        Some(Path::new("/env/agent.sock"))
    );

    // The command line wins.
    let Ok(cli) = parse_with(
        &[
            "exec", "--config", "/a.toml", "--socket", "/a.sock", "--", "x",
        ],
        &vars,
    ) else {
        panic!()
    };
    assert_eq!(cli.config.as_deref(), Some(Path::new("/a.toml")));
    let Command::Exec(e) = cli.command else {
        panic!()
    };
    assert_eq!(e.socket.socket.as_deref(), Some(Path::new("/a.sock")));

    // Commands without --socket do not read ASSET_AGENT_SOCKET (nothing to check) but
    // still take ASSET_AGENT_CONFIG.
    let Ok(cli) = parse_with(&["check"], &vars) else {
        panic!()
    };
    assert_eq!(cli.config.as_deref(), Some(Path::new("/env/agent.toml")));
}

#[test]
fn an_empty_path_is_refused_from_the_command_line_and_the_environment() {
    for (args, vars, want) in [
        (
            &["status"][..],
            &[("ASSET_AGENT_SOCKET", "")][..],
            UsageError::EmptyEnv("ASSET_AGENT_SOCKET"),
        ),
        (
            &["run"],
            &[("ASSET_AGENT_CONFIG", "")],
            UsageError::EmptyEnv("ASSET_AGENT_CONFIG"),
        ),
        (
            &["status", "--socket="],
            &[],
            UsageError::MissingValue("socket"),
        ),
        (
            &["run", "--config="],
            &[],
            UsageError::MissingValue("config"),
        ),
        (
            &["exec", "--file=", "--", "x"],
            &[],
            UsageError::MissingValue("file"),
        ),
    ] {
        match parse_with(args, vars) {
            Err(Stop::Usage { error, .. }) => assert_eq!(error, want, "{args:?} {vars:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn options_that_exclude_each_other() {
    for (args, a, b, cmd) in [
        (&["token", "--raw", "--json"][..], "raw", "json", "token"),
        (&["token", "--json", "--raw"], "raw", "json", "token"),
        (&["watch", "--json", "--raw"], "json", "raw", "watch"),
        (&["watch", "--raw", "--json"], "json", "raw", "watch"),
        (&["key", "show", "--jwk", "--pem"], "jwk", "pem", "key show"),
        (
            &["key", "show", "--thumbprint", "--jwk"],
            "jwk",
            "thumbprint",
            "key show",
        ),
        (
            &["key", "show", "--pem", "--thumbprint"],
            "pem",
            "thumbprint",
            "key show",
        ),
    ] {
        assert_eq!(mistake(args), (UsageError::Conflict(a, b), cmd), "{args:?}");
    }
}

#[test]
fn unknown_arguments_and_subcommands() {
    for (args, want, cmd) in [
        (
            &["frobnicate"][..],
            UsageError::UnknownCommand("frobnicate".into()),
            "",
        ),
        (
            &["key", "frob"],
            UsageError::UnknownCommand("frob".into()),
            "key",
        ),
        (
            &["--bogus", "run"],
            UsageError::UnexpectedArgument("--bogus".into()),
            "",
        ),
        (
            &["token", "--bogus"],
            UsageError::UnexpectedArgument("--bogus".into()),
            "token",
        ),
        (
            &["token", "--bogus=1"],
            UsageError::UnexpectedArgument("--bogus=1".into()),
            "token",
        ),
        (&["-x"], UsageError::UnexpectedArgument("-x".into()), ""),
        (
            &["status", "-j"],
            UsageError::UnexpectedArgument("-j".into()),
            "status",
        ),
        // An option of another command.
        (
            &["check", "--raw"],
            UsageError::UnexpectedArgument("--raw".into()),
            "check",
        ),
        (
            &["check", "--socket", "/s"],
            UsageError::UnexpectedArgument("--socket".into()),
            "check",
        ),
        // No abbreviations.
        (
            &["token", "--ra"],
            UsageError::UnexpectedArgument("--ra".into()),
            "token",
        ),
        (
            &["--", "run"],
            UsageError::UnexpectedArgument("--".into()),
            "",
        ),
    ] {
        assert_eq!(mistake(args), (want, cmd), "{args:?}");
    }
}

#[test]
fn missing_values() {
    for (args, long, cmd) in [
        (&["token", "--socket"][..], "socket", "token"),
        (&["token", "--socket", "--raw"], "socket", "token"),
        (&["token", "--min-ttl", "-5"], "min-ttl", "token"),
        (&["--config"], "config", ""),
        (&["exec", "--wait", "--", "x"], "wait", "exec"),
    ] {
        assert_eq!(
            mistake(args),
            (UsageError::MissingValue(long), cmd),
            "{args:?}"
        );
    }
}

#[test]
fn a_flag_takes_no_value() {
    assert_eq!(
        mistake(&["token", "--raw=1"]),
        (UsageError::UnexpectedValue("raw", "1".into()), "token")
    );
}

#[test]
fn an_option_given_twice() {
    for (args, long) in [
        (&["token", "--raw", "--raw"][..], "raw"),
        (&["status", "--socket", "/a", "--socket=/b"], "socket"),
        (&["exec", "--wait", "1s", "--wait", "2s", "--", "x"], "wait"),
    ] {
        assert_eq!(mistake(args).0, UsageError::Duplicate(long), "{args:?}");
    }
}

#[test]
fn invalid_values() {
    for (args, long, value) in [
        (&["token", "--min-ttl", "abc"][..], "min-ttl", "abc"),
        (&["token", "--min-ttl=1.5"], "min-ttl", "1.5"),
        (&["exec", "--wait", "3x", "--", "x"], "wait", "3x"),
        (&["exec", "--wait=", "--", "x"], "wait", ""),
        (
            &["exec", "--on-rotation", "foo", "--", "x"],
            "on-rotation",
            "foo",
        ),
        (
            &["exec", "--on-rotation=Restart", "--", "x"],
            "on-rotation",
            "Restart",
        ),
    ] {
        match mistake(args).0 {
            UsageError::InvalidValue { arg, value: v, .. } => {
                assert_eq!((arg, v.as_str()), (long, value), "{args:?}")
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }
    // The reason names the choices.
    let (e, _) = mistake(&["exec", "--on-rotation", "foo", "--", "x"]);
    assert!(e.to_string().contains("restart, signal, none"), "{e}");
}

#[test]
fn text_that_is_not_utf8() {
    let odd = OsString::from_vec(vec![0xff]);
    for (args, want) in [
        (
            vec![
                OsString::from("exec"),
                "--env".into(),
                odd.clone(),
                "--".into(),
                "x".into(),
            ],
            UsageError::NotUtf8("env"),
        ),
        (
            vec![OsString::from("token"), odd.clone()],
            UsageError::NotUtf8("NAME"),
        ),
        (
            vec![odd.clone()],
            UsageError::UnknownCommand("\u{fffd}".into()),
        ),
    ] {
        match Cli::parse_from(args.clone(), &|_: &str| None) {
            Err(Stop::Usage { error, .. }) => assert_eq!(error, want, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    // A path need not be UTF-8.
    let Ok(cli) = Cli::parse_from(
        vec![OsString::from("run"), "--config".into(), odd.clone()],
        &|_: &str| None,
    ) else {
        panic!()
    };
    assert_eq!(cli.config.map(PathBuf::into_os_string), Some(odd));
}

#[test]
fn help_everywhere_and_the_help_subcommand() {
    let top = spec::TOP.help();
    for args in [
        &[][..],
        &["--help"],
        &["-h"],
        &["help"],
        &["--config", "/x", "-h"],
    ] {
        if args.is_empty() {
            // No subcommand: the help, but as a mistake (stderr, exit 2).
            match parse_with(args, &[]) {
                Err(Stop::MissingCommand(text)) => assert_eq!(text, top),
                other => panic!("{other:?}"),
            }
        } else {
            assert_eq!(help(args), top, "{args:?}");
        }
    }
    let token = help(&["token", "--help"]);
    assert!(token.starts_with(
        "Print the current asset token\n\nUsage: asset-agent token [OPTIONS] [NAME]\n"
    ));
    assert_eq!(help(&["help", "token"]), token);
    assert_eq!(help(&["token", "-h"]), token);
    let show = help(&["key", "show", "--help"]);
    assert!(
        show.contains("Usage: asset-agent key show [OPTIONS]\n"),
        "{show}"
    );
    assert_eq!(help(&["help", "key", "show"]), show);
    assert_eq!(help(&["key", "help", "show"]), show);
    assert_eq!(help(&["key", "--help"]), help(&["help", "key"]));
    assert!(help(&["help", "help"]).contains("Usage: asset-agent help [COMMAND]..."));
    // Help is answered where it stands: after a good argument, before a bad one.
    assert_eq!(help(&["token", "--raw", "--help", "--bogus"]), token);
    assert_eq!(mistake(&["token", "--bogus", "--help"]).1, "token");
    assert_eq!(
        mistake(&["help", "bogus"]),
        (UsageError::UnknownCommand("bogus".into()), "")
    );
    assert_eq!(
        mistake(&["help", "key", "bogus"]),
        (UsageError::UnknownCommand("bogus".into()), "key")
    );
    match parse_with(&["key"], &[]) {
        Err(stop @ Stop::MissingCommand(_)) => {
            assert_eq!(stop.text(), help(&["key", "--help"]));
            assert_eq!(stop.exit_code(), EXIT_USAGE);
        }
        other => panic!("{other:?}"),
    }
}

/// The layout clap printed, pinned for one command.
#[test]
fn help_text_of_token() {
    let want = "\
Print the current asset token

Usage: asset-agent token [OPTIONS] [NAME]

Arguments:
  [NAME]  A child asset of a gateway, by name (`[children.NAME]` or children.d/NAME.toml); the agent's own identity when absent

Options:
      --config <PATH>   Config file (default /etc/asset-agent/agent.toml, or ~/.config/asset-agent/agent.toml when not root) [env: ASSET_AGENT_CONFIG]
      --raw             Print only the JWT (for `$(asset-agent token --raw)` in scripts)
      --json            Print the full JSON answer (the default)
      --min-ttl <SECS>  Refresh first unless the token has at least this many seconds left
      --socket <PATH>   The agent's socket (default: the config's `api.socket` when something is there, else the system agent's /run/asset-agent/agent.sock) [env: ASSET_AGENT_SOCKET]
  -h, --help            Print help
  -V, --version         Print version
";
    assert_eq!(help(&["token", "--help"]), want);
}

#[test]
fn every_help_lists_every_option_and_subcommand() {
    fn visit(spec: &'static Spec, seen: &mut usize) {
        let text = spec.help();
        for opt in std::iter::once(&spec::CONFIG).chain(spec.opts) {
            let left = match opt.value {
                Some(v) => format!("--{} <{v}>", opt.long),
                None => format!("--{} ", opt.long),
            };
            assert!(text.contains(&left), "{}: {left}\n{text}", spec.path);
            assert!(text.contains(opt.help), "{}: {}", spec.path, opt.help);
        }
        if let Kind::Group(list) = spec.kind {
            for sub in list {
                assert!(
                    text.contains(&format!("\n  {} ", sub.name())),
                    "{}: {}",
                    spec.path,
                    sub.name()
                );
                assert!(text.contains(sub.about));
                if !matches!(sub.kind, Kind::Help) {
                    visit(sub, seen);
                }
            }
        }
        *seen += 1;
    }
    let mut seen = 0;
    visit(&spec::TOP, &mut seen);
    // The top level, key, and the eleven commands.
    assert_eq!(seen, 13);
}

#[test]
fn version_everywhere() {
    for args in [
        &["--version"][..],
        &["-V"],
        &["token", "-V"],
        &["key", "show", "--version"],
    ] {
        match parse_with(args, &[]) {
            Err(stop @ Stop::Version) => {
                assert_eq!(
                    stop.text(),
                    format!("asset-agent {}\n", env!("CARGO_PKG_VERSION"))
                );
                assert_eq!(stop.exit_code(), 0);
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn a_mistake_is_one_line_and_where_to_find_help_exit_2() {
    let Err(stop) = parse_with(&["token", "--bogus"], &[]) else {
        panic!()
    };
    assert_eq!(stop.exit_code(), EXIT_USAGE);
    assert_eq!(
        stop.text(),
        "error: unexpected argument '--bogus'\n\nFor more information, try 'asset-agent token --help'.\n"
    );
    let Err(stop) = parse_with(&["frobnicate"], &[]) else {
        panic!()
    };
    assert_eq!(
        stop.text(),
        "error: unrecognized subcommand 'frobnicate'\n\nFor more information, try 'asset-agent --help'.\n"
    );
    let Err(stop) = parse_with(&["help"], &[]) else {
        panic!()
    };
    assert_eq!(stop.exit_code(), 0);
}
