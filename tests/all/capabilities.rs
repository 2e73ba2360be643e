//! What operators grant plugins: each grant granted and denied, over real
//! HTTP with real plugins.

use std::path::Path;

use opbox::HostConfig;
use opbox::capabilities::Grants;
use opbox::capabilities::files::DirectoryGrant;
use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{TestHost, two_tenants};

/// Mounts the built plugin `file` as `name`, with `dir` granted.
fn with_directory(config: &mut HostConfig, file: &str, name: &str, dir: &Path, read_only: bool) {
    config.plugins.push(PluginConfig {
        path: opbox::bundled::built_plugin(file),
        reuse: None,
        name: Some(name.into()),
        tenant: None,
        grants: Grants {
            directory: Some(DirectoryGrant {
                path: dir.to_owned(),
                read_only,
            }),
            ..Grants::default()
        },
        limits: Default::default(),
    });
}

/// `hostile-ambient/fs` mounted as `plugin`: what one filesystem attempt got.
async fn fs(host: &TestHost, plugin: &str, op: &str, path: &str) -> String {
    let input = json!({"op": op, "path": path, "text": "written by the guest"});
    let (status, body) = host.call(&format!("{plugin}/fs"), input).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["output"].as_str().unwrap().to_owned()
}

/// A directory to grant, `root`, next to a file outside it and with
/// symlinks inside it that point out.
fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("inside.txt"), "inside").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("../outside.txt", root.join("link-out")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("link-etc")).unwrap();
    dir
}

#[tokio::test]
async fn a_granted_directory_is_the_plugins_root_and_nothing_more() {
    let dir = sandbox();
    let root = dir.path().join("root");
    let host = TestHost::with_config(|config| {
        with_directory(config, "hostile-ambient", "rw", &root, false)
    })
    .await;
    assert_eq!(
        fs(&host, "rw", "read", "/inside.txt").await,
        r#"ok: "inside""#
    );
    assert_eq!(
        fs(&host, "rw", "read", "sub/../inside.txt").await,
        r#"ok: "inside""#
    );
    assert!(
        fs(&host, "rw", "list", "/")
            .await
            .contains(r#""inside.txt""#)
    );
    // No way out: `..`, absolute host paths, symlinks pointing out.
    for path in [
        "../outside.txt",
        "/../outside.txt",
        "sub/../../outside.txt",
        "link-out",
        "link-etc/hostname",
        "/etc/hostname",
        "/proc/self/environ",
    ] {
        let got = fs(&host, "rw", "read", path).await;
        assert!(got.starts_with("error:"), "read {path}: {got}");
        assert!(!got.contains("secret"), "read {path}: {got}");
    }
    let got = fs(&host, "rw", "list", "link-etc").await;
    assert!(got.starts_with("error:"), "{got}");
    // Writes land inside, and only inside.
    assert_eq!(fs(&host, "rw", "write", "/new.txt").await, "ok: ()");
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "written by the guest"
    );
    for path in ["../escape.txt", "link-out"] {
        let got = fs(&host, "rw", "write", path).await;
        assert!(got.starts_with("error:"), "write {path}: {got}");
    }
    assert!(!dir.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("outside.txt")).unwrap(),
        "secret"
    );
    assert_eq!(fs(&host, "rw", "remove", "/new.txt").await, "ok: ()");
    assert!(!root.join("new.txt").exists());
    // Callers learn that a directory is granted, not where it is.
    let (_, body) = host.call("services/plugin", json!({"name": "rw"})).await;
    assert_eq!(body["output"]["grants"]["directory"], "read-write");
    assert!(!body.to_string().contains(root.to_str().unwrap()));
}

#[tokio::test]
async fn a_read_only_directory_cannot_be_changed() {
    let dir = sandbox();
    let root = dir.path().join("root");
    let host = TestHost::with_config(|config| {
        with_directory(config, "hostile-ambient", "ro", &root, true)
    })
    .await;
    assert_eq!(
        fs(&host, "ro", "read", "/inside.txt").await,
        r#"ok: "inside""#
    );
    for (op, path) in [
        ("write", "/new.txt"),
        ("write", "/inside.txt"),
        ("remove", "/inside.txt"),
    ] {
        let got = fs(&host, "ro", op, path).await;
        assert!(got.starts_with("error:"), "{op} {path}: {got}");
    }
    assert!(!root.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("inside.txt")).unwrap(),
        "inside"
    );
}

