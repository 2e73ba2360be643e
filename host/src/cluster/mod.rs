//! Hosts of one cluster calling each other over NATS.
//!
//! With `[cluster]` set, a host connects to NATS and
//!
//! - serves the operations it holds to the other hosts, one queue group per
//!   (tenant, operation), so calls spread across the hosts holding it;
//! - hands calls of operations it does not hold to those hosts, after its
//!   own admission (draining, the tenant's quota, the deadline), and gives
//!   its caller their answer, error and cost as if the call ran here;
//! - stops a forwarded call on the other host when its caller leaves
//!   (`call.aborted`, a disconnect, the deadline), and fails it with
//!   `UNAVAILABLE` when that host stops answering;
//! - with JetStream: passes plugin changes made through its API to the
//!   other hosts and applies theirs, where a plugin's placement matches
//!   its labels (`distribute.rs`); shares its events with theirs
//!   (`events.rs`); and keeps `wasi:keyvalue` in one bucket every host
//!   shares (`keyvalue.rs`).
//!
//! Hosts trust each other, and only each other: a forwarded call carries
//! its caller's identity as the forwarding host authenticated it, and the
//! running host takes it only from a message sealed with the key every
//! host of the cluster shares (`[cluster] key` or `key_file`; `seal.rs`).
//! So does every other message a host acts on (replies, credit, aborts)
//! and everything it keeps in JetStream for the others (plugin records,
//! events). A NATS client without the key makes no host run anything.
//!
//! A host that loses NATS goes on serving what it holds and reconnects;
//! meanwhile calls of operations it does not hold get `UNAVAILABLE`.
//!
//! The subjects and messages are in `wire.rs`. They are plain request
//! subjects with queue groups, not async-nats's service API: a forwarded
//! call gets several replies (heartbeats, a subscription's items,
//! the end), where a service endpoint answers once.

mod catalog;
mod distribute;
mod events;
mod flow;
mod forward;
mod inbox;
mod keyvalue;
mod seal;
mod serve;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

use crate::capabilities::keyvalue::Keyspace;
use crate::dispatch::Dispatcher;
use crate::plugins::Plugins;
use catalog::{Catalog, Publisher};
use distribute::Distribution;
use keyvalue::SharedKeyspace;
use serve::Running;
use wire::Subjects;

/// `[cluster]`: which NATS to join, as whom, and under which name.
///
/// | field | default |
/// |---|---|
/// | `nats_url` | required: `nats://host:4222` (several, comma-separated) |
/// | `name` | `opbox`: hosts of one name form one cluster |
/// | `host` | this host's name in the cluster, in its events: a random id kept in the data directory |
/// | `labels` | none: what this host is, for plugins' `placement` (`{ zone = "eu" }`) |
/// | `user`, `password` | none |
/// | `token` | none |
/// | `creds_file` | none: a NATS `.creds` file (JWT and NKey seed), relative to the config file |
/// | `heartbeat_ms` | 250: how often a host running a forwarded call says it still is |
/// | `max_forwarded` | 1024: calls other hosts forwarded that run here at once |
/// | `catalog_refresh_ms` | 5000: how often a host writes its share of the cluster's catalog; one silent for three is no longer listed |
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers.
    pub nats_url: String,
    /// The cluster's name: the first token of its subjects after `opbox`.
    #[serde(default = "default_name")]
    pub name: String,
    /// This host's name in the cluster; each host's must be its own.
    #[serde(default)]
    pub host: Option<String>,
    /// What this host is: a plugin whose settings have a `placement` is
    /// held only by the hosts whose labels match it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A NATS user, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// The user's password.
    #[serde(default)]
    pub password: Option<String>,
    /// A NATS token.
    #[serde(default)]
    pub token: Option<String>,
    /// A NATS credentials file.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// The secret every host of the cluster shares, at least 32 bytes:
    /// what a host seals its messages with and checks the others' by.
    #[serde(default)]
    pub key: Option<String>,
    /// A file holding `key` (its text, trimmed), relative to the
    /// configuration file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How often a host running a forwarded call says so, in milliseconds;
    /// a forwarding host that hears nothing for six of these gives up with
    /// `UNAVAILABLE`.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Calls forwarded by other hosts running here at once; more get
    /// `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_max_forwarded")]
    pub max_forwarded: usize,
    /// How often a host writes its share of the cluster's catalog, in
    /// milliseconds; the others stop listing a host silent for three.
    #[serde(default = "default_catalog_refresh_ms")]
    pub catalog_refresh_ms: u64,
}

