//! Time and network checks: the clock's year, then `instance_url` step by step (DNS, TCP,
//! TLS with the agent's own client and trust anchors), and the clock against the
//! instance's `Date` header. Each step names what failed, so "no network", "blocked port"
//! and "TLS-inspecting proxy" are told apart; a failed step skips the ones after it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Url;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::Finding;
use crate::config::Config;
use crate::error::chain;
use crate::salesforce::{self, Step, Upstream};
use crate::skew::Skew;
use wire::clock::{self, Clock};

/// A clock before this year has not been set (an RTC-less board boots in 1970 or at its
/// image's build date); TLS certificates and every JWT timestamp fail then.
pub const MIN_YEAR: i64 = 2025;
/// Beyond this, the clock is as wrong the other way.
pub const MAX_YEAR: i64 = 2100;
/// Skew up to this is Date-header noise and not reported.
const SKEW_OK_SECS: i64 = crate::skew::DEFAULT_SKEW_THRESHOLD_SECS;
/// Skew beyond this is an error: the agent corrects the timestamps it mints, but TLS
/// certificate checks and anything else on the device still use the wrong time.
const SKEW_ERROR_SECS: i64 = 300;

const NTP_FIX: &str = "enable time synchronisation (timedatectl set-ntp true, or systemd-timesyncd/chrony) and check the board's RTC battery";

pub(super) async fn check(config: &Config, clock: &Clock) -> Vec<Finding> {
    let mut out = vec![year(clock)];
    let url = &config.salesforce.instance_url;
    let limit = config.salesforce.timeout;
    let Some(addrs) = dns(url, limit, &mut out).await else {
        return out;
    };
    if !connect(url, &addrs, limit, &mut out).await {
        return out;
    }
    let skew = Arc::new(Skew::default());
    out.push(tls(config, clock, &skew).await);
    out.push(match skew.measured() {
        None => Finding::info(
            "clock.skew",
            "not measured: the instance's answer carried no Date header",
        ),
        Some(s) => skew_finding(s),
    });
    out
}

fn year(clock: &Clock) -> Finding {
    let now = clock.unix();
    let text = clock::rfc3339(now);
    let year: i64 = text.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    if now < 0 || !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        Finding::error(
            "clock",
            format!("the system clock says {text}, which cannot be right"),
            NTP_FIX,
        )
    } else {
        Finding::ok("clock", format!("the system clock says {text}"))
    }
}

/// What a skew means for consumers of the tokens the agent serves.
const EXP_NOTE: &str = "token exp is Salesforce time: compared with this clock, tokens look expired or too long-lived (expires_in is right)";

fn skew_finding(server_minus_local: i64) -> Finding {
    let abs = server_minus_local.unsigned_abs();
    let dir = if server_minus_local > 0 {
        "behind"
    } else {
        "ahead of"
    };
    let msg = format!("this device's clock is {abs}s {dir} the instance's (from its Date header)");
    if abs <= SKEW_OK_SECS.unsigned_abs() {
        Finding::ok(
            "clock.skew",
            format!("within {SKEW_OK_SECS}s of the instance's clock"),
        )
    } else if abs <= SKEW_ERROR_SECS.unsigned_abs() {
        Finding::warning(
            "clock.skew",
            format!("{msg}; the agent corrects the timestamps it mints, and {EXP_NOTE}"),
            NTP_FIX,
        )
    } else {
        Finding::error(
            "clock.skew",
            format!(
                "{msg}; TLS checks and other software on the device use the wrong time, and {EXP_NOTE}"
            ),
            NTP_FIX,
        )
    }
}

