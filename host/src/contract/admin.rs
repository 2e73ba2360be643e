//! The `admin/*` operations' contracts: what an install, a replace and
//! the other plugin operations take, and what they answer.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Name;
use crate::call::OpType;
use crate::capabilities::{GrantSummary, Grants};
use crate::runtime::{PluginLimits, PluginLimitsConfig, ReuseConfig};

/// A plugin's settings, as an install or replace gives them: the `limits`,
/// `grants` and `reuse` of a `[[plugins]]` entry, and where in a cluster
/// it runs.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// As in a `[[plugins]]` entry; a tenant's are held to its allowance.
    pub limits: PluginLimitsConfig,
    /// As in a `[[plugins]]` entry; a tenant's are held to its allowance.
    pub grants: Grants,
    /// Instance reuse, as in a `[[plugins]]` entry: the operator's only
    /// (idle instances hold pool slots and memory beyond the calls that
    /// made them).
    pub reuse: Option<ReuseConfig>,
    /// In a cluster, the labels a host must have (each with this value) to
    /// hold the plugin (`[cluster] labels`). Empty: every host.
    pub placement: BTreeMap<String, String>,
}

/// The `opbox-plugin` header of an upload: the plugin's settings and, on
/// an install, its name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    /// The namespace to install under (install only; a replace keeps the
    /// plugin's name); the plugin's own when absent.
    pub name: Option<Name>,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// `admin/install`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// The namespace to install under; the plugin's own when absent.
    pub name: Option<Name>,
    /// The owning tenant (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The component, where it is not uploaded.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub wasm_base64: Option<String>,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// `admin/replace`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The new component, where it is not uploaded.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub wasm_base64: Option<String>,
    /// Skip the compatibility gate.
    #[serde(default)]
    pub force: bool,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// The input of `admin/show` and `admin/remove`: one plugin.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Named {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
}

/// `admin/list`'s input; `null` too.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct Listing {
    /// Whose plugins (the operator's choice); for the operator naming none,
    /// every plugin.
    pub tenant: Option<Name>,
}

/// `admin/logs`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The last line the reader has.
    #[serde(default)]
    pub after: u64,
    /// Lines to answer at most.
    #[schemars(range(min = 1))]
    pub limit: Option<u64>,
}

/// A plugin, as the `admin/*` operations answer it: never a secret value
/// or a host path.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginDetail {
    /// `retired` once replaced or removed, while calls still hold it.
    pub state: PluginState,
    /// Its namespace.
    pub name: String,
    /// Its tenant; `null`: shared.
    pub tenant: Option<String>,
    /// Declared by the configuration (`config`) or installed (`api`).
    pub source: PluginSource,
    /// The version it declares.
    pub version: String,
    /// The SHA-256 of its component, in hex.
    pub digest: String,
    /// Its operations.
    pub operations: Vec<OperationBrief>,
    /// Its limits, as in force.
    pub limits: PluginLimits,
    /// What it is granted, without values or paths.
    pub grants: GrantSummary,
    /// Instance reuse, when on.
    pub reuse: Option<ReuseConfig>,
    /// Instances alive now.
    pub live_instances: u32,
    /// Subscriptions open now.
    pub open_subscriptions: u32,
    /// Calls this version took.
    pub calls: u64,
    /// How many of them failed.
    pub failures: u64,
}

/// Whether a plugin version serves new calls.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// It serves.
    Active,
    /// Replaced or removed; its running calls finish.
    Retired,
}

/// Where a plugin comes from.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginSource {
    /// The configuration file (or the bundled examples): fixed for the API.
    Config,
    /// The admin API.
    Api,
}

/// One operation of a plugin, in brief.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OperationBrief {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation or subscription.
    pub op_type: OpType,
}

/// `admin/list`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginList {
    /// The plugins the caller sees.
    pub plugins: Vec<PluginDetail>,
}

/// `admin/remove`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    /// The plugin removed.
    pub removed: String,
}

/// `admin/logs`' answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogLines {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// The `after` to read the next lines with.
    pub next: u64,
}

/// One line a plugin's guest logged.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogLine {
    /// Its place in the plugin's tail.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The call that logged it.
    pub request_id: String,
    /// Its level.
    pub level: String,
    /// `stdout` or `stderr` for a line the plugin printed; absent for one
    /// it logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// What it says.
    pub message: String,
    /// The calling tenant: for the operator only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}
