//! CNI error codes and the error JSON a plugin prints on stdout.

use serde::{Deserialize, Serialize};

use crate::version::CniVersion;

/// Error codes from the CNI spec; 100 and up are this project's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleCniVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironmentVariables = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidNetworkConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD requests (spec 1.1).
    PluginNotAvailable = 50,
    /// STATUS: not available, and existing attachments may have limited connectivity (spec 1.1).
    LimitedConnectivity = 51,
    /// ADD: every pool the request may use has no free address.
    PoolExhausted = 100,
    /// CHECK: the recorded allocation differs from what prevResult says.
    AllocationMismatch = 101,
    /// ADD: the device the attachment needs is missing, held by another pod, or cannot be given
    /// to the pod on this node (the message says which).
    DeviceUnavailable = 102,
    /// A bug: a panic caught at the top of the plugin.
    Internal = 999,
}

/// A CNI error: printed as the spec's error JSON, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidNetworkConfig, msg)
    }

    pub fn decoding(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::DecodingFailure, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidEnvironmentVariables, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::IoFailure, msg)
    }

    /// The error JSON of the spec, in the given version (the netconf's, or the latest).
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version: version.as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serialising plain strings and integers cannot fail; keep a hand-written fallback anyway.
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let err = CniError::invalid_config("bad pool").with_details("pool v4a");
        let v: serde_json::Value = serde_json::from_str(&err.to_json(CniVersion::V1_0_0)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad pool");
        assert_eq!(v["details"], "pool v4a");
        let plain = CniError::new(ErrorCode::TryAgainLater, "busy").to_json(CniVersion::V1_1_0);
        assert!(!plain.contains("details"), "{plain}");
        assert_eq!(err.to_string(), "bad pool: pool v4a");
    }
}
