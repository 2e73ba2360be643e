//! Every operation the host can run, native or plugin, under one name space.
//!
//! A plugin's operations are registered and removed as a unit: a caller sees
//! all of a plugin's operations or none of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use crate::call::{OperationSpec, is_valid_name};

/// A registered operation: its spec, its compiled input schema and what
/// runs it. The registry does not look into `H`; the dispatcher does.
pub struct Operation<H> {
    /// The public description.
    pub spec: OperationSpec,
    /// The compiled input schema, compiled once where the spec was made.
    pub input: Arc<jsonschema::Validator>,
    /// What runs.
    pub handler: H,
}

impl<H: fmt::Debug> fmt::Debug for Operation<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("spec", &self.spec)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl<H> Operation<H> {
    /// An operation whose input schema is already compiled.
    pub fn new(spec: OperationSpec, input: Arc<jsonschema::Validator>, handler: H) -> Self {
        Self {
            spec,
            input,
            handler,
        }
    }

    /// An operation, compiling `spec.input_schema`.
    pub fn compile(spec: OperationSpec, handler: H) -> Result<Self, RegistryError> {
        let input = compile(&spec.input_schema).map_err(|reason| RegistryError::InvalidSchema {
            operation: spec.name.clone(),
            reason,
        })?;
        Ok(Self::new(spec, Arc::new(input), handler))
    }
}

/// Compiles a JSON Schema; why not.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
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
    /// A namespace to replace is not held by that owner.
    #[error("namespace `{0}` is not installed")]
    NotHeld(String),
    /// A schema does not compile.
    #[error("the input schema of `{operation}` does not compile: {reason}")]
    InvalidSchema {
        /// The operation.
        operation: String,
        /// The compiler's message.
        reason: String,
    },
}

/// `ops` by name, each checked to be `namespace/op` and named once.
fn table<H>(
    namespace: &str,
    ops: Vec<Operation<H>>,
) -> Result<HashMap<String, Arc<Operation<H>>>, RegistryError> {
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
    Ok(table)
}

/// Whether `owner` may take `namespace`: not if that would make one name
/// mean two operations in some tenant's view.
fn free<H>(
    namespaces: &BTreeMap<String, Vec<Namespace<H>>>,
    owner: &Owner,
    namespace: &str,
) -> Result<(), RegistryError> {
    let clash = namespaces.get(namespace).is_some_and(|holders| {
        holders.iter().any(|held| match owner {
            Owner::Shared => true,
            Owner::Tenant(_) => held.owner == Owner::Shared || held.owner == *owner,
        })
    });
    if clash {
        return Err(RegistryError::NamespaceTaken(namespace.to_owned()));
    }
    Ok(())
}

/// Whose a plugin (and so its namespace) is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
struct Namespace<H> {
    owner: Owner,
    ops: HashMap<String, Arc<Operation<H>>>,
}

/// The operations the host knows, grouped by namespace.
///
/// A namespace is either shared, or held by tenants: two tenants may each
/// have a plugin called `notes`, but then no shared plugin may be called
/// `notes`, so that a name means one operation in every tenant's view.
#[derive(Debug)]
pub struct Registry<H> {
    namespaces: RwLock<BTreeMap<String, Vec<Namespace<H>>>>,
    /// Bumped by every change, so views built from the registry know when
    /// they are stale, and watchers are woken.
    generation: watch::Sender<u64>,
}

impl<H> Default for Registry<H> {
    fn default() -> Self {
        Self {
            namespaces: RwLock::default(),
            generation: watch::Sender::new(0),
        }
    }
}

impl<H> Registry<H> {
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
        ops: Vec<Operation<H>>,
    ) -> Result<(), RegistryError> {
        let table = table(namespace, ops)?;
        let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        free(&namespaces, owner, namespace)?;
        namespaces
            .entry(namespace.to_owned())
            .or_default()
            .push(Namespace {
                owner: owner.clone(),
                ops: table,
            });
        self.generation.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Whether `owner` could insert `namespace` now; why not.
    pub fn check_free(&self, owner: &Owner, namespace: &str) -> Result<(), RegistryError> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        free(&namespaces, owner, namespace)
    }

    /// Swaps the operations of `owner`'s `namespace` for `ops`, all at once:
    /// a lookup sees either the old operations or the new ones, never
    /// neither. Calls already running keep the handler they found. Fails,
    /// changing nothing, when `owner` does not hold `namespace`.
    pub fn replace_namespace(
        &self,
        owner: &Owner,
        namespace: &str,
        ops: Vec<Operation<H>>,
    ) -> Result<(), RegistryError> {
        let table = table(namespace, ops)?;
        let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        let held = namespaces
            .get_mut(namespace)
            .and_then(|holders| holders.iter_mut().find(|held| held.owner == *owner))
            .ok_or_else(|| RegistryError::NotHeld(namespace.to_owned()))?;
        held.ops = table;
        self.generation.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// A number that changes whenever the registry does.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes on every change from now on (the value is the generation).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
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
        self.generation.send_modify(|generation| *generation += 1);
        removed
    }

    /// Looks an operation up by its full name in `tenant`'s view.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Operation<H>>> {
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
    pub fn all_owners(&self) -> Vec<Arc<Operation<H>>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        namespaces
            .values()
            .flatten()
            .flat_map(|held| held.ops.values().cloned())
            .collect()
    }

    /// Every operation with its owner, sorted by owner (shared first),
    /// then by name.
    pub fn by_owner(&self) -> Vec<(Owner, Arc<Operation<H>>)> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let mut ops: Vec<_> = namespaces
            .values()
            .flatten()
            .flat_map(|held| held.ops.values().map(|op| (held.owner.clone(), op.clone())))
            .collect();
        ops.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.spec.name.cmp(&y.spec.name)));
        ops
    }

    /// Wakes the registry's watchers as a change does, when what is listed
    /// beside its operations changed (those other hosts of a cluster hold).
    pub fn touch(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Every operation in `tenant`'s view, sorted by name.
    pub fn all(&self, tenant: &str) -> Vec<Arc<Operation<H>>> {
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

    use crate::call::{AccessControl, OpType, Visibility};

    /// The registry does not care what a handler is.
    fn op(name: &str) -> Operation<()> {
        Operation::compile(
            OperationSpec {
                name: name.into(),
                op_type: OpType::Query,
                visibility: Visibility::External,
                description: String::new(),
                input_schema: json!(true),
                output_schema: json!(true),
                access_control: AccessControl::default(),
            },
            (),
        )
        .unwrap()
    }

    fn tenant(id: &str) -> Owner {
        Owner::Tenant(id.into())
    }

    #[test]
    fn tenants_see_their_own_namespaces_and_the_shared_ones() {
        let registry = Registry::<()>::new();
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
        let registry = Registry::<()>::new();
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
