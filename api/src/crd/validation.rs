//! CEL rules (`x-kubernetes-validations`) shared by the IPAM kinds, built as strings so each
//! rule reads as one sentence in the CRD. They rely on the Kubernetes CEL IP/CIDR library
//! (`isIP`, `isCIDR`, `cidr().containsIP()`, `ip().family()`), served since Kubernetes 1.31.
//!
//! CEL has no ordering on IP values. Range order and overlap are therefore checked numerically
//! for IPv4 (an address as an int); for IPv6 the schema checks each endpoint and rejects repeated
//! entries, and the ValidatingAdmissionPolicy of [`super::admission`] checks order and overlap.
//! The agent and the controller refuse an overlapping pool too (`spiderpool_ipam::pool`).

/// `s` is a CEL expression yielding a dotted IPv4 string; the result is its value as an int.
pub(crate) fn v4_int(s: &str) -> String {
    format!(
        "(int({s}.split('.')[0]) * 16777216 + int({s}.split('.')[1]) * 65536 + \
         int({s}.split('.')[2]) * 256 + int({s}.split('.')[3]))"
    )
}

fn range_first(r: &str) -> String {
    format!("{r}.split('-')[0]")
}

fn range_last(r: &str) -> String {
    format!("{r}.split('-')[{r}.split('-').size() - 1]")
}

/// Every entry of `field` (a list of `a-b` ranges or single IPs) is well formed and inside
/// `self.subnet`.
pub fn entries_in_subnet(field: &str) -> String {
    format!(
        "!has(self.{field}) || !isCIDR(self.subnet) || self.{field}.all(r, r.split('-').size() <= 2 && \
         r.split('-').all(p, isIP(p) && cidr(self.subnet).containsIP(p)))"
    )
}

/// IPv4 ranges are written low to high.
pub fn v4_ranges_ordered(field: &str) -> String {
    let lo = v4_int(&range_first("r"));
    let hi = v4_int(&range_last("r"));
    format!(
        "!has(self.{field}) || !isCIDR(self.subnet) || cidr(self.subnet).ip().family() != 4 || \
         self.{field}.all(r, !r.split('-').all(p, isIP(p)) || {lo} <= {hi})"
    )
}

/// No two IPv4 entries of `field` share an address (entries are a set, so `a == b` is the
/// entry itself).
pub fn v4_no_overlap(field: &str) -> String {
    let (alo, ahi) = (v4_int(&range_first("a")), v4_int(&range_last("a")));
    let (blo, bhi) = (v4_int(&range_first("b")), v4_int(&range_last("b")));
    format!(
        "!has(self.{field}) || !isCIDR(self.subnet) || cidr(self.subnet).ip().family() != 4 || \
         !self.{field}.all(r, r.split('-').all(p, isIP(p) && ip(p).family() == 4)) || \
         self.{field}.all(a, self.{field}.all(b, a == b || {alo} > {bhi} || {blo} > {ahi}))"
    )
}

/// `s` is a CEL expression yielding an IPv6 address in text; the result is its 32 hex digits,
/// lowercase, so two addresses compare as strings the way they compare as numbers: `::` expanded
/// by the groups it stands for, each group padded to four digits.
pub fn v6_hex(s: &str) -> String {
    let halves = format!("{s}.lowerAscii().split('::')");
    let left = format!("({halves}[0] == '' ? [] : {halves}[0].split(':'))");
    let right = format!("({halves}.size() < 2 || {halves}[1] == '' ? [] : {halves}[1].split(':'))");
    let zeros = "{0: [], 1: ['0'], 2: ['0', '0'], 3: ['0', '0', '0'], 4: ['0', '0', '0', '0'], \
                 5: ['0', '0', '0', '0', '0'], 6: ['0', '0', '0', '0', '0', '0'], \
                 7: ['0', '0', '0', '0', '0', '0', '0'], 8: ['0', '0', '0', '0', '0', '0', '0', '0']}";
    let pad = "(g.size() == 4 ? g : (g.size() == 3 ? '0' + g : (g.size() == 2 ? '00' + g : \
               (g.size() == 1 ? '000' + g : '0000'))))";
    format!(
        "({halves}.size() < 2 ? {s}.lowerAscii().split(':') : \
          {left} + {zeros}[8 - {left}.size() - {right}.size()] + {right}).map(g, {pad}).join('')"
    )
}

/// First and last address of the range entry `r` (a CEL expression), as CEL expressions.
pub fn range_bounds(r: &str) -> (String, String) {
    (range_first(r), range_last(r))
}

pub const SUBNET_IS_CIDR: &str = "isCIDR(self.subnet)";

pub const IP_VERSION_MATCHES_SUBNET: &str = "!has(self.ipVersion) || !isCIDR(self.subnet) || \
     cidr(self.subnet).ip().family() == self.ipVersion";

pub const GATEWAY_IN_SUBNET: &str = "!has(self.gateway) || (isIP(self.gateway) && \
     isCIDR(self.subnet) && cidr(self.subnet).containsIP(self.gateway))";

pub const ROUTES_WELL_FORMED: &str = "!has(self.routes) || self.routes.all(r, isCIDR(r.dst) && \
     isIP(r.gw) && isCIDR(self.subnet) && cidr(self.subnet).containsIP(r.gw))";

/// The same family for every entry of a SpiderReservedIP (no subnet to compare with).
pub const RESERVED_FAMILY: &str = "!has(self.ips) || self.ips.all(r, r.split('-').size() <= 2 && \
     r.split('-').all(p, isIP(p) && (!has(self.ipVersion) || ip(p).family() == self.ipVersion)))";
