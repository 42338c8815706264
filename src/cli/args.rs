//! Walking the arguments against one command's [`Spec`]: options (`--name value`,
//! `--name=value`, flags), the positional argument, what follows `--`, and where a
//! subcommand starts. Typed values are made from the result in [`super`].

use std::ffi::OsString;
use std::path::PathBuf;

use super::spec::{Kind, Opt, Positional, Spec};
use super::{Stop, UsageError};

/// What one command's part of the command line held.
#[derive(Debug, Default)]
pub(crate) struct Matches {
    /// Options in the order given; flags have no value.
    found: Vec<(&'static str, Option<OsString>)>,
    /// The positional argument, or everything after `--` for a trailing one.
    pub positional: Vec<OsString>,
}

/// Where the walk of a group stopped: the subcommand, with the arguments after it left in
/// the iterator.
pub(crate) type Next = Option<&'static Spec>;

/// Walks `args` for `spec` until they end or, for a group, until its subcommand.
///
/// `--help`/`-h` and `--version`/`-V` stop at once, as clap did: what comes after them
/// is not looked at.
pub(crate) fn walk(
    spec: &'static Spec,
    args: &mut impl Iterator<Item = OsString>,
) -> Result<(Matches, Next), Stop> {
    let usage = |error| Stop::Usage {
        error,
        command: spec.path,
    };
    let mut m = Matches::default();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            // Not UTF-8: can be neither an option nor a subcommand.
            m.positional_arg(spec, arg).map_err(usage)?;
            continue;
        };
        if text == "--" {
            m.rest(spec, args).map_err(usage)?;
            break;
        }
        if text == "--help" || text == "-h" {
            return Err(Stop::Help(spec.help()));
        }
        if text == "--version" || text == "-V" {
            return Err(Stop::Version);
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(OsString::from(value))),
                None => (long, None),
            };
            let opt = spec
                .opt(name)
                .ok_or_else(|| usage(UsageError::UnexpectedArgument(text.to_owned())))?;
            let value = option_value(opt, inline, args).map_err(usage)?;
            m.add(opt, value).map_err(usage)?;
        } else if text.starts_with('-') && text != "-" {
            return Err(usage(UsageError::UnexpectedArgument(text.to_owned())));
        } else if let Kind::Group(_) = spec.kind {
            let sub = spec
                .command(text)
                .ok_or_else(|| usage(UsageError::UnknownCommand(text.to_owned())))?;
            m.check_conflicts(spec).map_err(usage)?;
            return Ok((m, Some(sub)));
        } else {
            m.positional_arg(spec, arg).map_err(usage)?;
        }
    }
    m.check_conflicts(spec).map_err(usage)?;
    if let Kind::Leaf {
        positional: Positional::Trailing(_),
        ..
    } = spec.kind
        && m.positional.is_empty()
    {
        return Err(usage(UsageError::MissingCommand));
    }
    Ok((m, None))
}

/// The value of `opt`: `inline` (`--name=value`) or the next argument; none for a flag.
fn option_value(
    opt: &'static Opt,
    inline: Option<OsString>,
    args: &mut impl Iterator<Item = OsString>,
) -> Result<Option<OsString>, UsageError> {
    if opt.value.is_none() {
        return match inline {
            Some(v) => Err(UsageError::UnexpectedValue(
                opt.long,
                v.to_string_lossy().into_owned(),
            )),
            None => Ok(None),
        };
    }
    if inline.is_some() {
        return Ok(inline);
    }
    match args.next() {
        // `--socket --json` is a forgotten value, not a socket named "--json" (as with
        // clap); `--file -` is a value.
        Some(v) if v.to_str().is_none_or(|s| s == "-" || !s.starts_with('-')) => Ok(Some(v)),
        _ => Err(UsageError::MissingValue(opt.long)),
    }
}

// === impl Matches ===

impl Matches {
    fn add(&mut self, opt: &'static Opt, value: Option<OsString>) -> Result<(), UsageError> {
        if self.flag(opt.long) {
            return Err(UsageError::Duplicate(opt.long));
        }
        self.found.push((opt.long, value));
        Ok(())
    }

    fn positional_arg(&mut self, spec: &Spec, arg: OsString) -> Result<(), UsageError> {
        match spec.kind {
            Kind::Leaf {
                positional: Positional::Optional(_),
                ..
            } if self.positional.is_empty() => {
                self.positional.push(arg);
                Ok(())
            }
            Kind::Group(_) => Err(UsageError::UnknownCommand(
                arg.to_string_lossy().into_owned(),
            )),
            _ => Err(UsageError::UnexpectedArgument(
                arg.to_string_lossy().into_owned(),
            )),
        }
    }

    /// Everything after `--`: the trailing command, or the positional argument.
    fn rest(
        &mut self,
        spec: &Spec,
        args: &mut impl Iterator<Item = OsString>,
    ) -> Result<(), UsageError> {
        if let Kind::Leaf {
            positional: Positional::Trailing(_),
            ..
        } = spec.kind
        {
            self.positional.extend(args);
            return Ok(());
        }
        if let Kind::Group(_) = spec.kind {
            return Err(UsageError::UnexpectedArgument("--".to_owned()));
        }
        args.try_for_each(|arg| self.positional_arg(spec, arg))
    }

    fn check_conflicts(&self, spec: &Spec) -> Result<(), UsageError> {
        match spec
            .conflicts
            .iter()
            .find(|(a, b)| self.flag(a) && self.flag(b))
        {
            Some(&(a, b)) => Err(UsageError::Conflict(a, b)),
            None => Ok(()),
        }
    }

    /// Whether `--long` was given.
    pub fn flag(&self, long: &str) -> bool {
        self.found.iter().any(|(l, _)| *l == long)
    }

    /// The value given to `--long`, taken out.
    pub fn take(&mut self, long: &str) -> Option<OsString> {
        let i = self.found.iter().position(|(l, _)| *l == long)?;
        self.found.remove(i).1
    }

    /// The value given to `--long` as text.
    pub fn take_string(&mut self, long: &'static str) -> Result<Option<String>, UsageError> {
        self.take(long)
            .map(|v| v.into_string().map_err(|_| UsageError::NotUtf8(long)))
            .transpose()
    }

    /// The value given to `--long` as a path; an empty one is a missing one.
    pub fn take_path(&mut self, long: &'static str) -> Result<Option<PathBuf>, UsageError> {
        match self.take(long) {
            Some(v) if v.is_empty() => Err(UsageError::MissingValue(long)),
            v => Ok(v.map(PathBuf::from)),
        }
    }

    /// The value given to `--long`, parsed.
    pub fn take_parsed<T, E: std::fmt::Display>(
        &mut self,
        long: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, UsageError> {
        let Some(text) = self.take_string(long)? else {
            return Ok(None);
        };
        parse(&text)
            .map(Some)
            .map_err(|e| UsageError::InvalidValue {
                arg: long,
                value: text,
                reason: e.to_string(),
            })
    }
}
