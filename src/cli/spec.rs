//! What the command line accepts, as tables: every command, its options, its positional
//! argument and which options exclude each other; and the `--help` text made from them.
//! [`super::args`] walks the arguments against these tables.

use std::fmt::Write as _;

use super::Build;

/// One command (or the top level, or a group of subcommands).
#[derive(Debug)]
pub(crate) struct Spec {
    /// The words after `asset-agent` that select it ("" for the top level).
    pub path: &'static str,
    /// The first line of its help, also its line in its parent's list.
    pub about: &'static str,
    /// Its own options; [`CONFIG`], `--help` and `--version` are accepted everywhere.
    pub opts: &'static [Opt],
    /// Pairs of options that cannot be given together.
    pub conflicts: &'static [(&'static str, &'static str)],
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// Takes a subcommand from this table.
    Group(&'static [&'static Spec]),
    /// A command to run: its positional argument, and how its typed arguments are built
    /// from what the walk found.
    Leaf {
        positional: Positional,
        build: Build,
    },
    /// `help [COMMAND]...`.
    Help,
}

#[derive(Debug)]
pub(crate) enum Positional {
    None,
    /// At most one, anywhere among the options (`token [NAME]`).
    Optional(Arg),
    /// At least one, all after `--`, kept verbatim (`exec -- CMD...`).
    Trailing(Arg),
}

/// A positional argument, for the help.
#[derive(Debug)]
pub(crate) struct Arg {
    pub name: &'static str,
    pub help: &'static str,
}

/// A `--long` option.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opt {
    /// Without the dashes.
    pub long: &'static str,
    /// `Some(VALUE NAME)` when it takes a value (`--wait 10s` or `--wait=10s`), `None` for
    /// a flag.
    pub value: Option<&'static str>,
    pub help: &'static str,
    /// Shown after the help: the default, the environment variable, the choices.
    pub note: &'static str,
}

// === the tables ===

pub(crate) const BIN: &str = "asset-agent";
pub(crate) const CONFIG_ENV: &str = "ASSET_AGENT_CONFIG";
pub(crate) const SOCKET_ENV: &str = "ASSET_AGENT_SOCKET";

/// `--config`, accepted before and after the subcommand.
pub(crate) const CONFIG: Opt = Opt {
    long: "config",
    value: Some("PATH"),
    help: "Config file (default /etc/asset-agent/agent.toml, or ~/.config/asset-agent/agent.toml when not root)",
    note: "[env: ASSET_AGENT_CONFIG]",
};
const HELP_OPT: (&str, &str) = ("-h, --help", "Print help");
const VERSION_OPT: (&str, &str) = ("-V, --version", "Print version");

const SOCKET: Opt = Opt {
    long: "socket",
    value: Some("PATH"),
    help: "The agent's socket (default: the config's `api.socket` when something is there, else the system agent's /run/asset-agent/agent.sock)",
    note: "[env: ASSET_AGENT_SOCKET]",
};
const ASSET: Arg = Arg {
    name: "NAME",
    help: "A child asset of a gateway, by name (`[children.NAME]` or children.d/NAME.toml); the agent's own identity when absent",
};
const JSON_ANSWER: Opt = flag("json", "Print the agent's JSON answer");

const fn flag(long: &'static str, help: &'static str) -> Opt {
    Opt {
        long,
        value: None,
        help,
        note: "",
    }
}

pub(crate) static TOP: Spec = Spec {
    path: "",
    about: env!("CARGO_PKG_DESCRIPTION"),
    opts: &[],
    conflicts: &[],
    kind: Kind::Group(&[
        &RUN, &TOKEN, &STATUS, &WATCH, &REFRESH, &RELOAD, &CHECK, &KEY, &ENROLL, &EXEC, &HELP,
    ]),
};

static RUN: Spec = leaf(
    "run",
    "Run the agent (what systemd starts)",
    &[],
    Positional::None,
    super::build_run,
);

static TOKEN: Spec = Spec {
    path: "token",
    about: "Print the current asset token",
    opts: &[
        flag(
            "raw",
            "Print only the JWT (for `$(asset-agent token --raw)` in scripts)",
        ),
        flag("json", "Print the full JSON answer (the default)"),
        Opt {
            long: "min-ttl",
            value: Some("SECS"),
            help: "Refresh first unless the token has at least this many seconds left",
            note: "",
        },
        SOCKET,
    ],
    conflicts: &[("raw", "json")],
    kind: Kind::Leaf {
        positional: Positional::Optional(ASSET),
        build: super::build_token,
    },
};

