//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.

use crate::error::CniError;

/// The `CNI_ARGS` keys this project understands, and the others kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_uid: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    pub ignore_unknown: bool,
    /// Keys not listed above, in the order given (only when `IgnoreUnknown` is set).
    pub other: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`. An unknown key is an error unless `IgnoreUnknown` is `1` or `true`
    /// (anywhere in the list), as in the reference plugins.
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: invalid pair {pair:?}, want KEY=VALUE"
                )));
            };
            if key.is_empty() {
                return Err(CniError::invalid_env(format!("CNI_ARGS: empty key in {pair:?}")));
            }
            let value = value.to_string();
            match key {
                "K8S_POD_NAME" => args.k8s_pod_name = Some(value),
                "K8S_POD_NAMESPACE" => args.k8s_pod_namespace = Some(value),
                "K8S_POD_UID" => args.k8s_pod_uid = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.k8s_pod_infra_container_id = Some(value),
                "IgnoreUnknown" => {
                    args.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(CniError::invalid_env(format!(
                                "CNI_ARGS: IgnoreUnknown={value:?} is not a boolean"
                            )));
                        }
                    }
                }
                _ => unknown.push((key.to_string(), value)),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            let keys: Vec<&str> = unknown.iter().map(|(k, _)| k.as_str()).collect();
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS: unknown keys {keys:?} (set IgnoreUnknown=1 to allow them)"
            )));
        }
        args.other = unknown;
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn parses_what_containerd_passes() {
        let args = CniArgs::parse(
            "K8S_POD_UID=1234;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;FOO=bar",
        )
        .unwrap();
        assert_eq!(args.k8s_pod_name.as_deref(), Some("web-0"));
        assert_eq!(args.k8s_pod_namespace.as_deref(), Some("default"));
        assert_eq!(args.k8s_pod_uid.as_deref(), Some("1234"));
        assert_eq!(args.k8s_pod_infra_container_id.as_deref(), Some("abc"));
        assert!(args.ignore_unknown);
        assert_eq!(args.other, vec![("FOO".to_string(), "bar".to_string())]);
    }

    #[test]
    fn empty_and_trailing_separators_are_fine() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a;").unwrap().k8s_pod_name.as_deref(),
            Some("a")
        );
        // A value may itself contain '='.
        let args = CniArgs::parse("IgnoreUnknown=true;X=a=b").unwrap();
        assert_eq!(args.other[0].1, "a=b");
    }

    #[test]
    fn rejects_unknown_keys_and_malformed_pairs() {
        for bad in [
            "FOO=bar",
            "K8S_POD_NAME",
            "=x",
            "IgnoreUnknown=maybe",
            "IgnoreUnknown=0;X=1",
        ] {
            let err = CniArgs::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironmentVariables as u32, "{bad}");
        }
    }
}
