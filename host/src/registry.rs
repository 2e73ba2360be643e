//! Every operation the host can run, native or plugin, under one name space.
//!
//! A plugin's operations are registered and removed as a unit: a caller sees
//! all of a plugin's operations or none of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dispatch::CallContext;
use crate::error::CallError;
use crate::runtime::Plugin;

/// What kind of operation this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// No side effects; one input, one output.
    Query,
    /// May change state; one input, one output.
    Mutation,
    /// One input, a stream of outputs.
    Subscription,
}

impl OpType {
    /// Whether the operation answers once (query, mutation) rather than with
    /// a stream.
    pub fn is_once(self) -> bool {
        !matches!(self, Self::Subscription)
    }
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Callable from the wire.
    External,
    /// Callable only from other operations.
    Internal,
}

/// The scopes a caller needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessControl {
    /// The caller must hold all of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// The caller must hold at least one of these, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes_any: Vec<String>,
}

/// An operation's public description (PROTOCOL.md, "Operations").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationSpec {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation or subscription.
    pub op_type: OpType,
    /// External or internal.
    pub visibility: Visibility,
    /// One line for humans.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// JSON Schema of the output (of each item, for subscriptions).
    pub output_schema: Value,
    /// Required scopes.
    pub access_control: AccessControl,
}

/// A once-operation implemented in the host.
pub type NativeOnce =
    Arc<dyn Fn(CallContext, Value) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync>;

/// A subscription implemented in the host.
pub type NativeStream = Arc<
    dyn Fn(
            CallContext,
            Value,
        )
            -> BoxFuture<'static, Result<BoxStream<'static, Result<Value, CallError>>, CallError>>
        + Send
        + Sync,
>;

/// What runs when an operation is called.
#[derive(Clone)]
pub enum Handler {
    /// A host function answering once.
    NativeOnce(NativeOnce),
    /// A host function answering with a stream.
    NativeStream(NativeStream),
    /// An operation of a loaded plugin, by its name inside the plugin.
    Plugin {
        /// The plugin.
        plugin: Arc<Plugin>,
        /// The operation's name inside the plugin.
        op: String,
    },
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NativeOnce(_) => f.write_str("NativeOnce"),
            Self::NativeStream(_) => f.write_str("NativeStream"),
            Self::Plugin { plugin, op } => write!(f, "Plugin({}/{op})", plugin.name()),
        }
    }
}

/// A registered operation: its spec, its input validator and its handler.
pub struct Operation {
    /// The public description.
    pub spec: OperationSpec,
    /// The compiled input schema.
    pub input: jsonschema::Validator,
    /// What runs.
    pub handler: Handler,
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("spec", &self.spec)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl Operation {
    /// Compiles `spec.input_schema`.
    pub fn new(spec: OperationSpec, handler: Handler) -> Result<Self, RegistryError> {
        let input = jsonschema::validator_for(&spec.input_schema).map_err(|e| {
            RegistryError::InvalidSchema {
                operation: spec.name.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            spec,
            input,
            handler,
        })
    }
}

/// Why the registry refused a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A name is taken.
    #[error("operation `{0}` is already registered")]
    Duplicate(String),
    /// A namespace is taken by another plugin or by the host.
    #[error("namespace `{0}` is already in use")]
    NamespaceTaken(String),
    /// A name does not have the `namespace/op` form.
    #[error("`{0}` is not a valid operation name (`namespace/op`, segments of [a-z0-9_-])")]
    InvalidName(String),
    /// A schema does not compile.
    #[error("the input schema of `{operation}` does not compile: {reason}")]
    InvalidSchema {
        /// The operation.
        operation: String,
        /// The compiler's message.
        reason: String,
    },
}

/// Whether `segment` is a valid name segment: `[a-z0-9_-]+`.
pub fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `name` is `namespace/op` with valid segments.
pub fn is_valid_name(name: &str) -> bool {
    matches!(name.split_once('/'), Some((ns, op)) if is_valid_segment(ns) && is_valid_segment(op))
}

/// Whose a plugin (and so its namespace) is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Seen by every tenant: the host's own services, the bundled examples,
    /// plugins loaded without a tenant.
    Shared,
    /// Seen only by this tenant.
    Tenant(String),
}

impl Owner {
    /// Whether `tenant` sees what this owner has.
    pub fn visible_to(&self, tenant: &str) -> bool {
        match self {
            Self::Shared => true,
            Self::Tenant(owner) => owner == tenant,
        }
    }
}

/// One namespace of one owner.
#[derive(Debug)]
struct Namespace {
    owner: Owner,
    ops: HashMap<String, Arc<Operation>>,
}