static STATUS: Spec = leaf(
    "status",
    "Show the agent's state",
    &[flag("json", "Print the status document as JSON"), SOCKET],
    Positional::Optional(ASSET),
    super::build_status,
);

static WATCH: Spec = Spec {
    path: "watch",
    about: "Follow token rotations as they happen (one line per new token)",
    opts: &[
        flag("json", "Print each event as the agent's NDJSON line"),
        flag(
            "raw",
            "Print only each new JWT, one per line (for `while read -r token` loops)",
        ),
        SOCKET,
    ],
    conflicts: &[("json", "raw")],
    kind: Kind::Leaf {
        positional: Positional::Optional(ASSET),
        build: super::build_watch,
    },
};

static REFRESH: Spec = leaf(
    "refresh",
    "Force a refresh now (admin: root or the agent's user by default)",
    &[JSON_ANSWER, SOCKET],
    Positional::None,
    super::build_refresh,
);

static RELOAD: Spec = leaf(
    "reload",
    "Make the running agent re-read its configuration and report the outcome; exits 1 when the agent refuses it (the unit's ExecReload=, so `systemctl reload` fails too)",
    &[JSON_ANSWER, SOCKET],
    Positional::None,
    super::build_reload,
);

static CHECK: Spec = leaf(
    "check",
    "Validate the config and the environment without starting (exit 1 on errors)",
    &[
        flag("json", "Print the findings as JSON"),
        flag(
            "exchange",
            "Also perform one real token exchange (registers or links the Asset, as the agent would; the token is verified and discarded)",
        ),
    ],
    Positional::None,
    super::build_check,
);

static KEY: Spec = Spec {
    path: "key",
    about: "Show or create the device key",
    opts: &[],
    conflicts: &[],
    kind: Kind::Group(&[&KEY_SHOW, &KEY_GENERATE, &HELP]),
};

static KEY_SHOW: Spec = Spec {
    path: "key show",
    about: "Print the device public key (default: a summary with thumbprint and PEM)",
    opts: &[
        flag("jwk", "As a JWK (what the actor token's cnf.jwk carries)"),
        flag("pem", "As an SPKI PEM public key"),
        flag(
            "thumbprint",
            "Only the RFC 7638 thumbprint (the actor token's kid)",
        ),
    ],
    conflicts: &[("jwk", "pem"), ("jwk", "thumbprint"), ("pem", "thumbprint")],
    kind: Kind::Leaf {
        positional: Positional::None,
        build: super::build_key_show,
    },
};

static KEY_GENERATE: Spec = leaf(
    "key generate",
    "Create the device key if it does not exist yet (`run` also does this)",
    &[],
    Positional::None,
    super::build_key_generate,
);

static ENROLL: Spec = leaf(
    "enroll",
    "Enroll this device with the OAuth device flow: shows a code to approve in a browser, then stores the refresh token for the agent",
    &[],
    Positional::None,
    super::build_enroll,
);

static EXEC: Spec = leaf(
    "exec",
    "Run a command with the asset token in an environment variable and/or a file, kept current on rotation; forwards signals and exits with the command's status",
    &[
        Opt {
            long: "env",
            value: Some("NAME"),
            help: "Put the token in this environment variable (default ASSET_TOKEN when neither --env nor --file is given)",
            note: "",
        },
        Opt {
            long: "file",
            value: Some("PATH"),
            help: "Keep the token in this file (mode 0600, yours), rewritten on every rotation and removed when no valid token is held and when the command ends",
            note: "",
        },
        Opt {
            long: "on-rotation",
            value: Some("ACTION"),
            help: "On rotation: restart the command with the new token (the default with --env), send it --signal (the file is rewritten first), or do nothing but rewrite the file (the default with only --file)",
            note: "[possible values: restart, signal, none]",
        },
        Opt {
            long: "signal",
            value: Some("SIG"),
            help: "The signal --on-rotation=signal sends",
            note: "[default: HUP]",
        },
        Opt {
            long: "wait",
            value: Some("DURATION"),
            help: "How long to wait for a first token before giving up",
            note: "[default: 30s]",
        },
        SOCKET,
    ],
    Positional::Trailing(Arg {
        name: "CMD",
        help: "The command and its arguments, after `--`",
    }),
    super::build_exec,
);

