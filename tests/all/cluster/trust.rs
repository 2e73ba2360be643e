//! Hosts trust only each other: what a NATS client without the cluster's
//! key publishes on the cluster's subjects (a call as any tenant, a plugin
//! record, a deletion), or records and sends again, makes no host do
//! anything.

use std::time::Duration;

use futures::StreamExt;
use opbox::plugins::Authority;
use serde_json::json;

use super::{Nats, call, eventually, examples, metric, serving};

/// Calls of `echo/echo` the host at `url` ran.
async fn echoes(url: &str) -> u64 {
    metric(url, "opbox_calls_total", Some("operation=\"echo/echo\"")).await
}

/// A forwarded call as a host would send it, by anyone, as anyone.
fn forged(operation: &str, tenant: &str, scopes: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ask": "call",
        "request_id": "forged",
        "operation": operation,
        "input": {"x": 1},
        "identity": {"id": "mallory", "tenant": tenant, "scopes": scopes},
        "depth": 0,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_nats_client_without_the_key_makes_no_host_run_anything() {
    let nats = Nats::start();
    let (holder, _dir) = examples(&nats);
    // A host holding no `echo`: it forwards its callers' calls of it.
    let (entry, _entry_dir) = super::holder(&nats);
    let entry = &entry;
    let forward = |n: u64| async move {
        let (status, output, _) = call(entry, None, "echo/echo", json!({ "n": n })).await;
        assert_eq!((status.as_u16(), output), (200, json!({ "n": n })));
    };
    forward(0).await;
    let before = echoes(&holder.url).await;

    let mallory = async_nats::connect(nats.url()).await.unwrap();
    let inbox = mallory.new_inbox();
    let mut replies = mallory.subscribe(format!("{inbox}.*")).await.unwrap();
    // Anyone on the subjects (which NATS lets this client see) can record
    // a host's sealed call.
    let mut sniffed = mallory.subscribe("opbox.test.call.>").await.unwrap();
    // The server has the subscriptions once a message sent after them comes
    // back (`flush` only writes them).
    mallory
        .publish("opbox.test.call.probe", "".into())
        .await
        .unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(10), sniffed.next()).await;
    assert_eq!(
        probe.unwrap().unwrap().subject.as_str(),
        "opbox.test.call.probe"
    );
    for (n, (operation, tenant, scopes)) in [
        ("echo/echo", "default", &[][..]),
        ("admin/list", "default", &["admin"][..]),
        ("echo/echo", "globex", &["admin"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let subject = format!("opbox.test.call.{tenant}.{}", operation.replace('/', "%2F"));
        mallory
            .publish_with_reply(
                subject,
                format!("{inbox}.{n}"),
                forged(operation, tenant, scopes).into(),
            )
            .await
            .unwrap();
    }
    mallory.flush().await.unwrap();
    // A host's own call after them, on the same subject: the holder reads
    // its messages in order, so once this one is answered, the forged ones
    // were read before it.
    forward(1).await;
    let recorded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = sniffed.next().await.unwrap();
            if message.headers.is_some() {
                return message;
            }
        }
    })
    .await
    .expect("the host's sealed call went by");
    assert!(holder.logs_within("ignored a forwarded call", Duration::from_secs(10)));
    // The recorded call, sent again as it was: refused too.
    mallory
        .publish_with_reply_and_headers(
            recorded.subject.clone(),
            recorded.reply.clone().unwrap(),
            recorded.headers.clone().unwrap(),
            recorded.payload.clone(),
        )
        .await
        .unwrap();
    mallory.flush().await.unwrap();
    forward(2).await;
    assert_eq!(
        echoes(&holder.url).await,
        before + 2,
        "the holder ran a call no host sealed, or one sealed once and sent twice"
    );
    // Nothing answered the forger, not even a refusal.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), replies.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_host_with_another_key_is_no_host_of_the_cluster() {
    let nats = Nats::start();
    let (holder, _dir) = examples(&nats);
    let outsider = super::entry(&nats, |config| {
        if let Some(cluster) = &mut config.cluster {
            cluster.name = "test".into();
            cluster.key = Some("not-the-key-the-cluster-hosts-share-at-all".into());
        }
    })
    .await;
    let error = outsider
        .host
        .dispatcher()
        .call(opbox::CallRequest::new("echo/echo", json!({})))
        .await
        .unwrap_err();
    assert_eq!(error.code.as_str(), "UNAVAILABLE", "{error:?}");
    assert_eq!(echoes(&holder.url).await, 0);
    assert!(holder.logs_within("not sealed with the cluster's key", Duration::from_secs(5)));
}

