//! The operator's webhook allowlist (`FNMESH_WEBHOOK_ALLOWLIST`): which hosts a function's
//! webhook destination may name, which may be reached over plain HTTP, and which addresses
//! that are not public (loopback, private, link-local, …) may be connected to.
//!
//! Entries, comma-separated:
//! - `hooks.example.com` — that host, over HTTPS;
//! - `*.example.com` — any host under `example.com` (not `example.com` itself), over HTTPS;
//! - `http://host[:port]` — that host (on that port, when one is given) over HTTP or HTTPS;
//! - `10.1.0.0/16`, `fd00::/8` — addresses in that range may be connected to even though
//!   they are not public;
//! - a host that is an IP address (`203.0.113.7`, `http://127.0.0.1:9000`) allows that
//!   address too.
//!
//! A webhook is sent only if its host matches a host entry and every address it is connected
//! to is public or allowed by an entry. The addresses are checked where the connection is
//! made (the webhook client's resolver), so a name that resolves to a public address at
//! deploy and to `127.0.0.1` at delivery is still refused.

use std::net::IpAddr;

use fnmesh_core::destination::WebhookUrl;
use ipnet::IpNet;

/// A parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<HostEntry>,
    ranges: Vec<IpNet>,
}

#[derive(Debug, Clone)]
struct HostEntry {
    /// Lowercase host; for a wildcard, the suffix after `*.`.
    host: String,
    wildcard: bool,
    /// Plain HTTP allowed.
    http: bool,
    port: Option<u16>,
}

/// An allowlist entry that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FNMESH_WEBHOOK_ALLOWLIST entry {entry:?}: {reason}")]
pub struct AllowlistError {
    entry: String,
    reason: &'static str,
}

/// Why a webhook may not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The host is not on the allowlist.
    #[error("webhook host {0:?} is not on the operator's allowlist (FNMESH_WEBHOOK_ALLOWLIST)")]
    Host(String),
    /// Plain HTTP for a host not allowed it.
    #[error(
        "webhook {0:?} must use https (plain http only for hosts the allowlist names as http://)"
    )]
    PlainHttp(String),
    /// An address that is not public and not allowed.
    #[error("webhook address {0} is loopback, private or reserved and not on the allowlist")]
    Address(IpAddr),
}

impl Allowlist {
    /// Parses a comma-separated list (empty: nothing is allowed).
    pub fn parse(list: &str) -> Result<Self, AllowlistError> {
        let mut this = Self::default();
        for raw in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            this.push(raw)?;
        }
        Ok(this)
    }

    fn push(&mut self, raw: &str) -> Result<(), AllowlistError> {
        let err = |reason| AllowlistError {
            entry: raw.to_owned(),
            reason,
        };
        if raw.contains('/') && !raw.contains("://") {
            let net: IpNet = raw
                .parse()
                .map_err(|_| err("not an address range (a.b.c.d/n or an IPv6 range)"))?;
            self.ranges.push(net.trunc());
            return Ok(());
        }
        let (http, rest) = match raw.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            Some(_) => return Err(err("only http:// may prefix a host")),
            None => (false, raw),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.is_empty() {
            return Err(err("a host (with an optional port) is expected"));
        }
        // Parsed as a URL's authority, so ports and IPv6 brackets read as in webhook URLs.
        let url = WebhookUrl::parse(&format!(
            "https://{}",
            rest.replacen("*.", "wildcard---.", 1)
        ))
        .map_err(|_| err("not a host name or address"))?;
        let mut host = url.host();
        let wildcard = host.starts_with("wildcard---.");
        if wildcard {
            host = host.trim_start_matches("wildcard---.").to_owned();
        }
        let port = url.url().port();
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.ranges.push(IpNet::from(ip));
        }
        self.hosts.push(HostEntry {
            host,
            wildcard,
            http,
            port,
        });
        Ok(())
    }

    /// Whether the allowlist is empty (no webhook may be sent).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Checks a webhook URL's host and scheme (not its addresses: [`Allowlist::check_ip`],
    /// where it is connected to).
    pub fn check_url(&self, url: &WebhookUrl) -> Result<(), Refused> {
        let host = url.host();
        let port = url.port();
        let matching = |e: &&HostEntry| {
            let name = if e.wildcard {
                host.strip_suffix(&e.host)
                    .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
            } else {
                host == e.host
            };
            name && e.port.is_none_or(|p| p == port)
        };
        let entries: Vec<&HostEntry> = self.hosts.iter().filter(matching).collect();
        if entries.is_empty() {
            return Err(Refused::Host(host));
        }
        if url.is_plain_http() && !entries.iter().any(|e| e.http) {
            return Err(Refused::PlainHttp(url.url().to_string()));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(())
    }

    /// Whether a webhook may connect to `ip`: it is public, or in an allowed range.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if is_public(ip) || self.ranges.iter().any(|net| net.contains(&ip)) {
            Ok(())
        } else {
            Err(Refused::Address(ip))
        }
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared
/// (CGNAT), unspecified, broadcast, multicast, documentation, benchmarking or reserved; an
/// IPv4-mapped or NAT64 IPv6 address is judged by its IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [_, _, _, _, _, _, hi, lo] = segments;
                let v4 = std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)
                || segments[..5] == [0, 0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> WebhookUrl {
        WebhookUrl::parse(raw).unwrap()
    }

    #[test]
    fn hosts_wildcards_and_schemes() {
        let list =
            Allowlist::parse("hooks.example.com, *.example.org,http://127.0.0.1:9000").unwrap();
        assert!(list.check_url(&url("https://hooks.example.com/a")).is_ok());
        assert!(list
            .check_url(&url("https://HOOKS.example.com:8443/a"))
            .is_ok());
        assert_eq!(
            list.check_url(&url("http://hooks.example.com/a")),
            Err(Refused::PlainHttp("http://hooks.example.com/a".to_owned()))
        );
        assert!(list.check_url(&url("https://a.example.org/")).is_ok());
        assert!(list.check_url(&url("https://a.b.example.org/")).is_ok());
        assert!(matches!(
            list.check_url(&url("https://example.org/")),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            list.check_url(&url("https://evilexample.org/")),
            Err(Refused::Host(_))
        ));
        assert!(list.check_url(&url("http://127.0.0.1:9000/hook")).is_ok());
        assert!(matches!(
            list.check_url(&url("http://127.0.0.1:9001/hook")),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            Allowlist::default().check_url(&url("https://hooks.example.com/")),
            Err(Refused::Host(_))
        ));
    }

    #[test]
    fn private_addresses_need_an_entry() {
        let list = Allowlist::parse("hooks.example.com,10.1.0.0/16,http://127.0.0.1").unwrap();
        for ip in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(list.check_ip(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        for ip in [
            "127.0.0.2",
            "10.2.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "255.255.255.255",
        ] {
            assert!(
                matches!(list.check_ip(ip.parse().unwrap()), Err(Refused::Address(_))),
                "{ip} must be refused"
            );
        }
        assert!(list.check_ip("10.1.200.3".parse().unwrap()).is_ok());
        assert!(list.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        // A literal address in the URL is checked with the host.
        let list = Allowlist::parse("http://localhost:9000").unwrap();
        assert!(list.check_url(&url("http://localhost:9000/")).is_ok());
        assert!(list.check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["ftp://x", "10.0.0.0/33", "a/b", "http://x/y", "user@host"] {
            assert!(Allowlist::parse(bad).is_err(), "{bad}");
        }
    }
}
