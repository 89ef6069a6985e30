//! The controller applies the CRDs it was built with at start, by server-side apply under its own
//! field manager: a new controller version brings its schema along on `helm upgrade`, which
//! Helm itself never does for a chart's `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

pub const FIELD_MANAGER: &str = "spiderpool-controller";

/// Applies `crds`; answers how many.
pub async fn apply(client: &Client, crds: &[CustomResourceDefinition]) -> Result<usize, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Force: the chart's first install (Helm) or an older controller may own the fields.
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd)).await?;
    }
    Ok(crds.len())
}

/// Applies every CRD of `spiderpool-api`.
pub async fn apply_all(client: &Client) -> Result<usize, kube::Error> {
    apply(client, &spiderpool_api::crd::all()).await
}