#[tokio::test]
async fn plugin_records_nobody_sealed_change_nothing() {
    let nats = Nats::start();
    let a = super::entry(&nats, |_| {}).await;
    let b = super::entry(&nats, |_| {}).await;
    let read = |name: &str| std::fs::read(opbox::bundled::built_plugin(name)).unwrap();
    let installed = a
        .host
        .plugins()
        .install(
            Authority::Operator,
            None,
            None,
            &read("fixture-v1"),
            json!({}),
        )
        .await
        .unwrap();
    let (name, digest) = (installed.name().to_owned(), installed.digest().to_owned());
    let within = Duration::from_secs(10);
    assert!(
        eventually(within, || async {
            serving(&b, &name).as_deref() == Some(digest.as_str())
        })
        .await
    );

    // Mallory deletes the record, and writes one of her own naming the
    // same component under another name.
    let mallory = async_nats::connect(nats.url()).await.unwrap();
    let records = async_nats::jetstream::new(mallory)
        .get_key_value("opbox-opbox-plugins")
        .await
        .unwrap();
    records.delete(format!("shared.{name}")).await.unwrap();
    let record = json!({
        "origin": "mallory",
        "installed": {
            "tenant": null, "name": "forged", "digest": digest, "bytes": 1,
            "held": false, "settings": {}, "installed_at_ms": 0,
        },
    });
    // As a host writes a record: a seal (not made with the key), then the
    // record.
    let value = format!("{}\n{record}", "0".repeat(64));
    records
        .put("shared.forged", value.into_bytes().into())
        .await
        .unwrap();
    // A host's own change after them: once B has it, B has read hers.
    a.host
        .plugins()
        .install(Authority::Operator, None, None, &read("echo"), json!({}))
        .await
        .unwrap();
    assert!(eventually(within, || async { serving(&b, "echo").is_some() }).await);
    assert_eq!(serving(&b, &name).as_deref(), Some(digest.as_str()));
    assert_eq!(serving(&b, "forged"), None);
}

#[tokio::test]
async fn opbox_serve_takes_the_key_from_a_file_and_without_one_does_not_start() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let config = |examples: bool| {
        format!(
            "listen = \"127.0.0.1:0\"\nexamples = {examples}\ndata_dir = {:?}\n\
             [[tenants]]\nid = \"default\"\nanonymous = true\n\
             [cluster]\nnats_url = {:?}\nname = \"keyed\"\n",
            crate::util::data_dir(),
            nats.url()
        )
    };
    // No key: the host says what it needs and stops.
    std::fs::write(dir.path().join("opbox.toml"), config(true)).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["serve", "--config"])
        .arg(dir.path().join("opbox.toml"))
        .env_remove("OPBOX_CLUSTER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("a cluster needs the key its hosts share"),
        "{said}"
    );
    // The README's way: a key file named in the environment, for every host.
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789\n").unwrap();
    let key = key.to_str().unwrap();
    let (holder_dir, entry_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [("OPBOX_CLUSTER_KEY_FILE", key)];
    let _holder = crate::util::Server::start_with(holder_dir.path(), &config(true), &env);
    let entry = crate::util::Server::start_with(entry_dir.path(), &config(false), &env);
    let (status, output, _) = call(&entry, None, "echo/echo", json!({"x": 1})).await;
    assert_eq!((status.as_u16(), output), (200, json!({"x": 1})));
}
