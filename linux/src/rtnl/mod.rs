//! rtnetlink (`NETLINK_ROUTE`) over [`NetlinkSocket`]: links (create bonds, VLANs and veths,
//! enslave, set MTU, alias, up/down and the VF settings a PF holds) in [`link`], routes, rules,
//! addresses and neighbours in [`route`]. One [`Rtnl`] serves every request in its namespace.
//! Create requests say what an existing object means ([`IfExists`]); deletes say whether
//! something was there, so no caller matches errno values.

mod link;
mod route;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::BondMode;
use netlink_sys::protocols::NETLINK_ROUTE;

pub use crate::netlink::{IfExists, NetlinkError};
pub use link::Link;
pub use route::{Address, Route, RouteEntry, Rule, RuleEntry};

/// `RT_TABLE_MAIN`.
pub const MAIN_TABLE: u32 = 254;

/// 169.254.0.0/16 or fe80::/10.
pub fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Bond modes by name or number, as `ip link` and the bonding driver accept them.
pub fn bond_mode(mode: &str) -> Result<BondMode, NetlinkError> {
    Ok(match mode {
        "balance-rr" | "0" => BondMode::BalanceRr,
        "active-backup" | "1" => BondMode::ActiveBackup,
        "balance-xor" | "2" => BondMode::BalanceXor,
        "broadcast" | "3" => BondMode::Broadcast,
        "802.3ad" | "4" => BondMode::Ieee8023Ad,
        "balance-tlb" | "5" => BondMode::BalanceTlb,
        "balance-alb" | "6" => BondMode::BalanceAlb,
        other => {
            return Err(NetlinkError::Invalid {
                what: "create bond".into(),
                reason: format!("unknown bond mode {other:?}"),
            });
        }
    })
}

/// A route netlink socket in the network namespace of the thread that opened it.
pub struct Rtnl {
    socket: crate::netlink::NetlinkSocket,
}

impl Rtnl {
    pub fn new() -> Result<Rtnl, NetlinkError> {
        Ok(Rtnl {
            socket: crate::netlink::NetlinkSocket::open(NETLINK_ROUTE)?,
        })
    }

    /// A create request (`RTM_NEW*`) with what an existing object means.
    fn create(
        &mut self,
        what: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        if_exists: IfExists,
    ) -> Result<(), NetlinkError> {
        let flags = match if_exists {
            IfExists::Fail | IfExists::Keep => NLM_F_CREATE | NLM_F_EXCL,
            IfExists::Replace => NLM_F_CREATE | NLM_F_REPLACE,
        };
        match self.socket.request("", message, flags) {
            Err(NetlinkError::Kernel { errno, .. })
                if errno == libc::EEXIST && if_exists == IfExists::Keep =>
            {
                Ok(())
            }
            other => other.map_err(|e| e.about(what())),
        }
    }

    /// A change or delete request; `absent` is the errno that says the object is not there,
    /// answered with `Ok(false)`.
    fn change(
        &mut self,
        what: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        absent: Option<i32>,
    ) -> Result<bool, NetlinkError> {
        match self.socket.request("", message, 0) {
            Ok(()) => Ok(true),
            Err(NetlinkError::Kernel { errno, .. }) if Some(errno) == absent => Ok(false),
            Err(e) => Err(e.about(what())),
        }
    }

    fn dump(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.socket.dump(what, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_by_name_and_missing_ones_are_none() {
        // Unprivileged in any network namespace: `lo` always exists.
        let mut rtnl = Rtnl::new().unwrap();
        let lo = rtnl.link("lo").unwrap().unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.facts.index > 0);
        assert_eq!(rtnl.link_index("lo").unwrap(), Some(lo.facts.index));
        assert_eq!(rtnl.link("nosuchlink0").unwrap(), None);
        // A refused request names itself and keeps the errno, positive as libc spells it.
        let e = rtnl.set_mtu(999_999, 1500).unwrap_err();
        // ENODEV as root, EPERM as anyone else.
        assert!(matches!(e.errno(), Some(libc::ENODEV | libc::EPERM)), "{e}");
        assert!(e.to_string().contains("set mtu of link 999999"), "{e}");
        match rtnl.delete_link(999_999) {
            Ok(deleted) => assert!(!deleted, "gone already is not an error"),
            Err(e) => assert_eq!(e.errno(), Some(libc::EPERM), "{e}"),
        }
        let e = rtnl.create_bond("b0", "9", IfExists::Keep).unwrap_err();
        assert!(e.to_string().contains("create bond b0: unknown bond mode"), "{e}");
    }

    #[test]
    fn dumps_decode_into_typed_views() {
        let mut rtnl = Rtnl::new().unwrap();
        // The local table always routes the loopback address.
        let routes = rtnl.routes(false).unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.route.destination.addr() == std::net::Ipv4Addr::LOCALHOST),
            "{routes:?}"
        );
        let rules = rtnl.rules(false).unwrap();
        assert!(rules.iter().any(|r| r.rule.table == MAIN_TABLE), "{rules:?}");
    }

    #[test]
    fn routes_and_rules_print_like_ip() {
        let gw = "10.6.0.1".parse().unwrap();
        let route = Route::default_via(gw, 3, 103).with_source("10.6.0.10".parse().unwrap());
        assert!(route.is_default());
        assert_eq!(
            route.to_string(),
            "0.0.0.0/0 via 10.6.0.1 dev 3 table 103 src 10.6.0.10"
        );
        let rule = Rule::to_destination("fd00::1".parse().unwrap(), 500, 1000);
        assert_eq!(rule.to_string(), "to fd00::1 lookup 500 pref 1000");
        assert_eq!(RuleEntry::from(rule.clone()).rule, rule);
    }
}
