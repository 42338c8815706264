//! The URLs a config holds (`salesforce.instance_url`, `mqtt.url`): the `url` crate's
//! WHATWG parser, behind a stricter check of the text.
//!
//! Stricter than a browser on purpose. What the WHATWG parser would quietly repair is
//! refused with a reason before it sees the text: spaces, control characters and
//! backslashes inside, a host that is not a plain name or an IP address (percent signs,
//! non-ASCII: Salesforce, site and broker hosts are ASCII), short IPv4 forms such as
//! `127.1`, and `.` or `..` path segments. What the parser does is kept: scheme and host
//! are lowercased, the default port of http and https is dropped, and an http(s) URL
//! without a path has `/`. On top of it, an mqtt host is lowercased too (the standard
//! leaves a host of another scheme as written; names are case-insensitive).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The reason [`Url::parse`] gives for an http(s) URL without a host (`https://`).
pub const NO_HOST: &str = "it has no host";

/// An absolute URL, checked, parsed and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(::url::Url);

// === impl Url ===

impl Url {
    /// Parses `input` (surrounding whitespace ignored).
    ///
    /// # Errors
    /// Why it is not a URL this agent accepts, in a few words.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
        check(s)?;
        let mut url = ::url::Url::parse(s).map_err(|e| match e {
            ::url::ParseError::EmptyHost => NO_HOST.to_owned(),
            other => other.to_string(),
        })?;
        if let Some(host) = url
            .host_str()
            .filter(|h| h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            let lower = host.to_ascii_lowercase();
            url.set_host(Some(&lower))
                .map_err(|e| format!("{lower:?} is not a host name ({e})"))?;
        }
        Ok(Self(url))
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }

    /// The host as written in the URL: a lowercased name, an IPv4 address, or an IPv6
    /// address in brackets. `None` when empty.
    pub fn host_str(&self) -> Option<&str> {
        self.0.host_str().filter(|h| !h.is_empty())
    }

    /// The port, unless it is the scheme's default (443 for https, 80 for http).
    pub fn port(&self) -> Option<u16> {
        self.0.port()
    }

    /// The port, or the default of http and https.
    pub fn port_or_known_default(&self) -> Option<u16> {
        self.0.port().or(match self.0.scheme() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        })
    }

    pub fn username(&self) -> &str {
        self.0.username()
    }

    pub fn password(&self) -> Option<&str> {
        self.0.password()
    }

    pub fn path(&self) -> &str {
        self.0.path()
    }

    pub fn query(&self) -> Option<&str> {
        self.0.query()
    }

    pub fn fragment(&self) -> Option<&str> {
        self.0.fragment()
    }

    /// Replaces the path; an http(s) URL's empty path becomes `/`.
    pub fn set_path(&mut self, path: &str) {
        self.0.set_path(path);
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::str::FromStr for Url {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// What the WHATWG parser would repair or read otherwise, refused with a reason:
/// `scheme://[user[:password]@]host[:port][/path][?query][#fragment]`, ASCII, no spaces.
fn check(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control() || *c == '\\')
    {
        return Err(format!(
            "it contains {c:?}; write the URL in ASCII, without spaces"
        ));
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("it is not an absolute URL (scheme://host)")?;
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(format!("{scheme:?} is not a URL scheme"));
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    check_host_and_port(hostport)?;
    if path.split('/').any(|seg| matches!(seg, "." | "..")) {
        return Err("it has a '.' or '..' path segment".to_owned());
    }
    Ok(())
}

/// The host must be a plain name, a full IPv4 address or a bracketed IPv6 address; the
/// port, if any, a number that fits.
fn check_host_and_port(hostport: &str) -> Result<(), String> {
    let port = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("its IPv6 address has no ']'")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("[{addr}] is not an IPv6 address"))?;
        match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("something follows its IPv6 address")?,
            ),
        }
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
        // All digits and dots: an IPv4 address, in full (no `127.1`).
        if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("{host:?} is not an IPv4 address (a.b.c.d)"))?;
        }
        port
    };
    match port {
        None | Some("") => Ok(()),
        Some(p) if p.chars().all(|c| c.is_ascii_digit()) => p
            .parse::<u16>()
            .map(drop)
            .map_err(|_| format!("port {p} is out of range")),
        Some(p) => Err(format!("port {p:?} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `url` crate (the WHATWG parser) makes of the same input.
    fn theirs(s: &str) -> (String, Option<String>, Option<u16>, String) {
        let u = ::url::Url::parse(s).unwrap();
        (
            u.as_str().to_owned(),
            u.host_str().map(str::to_owned),
            u.port(),
            u.path().to_owned(),
        )
    }

    fn ours(s: &str) -> (String, Option<String>, Option<u16>, String) {
        let u = Url::parse(s).unwrap();
        (
            u.as_str().to_owned(),
            u.host_str().map(str::to_owned),
            u.port(),
            u.path().to_owned(),
        )
    }

    #[test]
    fn valid_urls_read_as_the_whatwg_parser_reads_them() {
        for s in [
            "https://acme.my.salesforce.com",
            "https://acme.my.salesforce.com/",
            "HTTPS://Acme.My.Salesforce.COM/Support/",
            "  https://acme.my.site.com/support  ",
            "https://acme.my.site.com:443/support",
            "https://acme.my.site.com:8443/a/b/",
            "http://127.0.0.1:41000",
            "http://localhost:8080/",
            "http://[::1]:8080",
            "http://[0:0:0:0:0:0:0:1]/x",
            "https://user:pw@host.example/?q=1#f",
            "https://host.example?",
            "https://host_name.example/",
            "mqtts://broker.example.com",
            "mqtts://broker.example.com:8883",
            "mqtt://127.0.0.1:1883/",
            "mqtts://[::1]:8883",
        ] {
            assert_eq!(ours(s), theirs(s), "{s}");
        }
    }

    #[test]
    fn parts_are_read() {
        let u = Url::parse("https://me:secret@Host.example:8443/p?q=1#frag").unwrap();
        assert_eq!(u.scheme(), "https");
        assert_eq!(u.username(), "me");
        assert_eq!(u.password(), Some("secret"));
        assert_eq!(u.host_str(), Some("host.example"));
        assert_eq!(u.port_or_known_default(), Some(8443));
        assert_eq!(u.query(), Some("q=1"));
        assert_eq!(u.fragment(), Some("frag"));
        let mut u = Url::parse("https://h.example/site/").unwrap();
        assert_eq!(u.port_or_known_default(), Some(443));
        u.set_path("/site");
        assert_eq!(u.as_str(), "https://h.example/site");
        u.set_path("");
        assert_eq!(u.to_string(), "https://h.example/");
        assert_eq!(
            Url::parse("mqtt://h").unwrap().port_or_known_default(),
            None
        );
        // The WHATWG parser keeps an mqtt host's case; names are case-insensitive, so here
        // every host is lowercased.
        let u = Url::parse("MQTT://Broker.Example.com").unwrap();
        assert_eq!(u.as_str(), "mqtt://broker.example.com");
        // An http(s) URL without a host is no URL to the WHATWG parser; another scheme's is
        // one without a host.
        assert_eq!(Url::parse("https://").unwrap_err(), NO_HOST);
        assert_eq!(Url::parse("mqtt://").unwrap().host_str(), None);
    }

    #[test]
    fn what_a_browser_would_repair_is_refused_with_a_reason() {
        for (s, why) in [
            ("acme.my.salesforce.com", "not an absolute URL"),
            ("https:acme.example", "not an absolute URL"),
            ("1https://h", "not a URL scheme"),
            ("https://ac me.example", "without spaces"),
            ("https://h.example\\path", "'\\\\'"),
            ("https://bücher.example", "ASCII"),
            ("https://h%41.example", "not a host name"),
            ("http://127.1", "not an IPv4 address"),
            ("http://256.0.0.1", "not an IPv4 address"),
            ("http://[::1", "no ']'"),
            ("http://[fe80::zz]", "not an IPv6 address"),
            ("http://[::1]x", "follows its IPv6"),
            ("https://h.example:99999", "out of range"),
            ("https://h.example:80a", "not a number"),
            ("https://h.example/a/../b", "'..' path segment"),
            ("https://h.example/./b", "'..' path segment"),
        ] {
            let err = Url::parse(s).unwrap_err();
            assert!(err.contains(why), "{s}: {err}");
        }
    }
}
