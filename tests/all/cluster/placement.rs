//! Placement: a plugin whose settings name labels is held only by the
//! hosts whose `[cluster] labels` match them; the others forward its calls.

use std::collections::BTreeMap;
use std::time::Duration;

use opbox::CallRequest;
use opbox::plugins::{Authority, PluginError};
use serde_json::json;

use super::{Nats, entry, eventually, serving};
use crate::util::TestHost;

/// A host in the cluster on `nats` labelled `zone = <zone>`.
async fn in_zone(nats: &Nats, zone: &str) -> TestHost {
    entry(nats, |config| {
        let cluster = config.cluster.as_mut().unwrap();
        cluster.labels = BTreeMap::from([("zone".to_owned(), zone.to_owned())]);
    })
    .await
}

#[tokio::test]
async fn a_placed_plugin_is_held_only_where_the_labels_match() {
    let nats = Nats::start();
    let eu = in_zone(&nats, "eu").await;
    let us = in_zone(&nats, "us").await;
    let eu_too = in_zone(&nats, "eu").await;
    let v1 = std::fs::read(opbox::bundled::built_plugin("fixture-v1")).unwrap();
    let placed = json!({ "placement": { "zone": "eu" } });

    // Installed through a host the placement leaves out: refused there,
    // held nowhere.
    let refused = us
        .host
        .plugins()
        .install(Authority::Operator, None, None, &v1, placed.clone())
        .await
        .unwrap_err();
    assert!(matches!(refused, PluginError::NotPlaced(_)), "{refused}");
    assert!(us.host.plugins().all().iter().all(|l| l.fixed));

    // Through a host it places: that host and the other `eu` one hold it,
    // the `us` host does not, and its calls there go to an `eu` host.
    let installed = eu
        .host
        .plugins()
        .install(Authority::Operator, None, None, &v1, placed)
        .await
        .unwrap();
    let name = installed.name().to_owned();
    let within = Duration::from_secs(10);
    assert!(
        eventually(within, || async { serving(&eu_too, &name).is_some() }).await,
        "the other eu host does not hold it"
    );
    let request = CallRequest::new(format!("{name}/which"), json!(null));
    let registry = us.host.dispatcher().registry();
    assert!(registry.get("default", &request.operation).is_none());
    let answer = us.host.dispatcher().call(request.clone()).await.unwrap();
    assert_eq!(answer, json!({"version": 1}));

    // A replace moves it (made through a host that holds it, which the
    // new placement must name too): placed everywhere, the us host takes
    // it; placed in eu again, the us host lets it go.
    let everywhere = json!({ "placement": {} });
    eu.host
        .plugins()
        .replace(Authority::Operator, None, &name, &v1, everywhere, true)
        .await
        .unwrap();
    assert!(
        eventually(within, || async { serving(&us, &name).is_some() }).await,
        "a plugin placed everywhere does not reach the us host"
    );
    let back_to_eu = json!({ "placement": { "zone": "eu" } });
    eu.host
        .plugins()
        .replace(Authority::Operator, None, &name, &v1, back_to_eu, true)
        .await
        .unwrap();
    assert!(
        eventually(within, || async { serving(&us, &name).is_none() }).await,
        "the us host still holds a plugin placed in eu only"
    );
    assert!(serving(&eu_too, &name).is_some());
    assert_eq!(
        us.host.dispatcher().call(request).await.unwrap(),
        json!({"version": 1})
    );

    // A change asked of the us host, which does not hold it, is told to
    // go where it is placed (CONFLICT), not that nothing is there.
    let replaced = us
        .host
        .plugins()
        .replace(Authority::Operator, None, &name, &v1, json!({}), true)
        .await
        .unwrap_err();
    assert!(matches!(replaced, PluginError::NotPlaced(_)), "{replaced}");
    assert!(
        replaced.to_string().contains(r#"{"zone":"eu"}"#),
        "{replaced}"
    );
    let removed = us.host.plugins().remove(None, &name).await.unwrap_err();
    assert!(matches!(removed, PluginError::NotPlaced(_)), "{removed}");
    // Removed through a host that holds it, it is gone everywhere: then
    // nothing is there.
    eu.host.plugins().remove(None, &name).await.unwrap();
    assert!(
        eventually(within, || async {
            matches!(
                us.host.plugins().remove(None, &name).await,
                Err(PluginError::NotFound(_))
            )
        })
        .await,
        "the us host still thinks the plugin is held elsewhere"
    );
}