fn default_name() -> String {
    "opbox".into()
}

fn default_heartbeat_ms() -> u64 {
    250
}

fn default_max_forwarded() -> usize {
    1024
}

fn default_catalog_refresh_ms() -> u64 {
    5000
}

impl ClusterConfig {
    /// A cluster on `nats_url` with every other setting at its default,
    /// and no key yet: [`with_key`](Self::with_key) sets one.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            name: default_name(),
            host: None,
            labels: BTreeMap::new(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            key: None,
            key_file: None,
            heartbeat_ms: default_heartbeat_ms(),
            max_forwarded: default_max_forwarded(),
            catalog_refresh_ms: default_catalog_refresh_ms(),
        }
    }

    /// This cluster, with `key` the secret its hosts share.
    pub fn with_key(self, key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            ..self
        }
    }

    /// The key, from `key` or `key_file`: refused when it is missing or
    /// shorter than [`seal::MIN_KEY_BYTES`].
    fn key_bytes(&self) -> Result<Vec<u8>, ClusterError> {
        let key = match (&self.key, &self.key_file) {
            (Some(key), _) => key.trim().as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ClusterError::KeyFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .as_bytes()
                .to_vec(),
            (None, None) => return Err(ClusterError::NoKey),
        };
        if key.len() < seal::MIN_KEY_BYTES {
            return Err(ClusterError::NoKey);
        }
        Ok(key)
    }
}

impl std::fmt::Debug for ClusterConfig {
    /// Without the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("nats_url", &self.nats_url)
            .field("name", &self.name)
            .field("host", &self.host)
            .field("labels", &self.labels)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("creds_file", &self.creds_file)
            .field("key", &self.key.as_ref().map(|_| "…"))
            .field("key_file", &self.key_file)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("max_forwarded", &self.max_forwarded)
            .field("catalog_refresh_ms", &self.catalog_refresh_ms)
            .finish()
    }
}

/// Why the host could not join its cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The credentials file cannot be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The host's name cannot be read from, or kept in, the data
    /// directory.
    #[error("cannot keep this host's cluster name in {path}: {source}")]
    HostName {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No key, or one too short to trust.
    #[error(
        "a cluster needs the key its hosts share, at least {} bytes: set `[cluster] key` or `key_file` (`head -c 32 /dev/urandom | base64 > cluster.key`)",
        seal::MIN_KEY_BYTES
    )]
    NoKey,
    /// The key file cannot be read.
    #[error("cannot read the cluster key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `nats_url` or the settings cannot be used.
    #[error("cannot join the cluster at {url}: {reason}")]
    Connect {
        /// The servers.
        url: String,
        /// Why.
        reason: String,
    },
}

/// What the forwarding and serving sides share.
struct Shared {
    client: Client,
    subjects: Subjects,
    heartbeat: Duration,
    /// How long a forwarding host waits for a word from the running host.
    silence: Duration,
    /// Slots for calls forwarded to this host.
    slots: Arc<Semaphore>,
    max_forwarded: usize,
    running: Arc<Running>,
    /// Seals what this host sends, and opens what the others send.
    seal: Arc<seal::Seal>,
    /// Where replies to the calls this host forwards arrive, once one is
    /// forwarded.
    inbox: Arc<tokio::sync::OnceCell<Arc<inbox::Inbox>>>,
    /// What the other hosts list.
    catalog: Arc<Catalog>,
    /// `true` while this host has nothing to tell the others before it
    /// stops: before its share of the catalog is written, and once its
    /// last one is.
    said: watch::Sender<bool>,
}

/// This host's membership of a cluster. Dropping it does not leave: the
/// host leaves when it drains.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("subjects", &self.shared.subjects)
            .finish_non_exhaustive()
    }
}