/// Resolves the host; `None` (with an error finding) when it does not.
async fn dns(url: &Url, limit: Duration, out: &mut Vec<Finding>) -> Option<Vec<SocketAddr>> {
    let port = url.port_or_known_default().unwrap_or(443);
    let Some(host) = url.host_str() else {
        out.push(Finding::error(
            "dns",
            format!("{url} has no host"),
            "set salesforce.instance_url to your My Domain URL",
        ));
        return None;
    };
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        out.push(Finding::ok(
            "dns",
            format!("{ip} is an address; nothing to resolve"),
        ));
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let fix = "check the network and /etc/resolv.conf (resolvectl status), and the host name in salesforce.instance_url";
    match timeout(limit, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                out.push(Finding::error(
                    "dns",
                    format!("{host} resolves to no address"),
                    fix,
                ));
                return None;
            }
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            out.push(Finding::ok(
                "dns",
                format!("{host} resolves to {}", shown.join(", ")),
            ));
            Some(addrs)
        }
        Ok(Err(e)) => {
            out.push(Finding::error(
                "dns",
                format!("cannot resolve {host}: {e}"),
                fix,
            ));
            None
        }
        Err(_) => {
            out.push(Finding::error(
                "dns",
                format!("resolving {host} took longer than {}s", limit.as_secs()),
                fix,
            ));
            None
        }
    }
}

/// Opens a TCP connection to one of `addrs`; false (with an error finding) if none opens.
async fn connect(url: &Url, addrs: &[SocketAddr], limit: Duration, out: &mut Vec<Finding>) -> bool {
    let mut last = String::new();
    for addr in addrs {
        match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                out.push(Finding::ok(
                    "connect",
                    format!("TCP connection to {addr} opened"),
                ));
                return true;
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {}s", limit.as_secs()),
        }
    }
    out.push(Finding::error(
        "connect",
        format!(
            "cannot open a TCP connection to {} ({last})",
            url.host_str().unwrap_or("the instance")
        ),
        "check the network route and firewall: the device needs outbound TCP to the instance (port 443 for https), directly or through the site's proxy",
    ));
    false
}

/// An HTTPS request with the agent's own client, trust anchors and `ca_file`. Any HTTP
/// answer, even an error status, proves TLS works; only transport failures count.
async fn tls(config: &Config, clock: &Clock, skew: &Arc<Skew>) -> Finding {
    let sf = &config.salesforce;
    let https = sf.instance_url.scheme() == "https";
    crate::crypto::install();
    let upstream = match Upstream::new(
        &sf.instance_url,
        sf.ca_file.as_deref(),
        sf.timeout,
        clock.clone(),
        skew.clone(),
    ) {
        Ok(u) => u,
        Err(e) => {
            return Finding::error(
                "tls",
                format!("cannot set up the HTTPS client: {}", chain(&e)),
                "fix salesforce.ca_file: it must be a PEM file with at least one certificate",
            );
        }
    };
    let host = sf.instance_url.host_str().unwrap_or("the instance");
    match upstream
        .get_json::<serde_json::Value>(Step::Jwks, wire::oauth::JWKS_PATH)
        .await
    {
        Ok(_) | Err(salesforce::Error::Status { .. } | salesforce::Error::Malformed { .. }) => {
            if https {
                Finding::ok(
                    "tls",
                    format!("TLS handshake with {host} succeeded and it answered HTTP"),
                )
            } else {
                Finding::info(
                    "tls",
                    format!(
                        "{host} is plain http on loopback (the emulator): answered, no TLS involved"
                    ),
                )
            }
        }
        Err(e @ salesforce::Error::Timeout { .. }) => Finding::error(
            "tls",
            format!(
                "{host} accepted the connection but did not answer: {}",
                chain(&e)
            ),
            "a proxy or firewall may be holding the connection; check the path to the instance",
        ),
        Err(e) => Finding::error(
            "tls",
            format!("{host}: {}", chain(&e)),
            if https {
                "if the certificate is refused: check the clock (see `clock`), and behind a TLS-inspecting proxy set salesforce.ca_file to its CA; if the handshake itself fails, check that the URL's port speaks HTTPS"
            } else {
                "check that the emulator or server is running at salesforce.instance_url"
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_grades() {
        use super::super::Severity::*;
        let rows = [
            (0, Ok),
            (-10, Ok),
            (11, Warning),
            (-300, Warning),
            (301, Error),
            (-86_400, Error),
        ];
        for (s, want) in rows {
            assert_eq!(skew_finding(s).severity, want, "{s}");
        }
        assert!(skew_finding(60).message.contains("60s behind"));
        assert!(
            skew_finding(-3600)
                .message
                .contains("token exp is Salesforce time")
        );
        assert!(skew_finding(-60).message.contains("60s ahead of"));
    }
}
