//! The network configuration a plugin reads on stdin: the keys every plugin shares, with the
//! plugin-specific rest kept as JSON for the plugin to decode.

use serde::Deserialize;
use serde_json::Value;

use crate::error::CniError;
use crate::result::CniResult;
use crate::version::CniVersion;

/// One entry of `cni.dev/valid-attachments` (GC, spec 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    /// The previous plugin's result, converted from whatever version it was written in.
    pub prev_result: Option<CniResult>,
    pub runtime_config: Option<Value>,
    pub args: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole document, for plugin-specific keys (`ipam`, ...).
    pub raw: Value,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    plugin_type: Option<String>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<Value>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Only the `cniVersion`, for error messages about documents that fail to parse further.
    pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
        let value: Value = serde_json::from_slice(stdin).ok()?;
        value.get("cniVersion")?.as_str()?.parse().ok()
    }

    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::decoding(format!("failed to parse network configuration: {e}")))?;
        if !raw.is_object() {
            return Err(CniError::decoding("network configuration is not a JSON object"));
        }
        let wire: Wire = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("failed to parse network configuration: {e}")))?;
        let cni_version: CniVersion = match wire.cni_version.as_deref() {
            None | Some("") => {
                return Err(CniError::invalid_config(
                    "network configuration has no cniVersion",
                ));
            }
            Some(v) => v.parse()?,
        };
        let name = wire.name.unwrap_or_default();
        validate_network_name(&name)?;
        let prev_result = match wire.prev_result {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_json(&v, cni_version)?),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type: wire.plugin_type.unwrap_or_default(),
            prev_result,
            runtime_config: wire.runtime_config,
            args: wire.args,
            valid_attachments: wire.valid_attachments,
            raw,
        })
    }
}

/// Network names follow the container-ID grammar: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config("network configuration has no name"));
    }
    if !is_identifier(name) {
        return Err(CniError::invalid_config(format!(
            "invalid characters in network name {name:?}"
        )));
    }
    Ok(())
}

/// The grammar the spec gives for container IDs and network names.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shared_keys_and_converts_prev_result() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"net1","type":"macvlan","ipam":{"type":"spiderpool"},
                "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.name, "net1");
        assert_eq!(conf.plugin_type, "macvlan");
        assert_eq!(
            conf.prev_result.unwrap().ips[0].address.to_string(),
            "10.0.0.2/24"
        );
        assert_eq!(conf.raw["ipam"]["type"], "spiderpool");
    }

    #[test]
    fn valid_attachments_are_read() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn error_codes_for_bad_documents() {
        let cases: [(&[u8], u32); 8] = [
            (b"{not json", 6),
            (b"[1,2]", 6),
            (br#"{"name":"n"}"#, 7),
            (br#"{"cniVersion":"0.2.0","name":"n"}"#, 1),
            (br#"{"cniVersion":"1.0.0"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"bad name"}"#, 7),
            (
                br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"x"}]}}"#,
                6,
            ),
            (br#"{"cniVersion":"1.0.0","name":7}"#, 6),
        ];
        for (doc, code) in cases {
            let err = NetConf::parse(doc).unwrap_err();
            assert_eq!(err.code, code, "{}: {err}", String::from_utf8_lossy(doc));
        }
    }
}