#[tokio::test]
async fn without_a_grant_there_is_no_filesystem_and_no_trap() {
    let host = TestHost::start().await;
    // hostile-ambient is loaded without grants.
    for op in ["read", "list", "write"] {
        let got = fs(&host, "hostile-ambient", op, "/").await;
        assert!(got.starts_with("error:"), "{op}: {got}");
    }
    let host = TestHost::with_config(|config| {
        config.plugins.push(PluginConfig {
            path: opbox::bundled::built_plugin("notes"),
            reuse: None,
            name: None,
            tenant: None,
            grants: Grants::default(),
            limits: Default::default(),
        });
    })
    .await;
    let (status, body) = host.call("notes/list", json!(null)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "STORAGE_UNAVAILABLE");
    let (_, body) = host.call("services/plugin", json!({"name": "notes"})).await;
    assert_eq!(body["output"]["grants"]["directory"], Value::Null);
}

#[tokio::test]
async fn a_missing_granted_directory_stops_the_host_with_a_clear_error() {
    let mut config = HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        ..HostConfig::demo()
    };
    with_directory(
        &mut config,
        "notes",
        "notes",
        Path::new("/no/such/dir"),
        false,
    );
    let error = opbox::Host::start(config).await.unwrap_err().to_string();
    assert!(
        error.contains("/no/such/dir") && error.contains("not a directory"),
        "{error}"
    );
}