pub(crate) static HELP: Spec = Spec {
    path: "help",
    about: "Print this message or the help of the given subcommand(s)",
    opts: &[],
    conflicts: &[],
    kind: Kind::Help,
};

const fn leaf(
    path: &'static str,
    about: &'static str,
    opts: &'static [Opt],
    positional: Positional,
    build: Build,
) -> Spec {
    Spec {
        path,
        about,
        opts,
        conflicts: &[],
        kind: Kind::Leaf { positional, build },
    }
}

// === impl Spec ===

impl Spec {
    /// The word that selects it in its parent.
    pub fn name(&self) -> &'static str {
        self.path.rsplit(' ').next().unwrap_or(self.path)
    }

    /// Its option `--long`, if it (or every command) has one.
    pub fn opt(&self, long: &str) -> Option<&'static Opt> {
        std::iter::once(&CONFIG)
            .chain(self.opts)
            .find(|o| o.long == long)
    }

    /// Its subcommand `name`, if it is a group that has one.
    pub fn command(&self, name: &str) -> Option<&'static Spec> {
        match self.kind {
            Kind::Group(list) => list.iter().copied().find(|c| c.name() == name),
            _ => None,
        }
    }

    /// `asset-agent token`, or `asset-agent` for the top level.
    pub fn display_name(&self) -> String {
        display_name(self.path)
    }

    /// The usage line's tail and the "Arguments" rows.
    fn arguments(&self) -> (String, Vec<(String, &'static str)>) {
        match &self.kind {
            Kind::Group(_) => (" [OPTIONS] <COMMAND>".to_owned(), Vec::new()),
            Kind::Leaf { positional, .. } => match positional {
                Positional::None => (" [OPTIONS]".to_owned(), Vec::new()),
                Positional::Optional(arg) => (
                    format!(" [OPTIONS] [{}]", arg.name),
                    vec![(format!("[{}]", arg.name), arg.help)],
                ),
                Positional::Trailing(arg) => (
                    format!(" [OPTIONS] -- <{}>...", arg.name),
                    vec![(format!("<{}>...", arg.name), arg.help)],
                ),
            },
            Kind::Help => (
                " [COMMAND]...".to_owned(),
                vec![(
                    "[COMMAND]...".to_owned(),
                    "Print help for the subcommand(s)",
                )],
            ),
        }
    }

    /// The `--help` text, in clap's layout.
    pub fn help(&self) -> String {
        let (usage, arguments) = self.arguments();
        let mut text = format!(
            "{}\n\nUsage: {}{usage}\n\n",
            self.about,
            self.display_name()
        );
        if let Kind::Group(list) = self.kind {
            let rows: Vec<(String, &str)> = list
                .iter()
                .map(|c| (c.name().to_owned(), c.about))
                .collect();
            section(&mut text, "Commands", &rows);
        }
        if !arguments.is_empty() {
            section(&mut text, "Arguments", &arguments);
        }
        if !matches!(self.kind, Kind::Help) {
            let mut rows: Vec<(String, String)> = std::iter::once(&CONFIG)
                .chain(self.opts)
                .map(|o| {
                    let left = match o.value {
                        Some(v) => format!("    --{} <{v}>", o.long),
                        None => format!("    --{}", o.long),
                    };
                    let right = if o.note.is_empty() {
                        o.help.to_owned()
                    } else {
                        format!("{} {}", o.help, o.note)
                    };
                    (left, right)
                })
                .collect();
            for (left, right) in [HELP_OPT, VERSION_OPT] {
                rows.push((left.to_owned(), right.to_owned()));
            }
            let rows: Vec<(String, &str)> =
                rows.iter().map(|(l, r)| (l.clone(), r.as_str())).collect();
            section(&mut text, "Options", &rows);
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    }
}

/// `asset-agent` followed by the words of `path`.
pub(crate) fn display_name(path: &str) -> String {
    if path.is_empty() {
        BIN.to_owned()
    } else {
        format!("{BIN} {path}")
    }
}

/// `Title:` then one aligned row per entry, then a blank line.
fn section(out: &mut String, title: &str, rows: &[(String, &str)]) {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let _ = writeln!(out, "{title}:");
    for (left, right) in rows {
        let _ = writeln!(out, "  {left:<width$}  {right}");
    }
    out.push('\n');
}
