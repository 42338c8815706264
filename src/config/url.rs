//! The URLs a config holds (`salesforce.instance_url`, `mqtt.url`): absolute, ASCII,
//! `scheme://[user[:password]@]host[:port][/path][?query][#fragment]`.
//!
//! Stricter than a browser on purpose. What the WHATWG parser would quietly repair is
//! refused with a reason instead: spaces, control characters and backslashes inside, a
//! host that is not a plain name or an IP address (percent signs, non-ASCII: Salesforce,
//! site and broker hosts are ASCII), short IPv4 forms such as `127.1`, and `.` or `..`
//! path segments. What it keeps from that standard: scheme and host are lowercased (every
//! host here, also an mqtt one, which that standard leaves as written), the
//! default port of http and https is dropped, and an http(s) URL without a path has `/`,
//! so a valid URL prints the same as before this parser replaced the `url` crate (its
//! tests compare the two).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An absolute URL, parsed and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    serialization: String,
    scheme: String,
    username: String,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
    query: Option<String>,
    fragment: Option<String>,
}

// === impl Url ===

impl Url {
    /// Parses `input` (surrounding whitespace ignored).
    ///
    /// # Errors
    /// Why it is not a URL this agent accepts, in a few words.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
        if let Some(c) = s.chars().find(|c| {
            !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control() || *c == '\\'
        }) {
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
        let scheme = scheme.to_ascii_lowercase();
        let special = matches!(scheme.as_str(), "http" | "https");

        let (rest, fragment) = split_off(rest, '#');
        let (rest, query) = split_off(rest, '?');
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (String::new(), None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (user.to_owned(), Some(pass.to_owned())),
                None => (u.to_owned(), None),
            },
        };
        let (host, port) = host_and_port(hostport)?;
        let default = match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let port = port.filter(|p| Some(*p) != default);
        if path.split('/').any(|seg| matches!(seg, "." | "..")) {
            return Err("it has a '.' or '..' path segment".to_owned());
        }
        let path = if path.is_empty() && special {
            "/"
        } else {
            path
        };
        let mut url = Self {
            serialization: String::new(),
            scheme,
            username,
            password,
            host,
            port,
            path: path.to_owned(),
            query: query.map(str::to_owned),
            fragment: fragment.map(str::to_owned),
        };
        url.serialize();
        Ok(url)
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host as written in the URL: a lowercased name, an IPv4 address, or an IPv6
    /// address in brackets. `None` when empty.
    pub fn host_str(&self) -> Option<&str> {
        (!self.host.is_empty()).then_some(self.host.as_str())
    }

    /// The port, unless it is the scheme's default (443 for https, 80 for http).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or the default of http and https.
    pub fn port_or_known_default(&self) -> Option<u16> {
        self.port.or(match self.scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    pub fn fragment(&self) -> Option<&str> {
        self.fragment.as_deref()
    }

    /// Replaces the path; an http(s) URL's empty path becomes `/`.
    pub fn set_path(&mut self, path: &str) {
        self.path = if path.is_empty() && matches!(self.scheme.as_str(), "http" | "https") {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        self.serialize();
    }

    pub fn as_str(&self) -> &str {
        &self.serialization
    }

    fn serialize(&mut self) {
        let mut s = format!("{}://", self.scheme);
        if !self.username.is_empty() || self.password.is_some() {
            s.push_str(&self.username);
            if let Some(p) = &self.password {
                s.push(':');
                s.push_str(p);
            }
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s.push_str(&self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        if let Some(f) = &self.fragment {
            s.push('#');
            s.push_str(f);
        }
        self.serialization = s;
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
        f.write_str(&self.serialization)
    }
}

/// `s` up to the first `sep`, and what follows it (`Some("")` for a trailing `sep`).
fn split_off(s: &str, sep: char) -> (&str, Option<&str>) {
    match s.split_once(sep) {
        Some((head, tail)) => (head, Some(tail)),
        None => (s, None),
    }
}

/// The normalised host (empty when absent) and the port of `hostport`.
fn host_and_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("its IPv6 address has no ']'")?;
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("[{addr}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("something follows its IPv6 address")?,
            ),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = split_off(hostport, ':');
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
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.chars().all(|c| c.is_ascii_digit()) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("port {p} is out of range"))?,
        ),
        Some(p) => return Err(format!("port {p:?} is not a number")),
    };
    Ok((host, port))
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
        assert_eq!(Url::parse("https://").unwrap().host_str(), None);
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
