//! Why a change to the plugins was refused, and what its caller is told.

use serde_json::json;

use super::{Break, Refusal};
use crate::call::{CallError, ErrorCode};
use crate::registry::RegistryError;
use crate::runtime::LoadError;
use crate::store::StoreError;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The settings are not valid.
    #[error("invalid plugin settings: {0}")]
    Settings(String),
    /// The component could not be loaded: it does not compile, link,
    /// describe itself, or fit its limits and grants.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The name is taken, or not held.
    #[error(transparent)]
    Register(#[from] RegistryError),
    /// No such plugin in the caller's view.
    #[error("no plugin named `{0}` is installed")]
    NotFound(String),
    /// The plugin is declared in the configuration file.
    #[error("plugin `{0}` is declared in the host's configuration; the API may not change it")]
    Fixed(String),
    /// The named tenant does not exist.
    #[error("there is no tenant `{0}`")]
    UnknownTenant(String),
    /// The new version breaks callers of the old one; a forced replace
    /// skips this check.
    #[error("the new version breaks {} use(s) of the old one; replace with `force` to install it anyway", .0.len())]
    Incompatible(Vec<Break>),
    /// A tenant's caller asked for more than its tenant's allowance.
    #[error(transparent)]
    Forbidden(#[from] Refusal),
    /// The plugin's placement leaves this host out (its labels do not
    /// match): the change must be made through a host it places.
    #[error(
        "this host's labels do not match the plugin's placement {0}: make the change through a host whose `[cluster] labels` do"
    )]
    NotPlaced(String),
    /// Another host's component could not be fetched, or was not what its
    /// record says.
    #[error("cannot fetch the component: {0}")]
    Unfetched(String),
    /// The store failed; the cause is logged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `NOT_FOUND` for a plugin name, worded the same whether no plugin has
/// the name or the caller may not see it.
pub(crate) fn no_plugin(name: &str) -> CallError {
    CallError::new(ErrorCode::NotFound, format!("no plugin named `{name}`"))
}

impl From<PluginError> for CallError {
    fn from(error: PluginError) -> Self {
        match &error {
            PluginError::Settings(_) | PluginError::UnknownTenant(_) => {
                CallError::invalid_input(error.to_string())
            }
            PluginError::Load(load) => CallError::invalid_input(error.to_string())
                .with_details(json!({ "cause": load_cause(load) })),
            PluginError::Register(RegistryError::NotHeld(name)) | PluginError::NotFound(name) => {
                no_plugin(name)
            }
            PluginError::Register(_) => CallError::new(ErrorCode::Conflict, error.to_string()),
            PluginError::Fixed(_) => CallError::new(ErrorCode::Forbidden, error.to_string()),
            PluginError::NotPlaced(_) => CallError::new(ErrorCode::Conflict, error.to_string()),
            PluginError::Forbidden(refusal) => {
                CallError::new(ErrorCode::Forbidden, error.to_string())
                    .with_details(json!({ "rule": refusal.rule }))
            }
            PluginError::Incompatible(breaks) => {
                let breaks: Vec<_> = breaks.iter().map(Break::to_json).collect();
                CallError::new(ErrorCode::Conflict, error.to_string())
                    .with_details(json!({ "breaks": breaks }))
            }
            PluginError::Unfetched(_) => CallError::new(ErrorCode::Unavailable, error.to_string()),
            PluginError::Store(cause) => {
                tracing::error!("{cause}");
                CallError::internal()
            }
        }
    }
}

/// Which step refused a component, for callers to act on.
fn load_cause(error: &LoadError) -> &'static str {
    match error {
        LoadError::Compile(_) => "compile",
        LoadError::Link(_) => "link",
        LoadError::Describe(_) => "describe",
        LoadError::Manifest(_) => "manifest",
        LoadError::Grant(_) => "grant",
        LoadError::TooLarge(_) => "compile_limit",
        _ => "engine",
    }
}