#[tokio::test]
async fn notes_keep_each_tenants_notes_in_its_own_directory() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = TestHost::with_config(|config| {
        two_tenants(config);
        for (tenant, dir) in [("acme", a.path()), ("globex", b.path())] {
            with_directory(config, "notes", "notes", dir, false);
            config.plugins.last_mut().unwrap().tenant = Some(tenant.into());
        }
    })
    .await;
    let host = &host;
    let call = |token: &'static str, op: &str, input: Value| {
        let operation = format!("notes/{op}");
        async move { host.call_as(token, &operation, input).await }
    };
    let (status, body) = call("acme", "put", json!({"name": "plan", "text": "ship it"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = call("acme", "get", json!({"name": "plan"})).await;
    assert_eq!(body["output"]["text"], "ship it");
    assert_eq!(
        std::fs::read_to_string(a.path().join("plan.txt")).unwrap(),
        "ship it"
    );
    // The other tenant's copy of the plugin sees its own directory only.
    let (_, body) = call("globex", "list", json!(null)).await;
    assert_eq!(body["output"]["names"], json!([]));
    let (_, body) = call("globex", "get", json!({"name": "plan"})).await;
    assert_eq!(body["error"]["code"], "NO_SUCH_NOTE");
    let (_, body) = call("acme", "list", json!(null)).await;
    assert_eq!(body["output"]["names"], json!(["plan"]));
    let (_, body) = call("acme", "get", json!({"name": "../plan"})).await;
    assert_eq!(body["error"]["code"], "INVALID_NAME", "{body}");
    let (status, _) = call("acme", "delete", json!({"name": "plan"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!a.path().join("plan.txt").exists());
}

#[tokio::test]
async fn config_values_and_secrets_reach_only_their_plugin() {
    const SECRET: &str = "hunter2-never-shown";
    let host = TestHost::with_config(|config| {
        config.plugins.push(PluginConfig {
            path: opbox::bundled::built_plugin("hostile-ambient"),
            reuse: None,
            name: Some("configured".into()),
            tenant: None,
            grants: Grants {
                config: Some([("greeting".to_owned(), "hello".to_owned())].into()),
                secrets: Some([("api_key".to_owned(), SECRET.to_owned().into())].into()),
                ..Grants::default()
            },
            limits: Default::default(),
        });
    })
    .await;
    let (status, body) = host
        .call("configured/config", json!({"key": "greeting"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["value"], "hello");
    assert_eq!(
        body["output"]["all"],
        json!([["greeting", "hello"], ["api_key", SECRET]])
    );
    let (_, body) = host
        .call("configured/config", json!({"key": "api_key"}))
        .await;
    assert_eq!(body["output"]["value"], SECRET);
    let (_, body) = host.call("configured/config", json!({"key": "nope"})).await;
    assert_eq!(body["output"]["value"], Value::Null);
    // Callers see which keys are configured, never a value.
    let (_, body) = host
        .call("services/plugin", json!({"name": "configured"}))
        .await;
    assert_eq!(
        body["output"]["grants"]["config"],
        json!(["greeting", "api_key"])
    );
    assert!(!body.to_string().contains(SECRET) && !body.to_string().contains("hello"));
    // The same plugin without the grant: a denied error, not a trap, and
    // nothing of the other copy's values.
    let (status, body) = host
        .call("hostile-ambient/config", json!({"key": "greeting"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "CONFIG_DENIED");
    assert!(!body.to_string().contains("hello"));
}

/// [`two_tenants`] and the `kv` example granted a store with `quota`, its
/// database in `db`; `kv-denied` is the same plugin without the grant.
fn kv_host(
    config: &mut HostConfig,
    db: &Path,
    quota: opbox::capabilities::keyvalue::KeyvalueGrant,
) {
    two_tenants(config);
    config.keyvalue_path = Some(db.join("kv.redb"));
    for (name, keyvalue) in [("kv", Some(quota)), ("kv-denied", None)] {
        config.plugins.push(PluginConfig {
            path: opbox::bundled::built_plugin("kv"),
            reuse: None,
            name: Some(name.into()),
            tenant: None,
            grants: Grants {
                keyvalue,
                ..Grants::default()
            },
            limits: Default::default(),
        });
    }
}

#[tokio::test]
async fn a_keyvalue_store_per_tenant_within_its_quota() {
    let db = tempfile::tempdir().unwrap();
    let quota = opbox::capabilities::keyvalue::KeyvalueGrant {
        max_bytes: 100,
        max_keys: 3,
    };
    let host = TestHost::with_config(|config| kv_host(config, db.path(), quota)).await;
    let (status, body) = host
        .call_as("acme", "kv/set", json!({"key": "a", "value": {"x": 1}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = host.call_as("acme", "kv/get", json!({"key": "a"})).await;
    assert_eq!(body["output"]["value"], json!({"x": 1}));
    for n in 1..=3 {
        let (_, body) = host
            .call_as("acme", "kv/increment", json!({"key": "hits"}))
            .await;
        assert_eq!(body["output"]["count"], n, "{body}");
    }
    let (_, body) = host.call_as("acme", "kv/keys", json!(null)).await;
    assert_eq!(body["output"]["keys"], json!(["a", "hits"]));
    // `keys` takes no input: `{}` (a tool's "no arguments") does too, but
    // anything else is refused before the plugin runs.
    let (_, body) = host.call_as("acme", "kv/keys", json!({})).await;
    assert_eq!(body["output"]["keys"], json!(["a", "hits"]), "{body}");
    let (status, body) = host
        .call_as("acme", "kv/keys", json!({"prefix": "a"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    // The other tenant, calling the same plugin, has keys of its own.
    let (_, body) = host.call_as("globex", "kv/get", json!({"key": "a"})).await;
    assert_eq!(body["output"]["value"], Value::Null);
    let (_, body) = host.call_as("globex", "kv/keys", json!(null)).await;
    assert_eq!(body["output"]["keys"], json!([]));
    // The quota: 3 keys, 100 bytes; a refused write leaves nothing behind.
    host.call_as("acme", "kv/set", json!({"key": "b", "value": 2}))
        .await;
    let (status, body) = host
        .call_as("acme", "kv/set", json!({"key": "c", "value": 3}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "KEYVALUE_QUOTA");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_keys")
    );
    let big = "x".repeat(200);
    let (_, body) = host
        .call_as("acme", "kv/set", json!({"key": "a", "value": big}))
        .await;
    assert_eq!(body["error"]["code"], "KEYVALUE_QUOTA", "{body}");
    let (_, body) = host.call_as("acme", "kv/get", json!({"key": "a"})).await;
    assert_eq!(body["output"]["value"], json!({"x": 1}));
    // globex's quota is its own.
    let (status, _) = host
        .call_as("globex", "kv/set", json!({"key": "c", "value": 3}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Deleting gives room back.
    host.call_as("acme", "kv/delete", json!({"key": "b"})).await;
    let (status, _) = host
        .call_as("acme", "kv/set", json!({"key": "c", "value": 3}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Without the grant: a denied error, not a trap, and no data.
    let (status, body) = host
        .call_as("acme", "kv-denied/get", json!({"key": "a"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "KEYVALUE_DENIED");
    let (_, body) = host
        .call_as("acme", "services/plugin", json!({"name": "kv"}))
        .await;
    assert_eq!(
        body["output"]["grants"]["keyvalue"],
        json!({"max_bytes": 100, "max_keys": 3})
    );
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_the_host_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\nkeyvalue_path = \"kv.redb\"\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[plugins]]\npath = {:?}\n[plugins.grants.keyvalue]\n",
        crate::util::data_dir(),
        crate::util::cache_dir(),
        opbox::bundled::built_plugin("kv"),
    );
    let server = crate::util::Server::start_in(dir.path(), &config);
    let client = reqwest::Client::new();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Eight writers, each setting its own keys one after another.
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, url, acknowledged) = (
                client.clone(),
                format!("{}/call", server.url),
                acknowledged.clone(),
            );
            tokio::spawn(async move {
                for n in 0.. {
                    let key = format!("w{writer}-{n}");
                    let call = json!({"operation": "kv/set", "input": {"key": key, "value": n}});
                    let Ok(response) = client.post(&url).json(&call).send().await else {
                        return; // the host is gone
                    };
                    if response.status() != StatusCode::OK {
                        return;
                    }
                    acknowledged.lock().unwrap().push((key, n));
                }
            })
        })
        .collect();
    // Kill the host while the writers are at it: after 400 acknowledged
    // writes, with more in flight.
    while acknowledged.lock().unwrap().len() < 400 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    // A new host on the same database has every acknowledged write.
    let server = crate::util::Server::start_in(dir.path(), &config);
    let keys: Value = client
        .post(format!("{}/call", server.url))
        .json(&json!({"operation": "kv/keys"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: std::collections::HashSet<&str> = keys["output"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for (key, _) in &acknowledged {
        assert!(stored.contains(key.as_str()), "acknowledged {key} was lost");
    }
    for (key, n) in acknowledged.iter().step_by(25) {
        let body = server.call(&client, "kv/get", json!({"key": key})).await;
        assert_eq!(body["output"]["value"], *n, "{key}");
    }
}

#[tokio::test]
async fn one_call_cannot_hoard_host_resources() {
    let db = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|config| {
        config.keyvalue_path = Some(db.path().join("kv.redb"));
        config.plugins.push(PluginConfig {
            path: opbox::bundled::built_plugin("hostile-ambient"),
            reuse: None,
            name: Some("hoarder".into()),
            tenant: None,
            grants: Grants {
                keyvalue: Some(Default::default()),
                ..Grants::default()
            },
            limits: Default::default(),
        });
    })
    .await;
    let (status, body) = host.call("hoarder/hoard", json!({"n": 50_000})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let opened = body["output"]["opened"].as_u64().unwrap();
    assert!(opened <= 10_000, "{body}");
    assert!(
        body["output"]["stopped_by"]
            .as_str()
            .unwrap()
            .contains("KEYVALUE_FAILED"),
        "{body}"
    );
    // The next call starts with an empty table.
    let (_, body) = host.call("hoarder/hoard", json!({"n": 100})).await;
    assert_eq!(body["output"]["opened"], 100, "{body}");
}