/// A host's connection to its cluster's NATS, before it joins: what the
/// host builds on it (the shared key spaces) comes first.
pub struct Connection {
    client: Client,
    seal: Arc<seal::Seal>,
    /// This host's name in the cluster.
    host: String,
    /// Whether NATS is reached, now.
    connection: watch::Receiver<bool>,
    config: ClusterConfig,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts connecting to the NATS of `config`'s cluster, as the host
    /// whose data directory is `data_dir`. NATS that cannot be reached yet
    /// is retried in the background.
    pub async fn connect(
        config: &ClusterConfig,
        data_dir: &Path,
    ) -> Result<Connection, ClusterError> {
        let seal = Arc::new(seal::Seal::new(&config.key_bytes()?));
        let host = match &config.host {
            Some(host) => host.clone(),
            None => kept_name(data_dir)?,
        };
        let (connected, connection) = watch::channel(false);
        let client = connect(config, connected).await?;
        Ok(Connection {
            client,
            seal,
            host,
            connection,
            config: config.clone(),
        })
    }
}

impl Connection {
    /// The key spaces every host of the cluster shares, for
    /// `wasi:keyvalue`: a JetStream bucket, made on first use.
    pub fn keyspace(&self) -> Arc<dyn Keyspace> {
        Arc::new(SharedKeyspace::new(
            &self.client,
            bucket_name(&self.config.name, "kv"),
        ))
    }

    /// Serves `dispatcher`'s operations to the cluster and sends it the
    /// calls of operations it does not hold; passes the changes made
    /// through `plugins`' API on to the other hosts and applies theirs
    /// (components up to `max_plugin_bytes`), and shares its events with
    /// theirs (the stream keeps `max_events`), when the NATS server has
    /// JetStream. A host that cannot reach NATS within a few seconds serves
    /// what it holds meanwhile.
    pub async fn join(
        self,
        dispatcher: &Dispatcher,
        plugins: &Plugins,
        max_plugin_bytes: u64,
        max_events: u64,
    ) -> Cluster {
        let Self {
            client,
            seal,
            host,
            mut connection,
            config,
        } = self;
        let log = plugins.events();
        log.set_host(&host);
        // A host reachable at once joins before it serves; one that is not
        // serves what it holds meanwhile.
        let joined = matches!(
            tokio::time::timeout(CONNECT_WAIT, connection.wait_for(|up| *up)).await,
            Ok(Ok(_))
        );
        if !joined {
            tracing::warn!(
                nats = %config.nats_url,
                "the cluster cannot be reached yet; serving this host's operations alone meanwhile"
            );
        }
        let heartbeat = Duration::from_millis(config.heartbeat_ms.max(10));
        let refresh = Duration::from_millis(config.catalog_refresh_ms.max(10));
        let catalog = Arc::new(Catalog::new(refresh));
        let shared = Arc::new(Shared {
            client,
            subjects: Subjects::new(&config.name),
            heartbeat,
            silence: heartbeat * 6,
            slots: Arc::new(Semaphore::new(config.max_forwarded)),
            max_forwarded: config.max_forwarded,
            running: Arc::default(),
            seal: seal.clone(),
            inbox: Arc::default(),
            catalog: catalog.clone(),
            said: watch::Sender::new(true),
        });
        dispatcher.set_remote(shared.clone());
        // Plugins pass between hosts once NATS is reached; changes made
        // meanwhile wait.
        let told = distribute::listen(plugins);
        tokio::spawn({
            let (shared, name) = (shared.clone(), config.name.clone());
            let plugins = plugins.downgrade();
            let dispatcher = dispatcher.clone();
            async move {
                if connection.wait_for(|up| *up).await.is_err() {
                    return;
                }
                let bucket = bucket_name(&name, "catalog");
                let (client, own) = (&shared.client, host.clone());
                let publisher =
                    Publisher::open(client, bucket, own, seal.clone(), catalog, refresh).await;
                if let Some(publisher) = publisher {
                    publisher.start(dispatcher, shared.said.clone()).await;
                }
                let stream = bucket_name(&name, "events");
                events::start(&shared, stream, host.clone(), log, max_events).await;
                let client = &shared.client;
                if let Some(distribution) = Distribution::open(client, &name, host, seal).await {
                    distribution.start(plugins, told, max_plugin_bytes).await;
                }
            }
        });
        let served = serve::start(shared.clone(), dispatcher.clone()).await;
        tracing::info!(
            cluster = %config.name,
            operations = served,
            "serving this host's operations to the cluster"
        );
        Cluster { shared }
    }
}

