//! `/proc/sys`: kernel parameters. The `net/` ones belong to the network namespace of the thread
//! that opens the file, so a caller sets a pod's from a thread inside the pod's namespace.

use std::io;

/// Writes `value` to `/proc/sys/<key>` (`net/ipv4/conf/all/rp_filter`). A key that climbs out of
/// `/proc/sys` is refused: keys carry interface names from netconfs.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    if key.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sysctl {key:?} is not a key"),
        ));
    }
    std::fs::write(format!("/proc/sys/{key}"), value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_stay_under_proc_sys() {
        for bad in ["net/ipv4/conf/../../../etc/x", "/net/x", "net//x", ""] {
            let e = super::set(bad, "1").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
