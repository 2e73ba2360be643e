//! `wasi:keyvalue` in a cluster: every host's plugins share one JetStream
//! bucket, with the same quotas and tenant walls as a single host, and
//! what the guest was told is stored survives a host and a NATS server
//! killed outright.

use std::path::Path;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Nats, eventually, host};
use crate::util::Server;

/// The token of a caller of tenant `other`.
const OTHER: &str = "other-token";

/// An `opbox serve` in the cluster on `nats` holding the `kv` example,
/// granted at most `max_keys` keys per tenant; tenant `other` has a caller
/// of its own.
fn kv_host(nats: &Nats, dir: &Path, max_keys: u64) -> Server {
    let tables = format!(
        "[[tenants]]\nid = \"other\"\n[[tenants.tokens]]\nid = \"o\"\nsha256 = {hash:?}\n\
         [[plugins]]\npath = {path:?}\n[plugins.grants.keyvalue]\nmax_keys = {max_keys}\n",
        hash = opbox::tenants::hash_token_hex(OTHER),
        path = opbox::bundled::built_plugin("kv"),
    );
    host(nats, dir, "examples = false", &tables)
}

/// `kv/<op>` on `server` as tenant `default` (or `other` with its token);
/// the output, or why there is none: the error, or no answer at all.
async fn kv(server: &Server, token: Option<&str>, op: &str, input: Value) -> Result<Value, String> {
    let mut request = reqwest::Client::new()
        .post(format!("{}/call", server.url))
        .json(&json!({ "operation": format!("kv/{op}"), "input": input }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut answer: Value = response.json().await.map_err(|e| e.to_string())?;
    if status == StatusCode::OK {
        Ok(answer["output"].take())
    } else {
        Err(format!("{status}: {}", answer["error"]))
    }
}

#[tokio::test]
async fn hosts_share_each_tenants_keys_counters_and_quota() {
    let nats = Nats::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = kv_host(&nats, dir_a.path(), 3);
    let b = kv_host(&nats, dir_b.path(), 3);

    // Both hosts hold `kv` and run its calls themselves: what one wrote,
    // the other reads from the shared bucket.
    kv(
        &a,
        None,
        "set",
        json!({"key": "greeting", "value": {"hello": "world"}}),
    )
    .await
    .unwrap();
    let read = kv(&b, None, "get", json!({"key": "greeting"}))
        .await
        .unwrap();
    assert_eq!(read["value"], json!({"hello": "world"}));
    let keys = kv(&b, None, "keys", json!({})).await.unwrap();
    assert_eq!(keys["keys"], json!(["greeting"]));

    // Another tenant sees none of it, and keeps its own.
    let theirs = kv(&b, Some(OTHER), "get", json!({"key": "greeting"}))
        .await
        .unwrap();
    assert_eq!(theirs["value"], Value::Null);
    kv(
        &a,
        Some(OTHER),
        "set",
        json!({"key": "greeting", "value": "theirs"}),
    )
    .await
    .unwrap();
    let ours = kv(&a, None, "get", json!({"key": "greeting"}))
        .await
        .unwrap();
    assert_eq!(ours["value"], json!({"hello": "world"}));

    // Increments from both hosts at once: each lands once. (The counter
    // exists first: near the quota, hosts racing to make one key may be
    // refused although only one of them would take room; see the README.)
    kv(&a, None, "increment", json!({"key": "hits"}))
        .await
        .unwrap();
    let bumps = (1..40).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        kv(server, None, "increment", json!({"key": "hits"}))
    });
    let counts: Vec<u64> = futures::future::join_all(bumps)
        .await
        .into_iter()
        .map(|c| c.unwrap()["count"].as_u64().unwrap())
        .collect();
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (2..=40).collect::<Vec<u64>>(),
        "each increment saw its own count"
    );
    let hits = kv(&a, None, "get", json!({"key": "hits"})).await.unwrap();
    assert_eq!(hits["value"], json!(40));

    // The quota is the tenant's, across hosts: `greeting`, `hits` and one
    // more key fill it, whichever host writes them.
    kv(&b, None, "set", json!({"key": "third", "value": 3}))
        .await
        .unwrap();
    let refused = kv(&a, None, "set", json!({"key": "fourth", "value": 4}))
        .await
        .unwrap_err();
    assert!(refused.contains("max_keys"), "{refused}");
    // Replacing a key takes no new one; removing one makes room on the
    // other host.
    kv(&a, None, "set", json!({"key": "third", "value": "three"}))
        .await
        .unwrap();
    kv(&b, None, "delete", json!({"key": "third"}))
        .await
        .unwrap();
    kv(&a, None, "set", json!({"key": "fourth", "value": 4}))
        .await
        .unwrap();
    let keys = kv(&b, None, "keys", json!({})).await.unwrap();
    assert_eq!(keys["keys"], json!(["fourth", "greeting", "hits"]));

    // A key the local store would take but whose escaped form is longer
    // than a subject the hosts send: refused, and the host stays in the
    // cluster.
    let long = "ü".repeat(400);
    let refused = kv(&a, None, "get", json!({"key": long})).await.unwrap_err();
    assert!(refused.contains("as the cluster stores it"), "{refused}");
    let read = kv(&a, None, "get", json!({"key": "fourth"})).await.unwrap();
    assert_eq!(read["value"], json!(4));
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_a_host_and_then_nats_are_killed() {
    let nats = Nats::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = kv_host(&nats, dir_a.path(), 100_000);
    let b = kv_host(&nats, dir_b.path(), 100_000);

    // Writes stream into host A, eight at a time; A is killed while they
    // run. Only the writes A answered count as acknowledged.
    let writes = futures::stream::iter(0..400).map(|i| {
        let a = &a;
        async move {
            let key = format!("k{i:03}");
            kv(a, None, "set", json!({"key": key, "value": i}))
                .await
                .ok()
                .map(|_| (key, i))
        }
    });
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let writing = writes.buffer_unordered(8).for_each(|written| {
        if let Some(written) = written {
            acknowledged.lock().unwrap().push(written);
        }
        async {}
    });
    let killing = async {
        let started = eventually(std::time::Duration::from_secs(30), || async {
            acknowledged.lock().unwrap().len() >= 50
        })
        .await;
        assert!(started, "host A acknowledged no writes");
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &a.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    };
    futures::join!(writing, killing);
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() < 400,
        "host A was killed after all the writes"
    );

    // Then the NATS server dies too, without warning, and comes back on the
    // same store; host B reconnects and finds every acknowledged write.
    let _nats = nats.crash_and_restart();
    let back = eventually(std::time::Duration::from_secs(20), || async {
        kv(&b, None, "keys", json!({})).await.is_ok()
    })
    .await;
    assert!(back, "host B does not read the bucket after NATS restarted");
    let keys = kv(&b, None, "keys", json!({})).await.unwrap();
    let keys: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for (key, value) in &acknowledged {
        assert!(
            keys.contains(&key.as_str()),
            "{key} was acknowledged and is gone"
        );
        let read = kv(&b, None, "get", json!({"key": key})).await.unwrap();
        assert_eq!(read["value"], json!(value));
    }
}