/// The operations the host knows, grouped by namespace.
///
/// A namespace is either shared, or held by tenants: two tenants may each
/// have a plugin called `notes`, but then no shared plugin may be called
/// `notes`, so that a name means one operation in every tenant's view.
#[derive(Debug, Default)]
pub struct Registry {
    namespaces: RwLock<BTreeMap<String, Vec<Namespace>>>,
    /// Bumped by every change, so views built from the registry know when
    /// they are stale.
    generation: AtomicU64,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers all operations of one namespace of `owner` at once. Fails,
    /// registering nothing, if the namespace is taken in a view it would be
    /// part of, or a name is invalid or repeated.
    pub fn insert_namespace(
        &self,
        owner: &Owner,
        namespace: &str,
        ops: Vec<Operation>,
    ) -> Result<(), RegistryError> {
        let mut table = HashMap::with_capacity(ops.len());
        for op in ops {
            let name = op.spec.name.clone();
            if !is_valid_name(&name) || name.split_once('/').map(|(ns, _)| ns) != Some(namespace) {
                return Err(RegistryError::InvalidName(name));
            }
            if table.insert(name.clone(), Arc::new(op)).is_some() {
                return Err(RegistryError::Duplicate(name));
            }
        }
        let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        let holders = namespaces.entry(namespace.to_owned()).or_default();
        let clash = holders.iter().any(|held| match owner {
            Owner::Shared => true,
            Owner::Tenant(_) => held.owner == Owner::Shared || held.owner == *owner,
        });
        if clash {
            return Err(RegistryError::NamespaceTaken(namespace.to_owned()));
        }
        holders.push(Namespace {
            owner: owner.clone(),
            ops: table,
        });
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A number that changes whenever the registry does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Removes a namespace of `owner` and all its operations. Calls already
    /// running keep their handler until they end.
    pub fn remove_namespace(&self, owner: &Owner, namespace: &str) -> bool {
        let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        let Some(holders) = namespaces.get_mut(namespace) else {
            return false;
        };
        let before = holders.len();
        holders.retain(|held| held.owner != *owner);
        let removed = holders.len() < before;
        if holders.is_empty() {
            namespaces.remove(namespace);
        }
        self.generation.fetch_add(1, Ordering::Release);
        removed
    }

    /// Looks an operation up by its full name in `tenant`'s view.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Operation>> {
        let (namespace, _) = name.split_once('/')?;
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        namespaces
            .get(namespace)?
            .iter()
            .find(|held| held.owner.visible_to(tenant))?
            .ops
            .get(name)
            .cloned()
    }

    /// Every operation of every owner, in no particular order.
    pub fn all_owners(&self) -> Vec<Arc<Operation>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        namespaces
            .values()
            .flatten()
            .flat_map(|held| held.ops.values().cloned())
            .collect()
    }

    /// Every operation in `tenant`'s view, sorted by name.
    pub fn all(&self, tenant: &str) -> Vec<Arc<Operation>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let mut ops: Vec<_> = namespaces
            .values()
            .flatten()
            .filter(|held| held.owner.visible_to(tenant))
            .flat_map(|held| held.ops.values().cloned())
            .collect();
        ops.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        ops
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn op(name: &str) -> Operation {
        let handler: NativeOnce =
            Arc::new(|_, input| Box::pin(async move { Ok::<_, CallError>(input) }));
        Operation::new(
            OperationSpec {
                name: name.into(),
                op_type: OpType::Query,
                visibility: Visibility::External,
                description: String::new(),
                input_schema: json!(true),
                output_schema: json!(true),
                access_control: AccessControl::default(),
            },
            Handler::NativeOnce(handler),
        )
        .unwrap()
    }

    fn tenant(id: &str) -> Owner {
        Owner::Tenant(id.into())
    }

    #[test]
    fn tenants_see_their_own_namespaces_and_the_shared_ones() {
        let registry = Registry::new();
        registry
            .insert_namespace(&Owner::Shared, "echo", vec![op("echo/echo")])
            .unwrap();
        registry
            .insert_namespace(&tenant("a"), "notes", vec![op("notes/list")])
            .unwrap();
        registry
            .insert_namespace(&tenant("b"), "notes", vec![op("notes/list")])
            .unwrap();
        let names = |t: &str| -> Vec<String> {
            registry
                .all(t)
                .iter()
                .map(|op| op.spec.name.clone())
                .collect()
        };
        assert_eq!(names("a"), ["echo/echo", "notes/list"]);
        assert_eq!(names("c"), ["echo/echo"]);
        assert!(registry.get("c", "notes/list").is_none());
        let (a, b) = (
            registry.get("a", "notes/list").unwrap(),
            registry.get("b", "notes/list").unwrap(),
        );
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(registry.remove_namespace(&tenant("a"), "notes"));
        assert!(registry.get("a", "notes/list").is_none());
        assert!(registry.get("b", "notes/list").is_some());
    }

    #[test]
    fn a_name_means_one_operation_in_every_view() {
        let registry = Registry::new();
        registry
            .insert_namespace(&tenant("a"), "notes", vec![op("notes/list")])
            .unwrap();
        for (owner, ns) in [(Owner::Shared, "notes"), (tenant("a"), "notes")] {
            let refused = registry.insert_namespace(&owner, ns, vec![op("notes/list")]);
            assert!(matches!(refused, Err(RegistryError::NamespaceTaken(_))));
        }
        registry
            .insert_namespace(&Owner::Shared, "echo", vec![op("echo/echo")])
            .unwrap();
        let refused = registry.insert_namespace(&tenant("b"), "echo", vec![op("echo/echo")]);
        assert!(matches!(refused, Err(RegistryError::NamespaceTaken(_))));
    }
}