impl Cluster {
    /// Resolves once this host, draining, has told the cluster it leaves:
    /// its operations leave the other hosts' listings. At once when it has
    /// nothing to tell (no JetStream, or not joined yet).
    pub fn left(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut said = self.shared.said.subscribe();
        async move {
            let _ = said.wait_for(|said| *said).await;
        }
    }
}

/// A JetStream bucket of the cluster named `cluster`:
/// `opbox-<cluster>-<what>`, the name kept to what a bucket name may hold.
fn bucket_name(cluster: &str, what: &str) -> String {
    let name: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("opbox-{name}-{what}")
}

/// The file in the data directory that keeps a host's cluster name.
const HOST_NAME_FILE: &str = "cluster-host";

/// The name kept in `data_dir`, made (a random id) on first use: a host
/// keeps its name across restarts, so that it knows its own events.
fn kept_name(data_dir: &Path) -> Result<String, ClusterError> {
    let path = data_dir.join(HOST_NAME_FILE);
    let failed = |source| ClusterError::HostName {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let name = uuid::Uuid::new_v4().simple().to_string();
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    std::fs::write(&path, &name).map_err(failed)?;
    Ok(name)
}

/// How long a starting host waits for NATS before it serves alone.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A client of the cluster's NATS; `connected` follows whether it is.
async fn connect(
    config: &ClusterConfig,
    connected: watch::Sender<bool>,
) -> Result<Client, ClusterError> {
    let mut options = match &config.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ClusterError::Creds {
                path: path.clone(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    let url = config.nats_url.clone();
    let servers: Vec<&str> = config.nats_url.split(',').map(str::trim).collect();
    options
        .name(format!("opbox {}", config.name))
        .retry_on_initial_connect()
        // Forwarded calls waiting for a busy host queue here; past this,
        // NATS drops them and their callers get `UNAVAILABLE`.
        .subscription_capacity(4096)
        .event_callback(move |event| {
            let url = url.clone();
            let connected = connected.clone();
            async move {
                match event {
                    Event::Connected => {
                        connected.send_replace(true);
                        tracing::info!(nats = %url, "joined the cluster");
                    }
                    Event::Disconnected => {
                        connected.send_replace(false);
                        tracing::warn!(nats = %url, "lost the cluster; reconnecting");
                    }
                    other => tracing::debug!(nats = %url, event = %other, "cluster event"),
                }
            }
        })
        .connect(servers.as_slice())
        .await
        .map_err(|e| ClusterError::Connect {
            url: config.nats_url.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_a_key_of_32_bytes_or_more() {
        let cluster = ClusterConfig::new("nats://127.0.0.1:4222");
        assert!(matches!(cluster.key_bytes(), Err(ClusterError::NoKey)));
        let short = cluster.clone().with_key("too short");
        assert!(matches!(short.key_bytes(), Err(ClusterError::NoKey)));
        let key = "k".repeat(seal::MIN_KEY_BYTES);
        assert_eq!(
            cluster
                .clone()
                .with_key(format!(" {key}\n"))
                .key_bytes()
                .unwrap(),
            key.as_bytes()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.key"), format!("{key}\n")).unwrap();
        let from_file = ClusterConfig {
            key_file: Some(dir.path().join("cluster.key")),
            ..cluster.clone()
        };
        assert_eq!(from_file.key_bytes().unwrap(), key.as_bytes());
        let missing = ClusterConfig {
            key_file: Some(dir.path().join("nowhere.key")),
            ..cluster
        };
        assert!(matches!(
            missing.key_bytes(),
            Err(ClusterError::KeyFile { .. })
        ));
    }
}
