//! Loading plugins: what the host checks before it serves anything.

use opbox::runtime::{LoadError, LoadOptions, PluginLimits, Runtime, RuntimeConfig};
use opbox::{Host, HostConfig, HostError};

#[tokio::test]
async fn a_manifest_with_a_duplicate_operation_is_refused() {
    let wasm = std::fs::read(opbox::bundled::built_plugin("fixture-invalid")).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let error = runtime
        .load(&wasm, LoadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LoadError::Manifest(m) if m.contains("`twice` is listed twice")),
        "{error}"
    );
}

#[tokio::test]
async fn an_invalid_mount_name_is_refused() {
    let wasm = std::fs::read(opbox::bundled::built_plugin("echo")).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let options = LoadOptions {
        name: Some("Not/Valid".into()),
        ..LoadOptions::default()
    };
    let error = runtime.load(&wasm, options).await.unwrap_err();
    assert!(
        matches!(&error, LoadError::Manifest(m) if m.contains("Not/Valid")),
        "{error}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    for bytes in [&b""[..], b"\0asm\x01\0\0\0", b"hello"] {
        let error = runtime
            .load(bytes, LoadOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(error, LoadError::Compile(_)), "{error}");
    }
}

#[tokio::test]
async fn two_plugins_cannot_share_a_namespace() {
    let mut config = HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        ..HostConfig::default()
    };
    config.plugins.push(opbox::config::PluginConfig {
        path: opbox::bundled::built_plugin("fixture-slow"),
        reuse: None,
        name: Some("echo".into()),
        tenant: None,
        grants: Default::default(),
        limits: Default::default(),
    });
    let error = Host::start(config).await.unwrap_err();
    assert!(matches!(&error, HostError::Register { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("namespace `echo` is already in use"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plugin_can_be_mounted_under_another_name() {
    let host = crate::util::TestHost::with_config(|config| {
        config.plugins.push(opbox::config::PluginConfig {
            path: opbox::bundled::built_plugin("echo"),
            reuse: None,
            name: Some("mirror".into()),
            tenant: None,
            grants: Default::default(),
            limits: Default::default(),
        });
    })
    .await;
    let (status, body) = host
        .call("mirror/echo", serde_json::json!("same code"))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(body["output"], "same code");
}

#[tokio::test]
async fn a_restart_loads_compiled_plugins_from_the_cache() {
    let data = tempfile::tempdir().unwrap();
    let config = || HostConfig {
        data_dir: data.path().to_owned(),
        ..HostConfig::demo()
    };
    Host::start(config()).await.unwrap();
    let cache = data.path().join("cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        artifacts.len(),
        opbox::bundled::EXAMPLES.len(),
        "{artifacts:?}"
    );
    let written: Vec<_> = artifacts
        .iter()
        .map(|p| p.metadata().unwrap().modified().unwrap())
        .collect();
    // A second start finds every artifact and rewrites none of them.
    let host = Host::start(config()).await.unwrap();
    let again: Vec<_> = artifacts
        .iter()
        .map(|p| p.metadata().unwrap().modified().unwrap())
        .collect();
    assert_eq!(written, again);
    let output = host
        .dispatcher()
        .call(opbox::CallRequest::new("echo/echo", serde_json::json!(1)))
        .await
        .unwrap();
    assert_eq!(output, 1);

    // An artifact that does not load is compiled again, not trusted.
    std::fs::write(&artifacts[0], b"not an artifact").unwrap();
    drop(host);
    let host = Host::start(config()).await.unwrap();
    assert_ne!(std::fs::read(&artifacts[0]).unwrap(), b"not an artifact");
    for (operation, input) in [("echo/echo", "{}"), ("textkit/stats", r#"{"text": "a b"}"#)] {
        let request = opbox::CallRequest::new(operation, serde_json::from_str(input).unwrap());
        host.dispatcher().call(request).await.unwrap();
    }
}

#[test]
fn the_example_configuration_is_valid_and_means_what_it_says() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("opbox.example.toml");
    let config = HostConfig::load(&path).unwrap();
    let defaults = HostConfig::default();
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.limits.deadline_ms, defaults.limits.deadline_ms);
    assert_eq!(config.limits.max_instances, defaults.limits.max_instances);
    assert_eq!(config.limits.max_call_depth, defaults.limits.max_call_depth);
    assert_eq!(
        config.envelope.max_open_calls,
        defaults.envelope.max_open_calls
    );
    assert_eq!(
        config.envelope.max_frame_bytes,
        defaults.envelope.max_frame_bytes
    );
    let demo = &config.tenants[0];
    assert_eq!(demo.quotas, opbox::tenants::Quotas::default());
    assert!(demo.anonymous);
    assert_eq!(
        config.access["textkit/stats"].required_scopes,
        ["text:read"]
    );
    assert_eq!(config.admin.grace_ms, defaults.admin.grace_ms);
    assert_eq!(
        config.admin.max_plugin_bytes,
        defaults.admin.max_plugin_bytes
    );
    assert_eq!(config.admin.max_uploads, defaults.admin.max_uploads);
    assert!(config.telemetry.metrics);
    assert_eq!(config.telemetry.otlp_endpoint, None);
    assert_eq!(config.telemetry.service_name, "opbox");
    assert_eq!(config.telemetry.sample_ratio, 1.0);
    // Every default limit written out equals the built-in default.
    assert_eq!(config.plugin_limits(None), PluginLimits::default());
    let mirror = config.plugin_limits(Some(&config.plugins[0]));
    assert_eq!(mirror.memory_bytes, 16 << 20);
    assert_eq!(mirror.cpu_ms, 1000);
    assert_eq!(mirror.output_bytes, PluginLimits::default().output_bytes);
    assert_eq!(config.plugins[0].path, std::path::Path::new("bundled:echo"));
}

/// The example configuration serves as it is, from anywhere: its plugin
/// is a bundled example, not a file a newcomer would have to build.
#[tokio::test]
async fn the_example_configuration_serves() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("opbox.example.toml");
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::load(&path).unwrap();
    config.data_dir = data.path().to_owned();
    let host = Host::start(config).await.unwrap();
    let mut request = opbox::CallRequest::new("mirror/echo", serde_json::json!({"x": 1}));
    // An anonymous caller, of the configuration's `demo` tenant.
    request.identity = host.dispatcher().authenticate(None).unwrap();
    let output = host.dispatcher().call(request).await.unwrap();
    assert_eq!(output, serde_json::json!({"x": 1}));
    // A bundled name that is not there says which are.
    let mut config = HostConfig::load(&path).unwrap();
    config.data_dir = data.path().join("other");
    config.plugins[0].path = "bundled:nosuch".into();
    let error = Host::start(config).await.unwrap_err().to_string();
    assert!(error.contains("bundled:echo, bundled:ticker"), "{error}");
}

#[tokio::test]
async fn a_plugin_of_the_core_world_loads_and_serves_without_invoke() {
    let path = opbox::bundled::built_plugin("fixture-core");
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::from_file(&engine, &path).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(
        imports.iter().any(|i| i.starts_with("opbox:plugin/log")),
        "{imports:?}"
    );
    assert!(
        !imports.iter().any(|i| i.starts_with("opbox:plugin/invoke")),
        "a plugin-core plugin imports no invoke: {imports:?}"
    );

    let host = crate::util::TestHost::start().await;
    let (status, body) = host
        .call("fixture-core/hello", serde_json::json!("ada"))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["output"], "hello, ada");
    let events = host
        .subscribe("fixture-core/count", serde_json::json!(3))
        .await
        .collect()
        .await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(&data[..3], ["1", "2", "3"]);
    assert_eq!(events[3].event, "completed");
}
