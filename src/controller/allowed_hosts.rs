//! Which hosts a connection's `identityUrl` and `apiUrl` may name (`--allowed-carerix-hosts`).
//!
//! The client secret goes to `identityUrl`, so a namespace user who could point it anywhere could
//! send it to a server of their choice. Entries are host patterns: `id.carerix.io` (exactly that
//! host) or `*.carerix.io` (any subdomain), optionally with a port (`:8443`, `:*`). URLs must be
//! https; plain http is allowed only for an entry that says so with its scheme
//! (`http://127.0.0.1:*`), which is how the tests and the demo allow the local emulator.

use std::{fmt, str::FromStr};

/// The default of `--allowed-carerix-hosts`.
pub const DEFAULT_ALLOWED_HOSTS: &str = "*.carerix.io,*.carerix.net";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    http: bool,
    host: String,
    port: Option<u16>,
}

impl Entry {
    fn matches(&self, http: bool, host: &str, port: u16) -> bool {
        if http && !self.http {
            return false;
        }
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        }
    }
}

/// The allowed hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<Entry>,
    text: String,
}

impl Default for AllowedHosts {
    fn default() -> Self {
        DEFAULT_ALLOWED_HOSTS.parse().unwrap_or(AllowedHosts { entries: vec![], text: String::new() })
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An entry of `--allowed-carerix-hosts` that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid entry {entry:?} in --allowed-carerix-hosts: {why}")]
pub struct AllowedHostsError {
    entry: String,
    why: &'static str,
}

impl FromStr for AllowedHosts {
    type Err = AllowedHostsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why| AllowedHostsError { entry: raw.to_string(), why };
            let (http, rest) = match raw.split_once("://") {
                Some(("http", rest)) => (true, rest),
                Some(("https", rest)) => (false, rest),
                Some(_) => return Err(bad("the scheme must be http or https")),
                None => (false, raw),
            };
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, "*")) => (host, None),
                Some((host, port)) => {
                    (host, Some(port.parse::<u16>().map_err(|_| bad("the port is not a number"))?))
                }
                None => (rest, None),
            };
            let host = host.to_ascii_lowercase();
            let bare = host.strip_prefix("*.").unwrap_or(&host);
            if bare.is_empty() || bare.contains(['*', '/', '@']) {
                return Err(bad("expected a host like id.carerix.io or *.carerix.io"));
            }
            entries.push(Entry { http, host, port });
        }
        Ok(AllowedHosts { entries, text: s.to_string() })
    }
}

impl AllowedHosts {
    /// Whether `url` may be used; otherwise what is wrong with it, for an `InvalidSpec` message.
    ///
    /// # Errors
    /// When the URL is not https (or http for an entry that allows it), carries credentials, or
    /// names a host outside the list.
    pub fn check(&self, field: &str, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("spec.{field} {url:?} is not a URL ({e})"))?;
        let http = match parsed.scheme() {
            "https" => false,
            "http" => true,
            other => return Err(format!("spec.{field} must be an https URL, not {other}")),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("spec.{field} must not carry a user name or password"));
        }
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port_or_known_default().unwrap_or(0);
        if self.entries.iter().any(|e| e.matches(http, host, port)) {
            return Ok(());
        }
        if http && self.entries.iter().any(|e| e.matches(false, host, port)) {
            return Err(format!("spec.{field} must be an https URL ({url} is http)"));
        }
        Err(format!(
            "spec.{field} names the host {host}, which this operator may not send credentials to (allowed: {}); \
             use your tenant's Carerix host, or ask the operator's admin to add it to --allowed-carerix-hosts",
            self.text
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_carerix_hosts_over_https_only() {
        let a = AllowedHosts::default();
        assert!(a.check("identityUrl", "https://id-s4.carerix.io").is_ok());
        assert!(a.check("apiUrl", "https://api.carerix.net/").is_ok());
        assert!(a.check("identityUrl", "http://id.carerix.io").unwrap_err().contains("https"));
        assert!(a.check("identityUrl", "https://evil.example.com").unwrap_err().contains("evil.example.com"));
        assert!(a.check("identityUrl", "https://carerix.io.evil.com").is_err());
        assert!(a.check("identityUrl", "https://evilcarerix.io").is_err());
        assert!(a.check("identityUrl", "https://user:pw@id.carerix.io").is_err());
    }

    #[test]
    fn http_is_allowed_only_where_an_entry_says_http() {
        let a: AllowedHosts = "*.carerix.io,http://127.0.0.1:*".parse().unwrap();
        assert!(a.check("apiUrl", "http://127.0.0.1:41234").is_ok());
        assert!(a.check("apiUrl", "https://127.0.0.1:41234").is_ok());
        assert!(a.check("apiUrl", "http://localhost:41234").is_err());
        let https_only: AllowedHosts = "127.0.0.1:*".parse().unwrap();
        assert!(https_only.check("apiUrl", "http://127.0.0.1:41234").is_err());
    }

    #[test]
    fn a_port_in_an_entry_limits_the_port() {
        let a: AllowedHosts = "id.example.org:8443".parse().unwrap();
        assert!(a.check("identityUrl", "https://id.example.org:8443").is_ok());
        assert!(a.check("identityUrl", "https://id.example.org").is_err());
    }

    #[test]
    fn unreadable_entries_are_refused() {
        assert!("ftp://x.io".parse::<AllowedHosts>().is_err());
        assert!("x.io:port".parse::<AllowedHosts>().is_err());
        assert!("*".parse::<AllowedHosts>().is_err());
    }
}
