//! An allow-list of client networks: GitLab's `monitoring.ip_whitelist`,
//! which decides who may read the health probes without a token.
//!
//! Each entry is a network (`10.0.0.0/8`, `::1/128`) or a single address
//! (`192.0.2.7`). The default is the loopback networks, as GitLab's.
//!
//! ```
//! use geohost::allow_list::IpAllowList;
//!
//! let list: IpAllowList = "10.0.0.0/8, 192.0.2.7".parse().unwrap();
//! assert!(list.allows("10.1.2.3".parse().unwrap()));
//! assert!(!list.allows("192.0.2.8".parse().unwrap()));
//! assert!(IpAllowList::default().allows("127.0.0.1".parse().unwrap()));
//! ```

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;
use std::str::FromStr;

/// The networks allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllowList(Vec<IpNet>);

impl Default for IpAllowList {
    /// Loopback only: `127.0.0.0/8` and `::1/128`.
    fn default() -> Self {
        IpAllowList(vec![
            "127.0.0.0/8".parse().expect("valid network"),
            "::1/128".parse().expect("valid network"),
        ])
    }
}

impl IpAllowList {
    /// Reads one entry: a network or a single address.
    pub fn entry(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{text:?} is neither an IP address nor a network (CIDR)"))
    }

    /// Whether `address` is in one of the networks. An IPv4 client seen as
    /// an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, a dual-stack
    /// listener) is checked as IPv4.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The networks, as written back.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

impl FromStr for IpAllowList {
    type Err = String;

    /// A comma-separated list (an environment variable's form).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(IpAllowList::entry)
            .collect::<Result<Vec<_>, _>>()
            .map(IpAllowList)
    }
}

impl<'de> Deserialize<'de> for IpAllowList {
    /// A list of entries, or one comma-separated string.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::List(entries) => entries
                .iter()
                .map(|e| IpAllowList::entry(e))
                .collect::<Result<Vec<_>, _>>()
                .map(IpAllowList)
                .map_err(serde::de::Error::custom),
            Form::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for IpAllowList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|n| n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_addresses_and_mapped_ipv4() {
        let list: IpAllowList =
            serde_json::from_str(r#"["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]"#).unwrap();
        for (address, allowed) in [
            ("10.255.0.1", true),
            ("11.0.0.1", false),
            ("2001:db8::5", true),
            ("2001:db9::5", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::ffff:10.0.0.1", true),
        ] {
            assert_eq!(list.allows(address.parse().unwrap()), allowed, "{address}");
        }
        let default = IpAllowList::default();
        assert!(default.allows("127.0.0.1".parse().unwrap()));
        assert!(default.allows("::1".parse().unwrap()));
        assert!(default.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!default.allows("192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        let error = serde_json::from_str::<IpAllowList>(r#"["10.0.0.0/8", "localhost"]"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"localhost\""), "{error}");
        assert!("10.0.0.0/33".parse::<IpAllowList>().is_err());
        let from_env: IpAllowList = "10.0.0.0/8,::1".parse().unwrap();
        assert_eq!(from_env.networks().len(), 2);
        assert_eq!(
            serde_json::to_string(&from_env).unwrap(),
            r#"["10.0.0.0/8","::1/128"]"#
        );
    }
}
