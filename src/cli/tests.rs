//! Every rule of the command line, one test each (the binary's side is in tests/cli.rs).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;
use std::time::Duration;

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

/// The kind of mistake in `args`, and its text.
fn mistake(args: &[&str]) -> (ErrorKind, String) {
    mistake_os(args.iter().map(OsString::from).collect())
}

fn mistake_os(args: Vec<OsString>) -> (ErrorKind, String) {
    match Cli::parse_from(args.clone(), &|_: &str| None) {
        Err(stop) if stop.exit_code() == EXIT_USAGE => (stop.kind(), stop.text()),
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

/// Asserts the mistake in `args` is of `kind`, on one first line naming each of `names`,
/// and says where help is.
fn assert_mistake(args: &[&str], kind: ErrorKind, names: &[&str]) {
    let (got, text) = mistake(args);
    assert_eq!(got, kind, "{args:?}: {text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{args:?}: {text}");
    for name in names {
        assert!(first.contains(name), "{args:?} must name {name}: {text}");
    }
    assert!(
        text.ends_with("For more information, try '--help'.\n"),
        "{text}"
    );
}

fn help(args: &[&str]) -> String {
    match parse_with(args, &[]) {
        Err(stop) if stop.kind() == ErrorKind::DisplayHelp => {
            assert_eq!(stop.exit_code(), 0);
            stop.text()
        }
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
    for args in [&["exec"][..], &["exec", "--"], &["exec", "--env", "T"]] {
        let (kind, text) = mistake(args);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument, "{args:?}");
        assert!(
            text.starts_with("error: the command to run is missing: give it after '--'\n"),
            "{text}"
        );
        assert!(
            text.contains("Usage: asset-agent exec [OPTIONS] -- <CMD>..."),
            "{text}"
        );
    }
    assert_mistake(&["exec", "prog"], ErrorKind::UnknownArgument, &["'prog'"]);
}

#[test]
fn one_asset_name_at_most_and_none_where_not_taken() {
    for (args, name) in [
        (&["status", "a", "b"][..], "'b'"),
        (&["token", "a", "--", "b"], "'b'"),
        (&["run", "extra"], "'extra'"),
        (&["key", "show", "extra"], "'extra'"),
    ] {
        assert_mistake(args, ErrorKind::UnknownArgument, &[name]);
    }
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
    // Twice at the same level is a mistake.
    assert_mistake(
        &["--config", "/a", "--config", "/b", "run"],
        ErrorKind::ArgumentConflict,
        &["--config"],
    );
    assert_mistake(
        &["run", "--config", "/a", "--config=/b"],
        ErrorKind::ArgumentConflict,
        &["--config"],
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

/// Strictness of ours that clap's `env` lacks: an empty variable is a mistake naming it.
#[test]
fn an_empty_path_is_refused_from_the_command_line_and_the_environment() {
    for (args, var) in [
        (&["status"][..], "ASSET_AGENT_SOCKET"),
        (&["exec", "--", "x"], "ASSET_AGENT_SOCKET"),
        (&["run"], "ASSET_AGENT_CONFIG"),
        (&["key", "show"], "ASSET_AGENT_CONFIG"),
    ] {
        let Err(stop) = parse_with(args, &[(var, "")]) else {
            panic!("{args:?} {var}")
        };
        assert_eq!(stop.exit_code(), EXIT_USAGE);
        assert!(
            stop.text().starts_with(&format!(
                "error: the environment variable {var} is set but empty (unset it or give a path)\n"
            )),
            "{}",
            stop.text()
        );
        let usage = format!("Usage: asset-agent {}", args[..args.len().min(2)].join(" "));
        assert!(
            stop.text().contains(usage.trim_end_matches(" --")),
            "{}",
            stop.text()
        );
    }
    // An empty variable that the command line overrides, or that the command does not
    // read, is no mistake.
    assert!(parse_with(&["run", "--config", "/a"], &[("ASSET_AGENT_CONFIG", "")]).is_ok());
    assert!(parse_with(&["run"], &[("ASSET_AGENT_SOCKET", "")]).is_ok());
    for (args, name) in [
        (&["status", "--socket="][..], "--socket"),
        (&["run", "--config="], "--config"),
        (&["exec", "--file=", "--", "x"], "--file"),
    ] {
        assert_mistake(args, ErrorKind::InvalidValue, &[name]);
    }
}

#[test]
fn options_that_exclude_each_other() {
    for (args, a, b) in [
        (&["token", "--raw", "--json"][..], "--raw", "--json"),
        (&["token", "--json", "--raw"], "--raw", "--json"),
        (&["watch", "--json", "--raw"], "--json", "--raw"),
        (&["watch", "--raw", "--json"], "--json", "--raw"),
        (&["key", "show", "--jwk", "--pem"], "--jwk", "--pem"),
        (
            &["key", "show", "--thumbprint", "--jwk"],
            "--jwk",
            "--thumbprint",
        ),
        (
            &["key", "show", "--pem", "--thumbprint"],
            "--pem",
            "--thumbprint",
        ),
    ] {
        assert_mistake(args, ErrorKind::ArgumentConflict, &[a, b]);
    }
}

#[test]
fn unknown_arguments_and_subcommands() {
    for (args, kind, name) in [
        (
            &["frobnicate"][..],
            ErrorKind::InvalidSubcommand,
            "'frobnicate'",
        ),
        (&["key", "frob"], ErrorKind::InvalidSubcommand, "'frob'"),
        (&["--bogus", "run"], ErrorKind::UnknownArgument, "'--bogus'"),
        (
            &["token", "--bogus"],
            ErrorKind::UnknownArgument,
            "'--bogus'",
        ),
        (
            &["token", "--bogus=1"],
            ErrorKind::UnknownArgument,
            "'--bogus'",
        ),
        (&["-x"], ErrorKind::UnknownArgument, "'-x'"),
        (&["status", "-j"], ErrorKind::UnknownArgument, "'-j'"),
        // An option of another command.
        (&["check", "--raw"], ErrorKind::UnknownArgument, "'--raw'"),
        (
            &["check", "--socket", "/s"],
            ErrorKind::UnknownArgument,
            "'--socket'",
        ),
        // No abbreviations.
        (&["token", "--ra"], ErrorKind::UnknownArgument, "'--ra'"),
        (&["help", "bogus"], ErrorKind::InvalidSubcommand, "'bogus'"),
        (
            &["help", "key", "bogus"],
            ErrorKind::InvalidSubcommand,
            "'bogus'",
        ),
    ] {
        assert_mistake(args, kind, &[name]);
    }
}

#[test]
fn missing_values() {
    for (args, name) in [
        (&["token", "--socket"][..], "--socket"),
        (&["token", "--socket", "--raw"], "--socket"),
        (&["token", "--min-ttl", "-5"], "--min-ttl"),
        (&["--config"], "--config"),
        (&["exec", "--wait", "--", "x"], "--wait"),
    ] {
        let (kind, text) = mistake(args);
        assert!(
            matches!(
                kind,
                ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::UnknownArgument
            ),
            "{args:?}: {kind:?}"
        );
        assert!(
            text.lines().next().unwrap_or_default().contains(name),
            "{text}"
        );
    }
}

#[test]
fn a_flag_takes_no_value() {
    assert_mistake(
        &["token", "--raw=1"],
        ErrorKind::TooManyValues,
        &["'1'", "--raw"],
    );
}

#[test]
fn an_option_given_twice() {
    for (args, name) in [
        (&["token", "--raw", "--raw"][..], "--raw"),
        (&["status", "--socket", "/a", "--socket=/b"], "--socket"),
        (
            &["exec", "--wait", "1s", "--wait", "2s", "--", "x"],
            "--wait",
        ),
    ] {
        assert_mistake(args, ErrorKind::ArgumentConflict, &[name]);
    }
}

#[test]
fn invalid_values() {
    for (args, name, value) in [
        (&["token", "--min-ttl", "abc"][..], "--min-ttl", "'abc'"),
        (&["token", "--min-ttl=1.5"], "--min-ttl", "'1.5'"),
        (&["exec", "--wait", "3x", "--", "x"], "--wait", "'3x'"),
        (&["exec", "--wait=", "--", "x"], "--wait", "''"),
        (
            &["exec", "--on-rotation", "foo", "--", "x"],
            "--on-rotation",
            "'foo'",
        ),
        (
            &["exec", "--on-rotation=Restart", "--", "x"],
            "--on-rotation",
            "'Restart'",
        ),
    ] {
        let (kind, text) = mistake(args);
        assert!(
            matches!(kind, ErrorKind::InvalidValue | ErrorKind::ValueValidation),
            "{args:?}: {kind:?}"
        );
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains(name) && first.contains(value),
            "{args:?}: {text}"
        );
    }
    // The reason names the choices.
    let (_, text) = mistake(&["exec", "--on-rotation", "foo", "--", "x"]);
    assert!(text.contains("restart, signal, none"), "{text}");
}

#[test]
fn text_that_is_not_utf8() {
    let odd = OsString::from_vec(vec![0xff]);
    for args in [
        vec![
            OsString::from("exec"),
            "--env".into(),
            odd.clone(),
            "--".into(),
            "x".into(),
        ],
        vec![OsString::from("token"), odd.clone()],
    ] {
        assert_eq!(
            mistake_os(args.clone()).0,
            ErrorKind::InvalidUtf8,
            "{args:?}"
        );
    }
    assert_eq!(
        mistake_os(vec![odd.clone()]).0,
        ErrorKind::InvalidSubcommand
    );
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
    let top = help(&["--help"]);
    assert!(
        top.contains("Usage: asset-agent [OPTIONS] <COMMAND>\n"),
        "{top}"
    );
    for args in [&["-h"][..], &["help"], &["--config", "/x", "-h"]] {
        assert_eq!(help(args), top, "{args:?}");
    }
    // No subcommand: the help, but as a mistake (stderr, exit 2).
    for args in [&[][..], &["--config", "/x"]] {
        let Err(stop) = parse_with(args, &[]) else {
            panic!()
        };
        assert_eq!(stop.exit_code(), EXIT_USAGE, "{args:?}");
        assert_eq!(stop.text(), top, "{args:?}");
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
    assert_mistake(
        &["token", "--bogus", "--help"],
        ErrorKind::UnknownArgument,
        &["'--bogus'"],
    );
    for args in [&["key"][..], &["key", "--config", "/x"]] {
        let Err(stop) = parse_with(args, &[]) else {
            panic!()
        };
        assert_eq!(stop.text(), help(&["key", "--help"]), "{args:?}");
        assert_eq!(stop.exit_code(), EXIT_USAGE);
    }
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
            Err(stop) if stop.kind() == ErrorKind::DisplayVersion => {
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

/// clap's checks of the declarations (names, conflicts, positionals).
#[test]
fn the_declarations_are_consistent() {
    command().debug_assert();
}
