//! What this host knows of the other hosts' shares of the catalog.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{FORGET, MISSED, Published, SKEW};
use crate::call::{CallError, ErrorCode};
use crate::cluster::seal;
use crate::dispatch::Operation;

/// Another host's share, as this host knows it.
struct Share {
    /// When this host read it.
    read: Instant,
    /// Whether it is listed: written lately, by a host not leaving.
    listed: bool,
    /// Its operations, by owner.
    ops: Vec<(Option<String>, Arc<Operation>)>,
    /// What it lists, hashed: a share written again unchanged changes
    /// nothing listed.
    digest: u64,
}

/// The other hosts' shares.
pub(in crate::cluster) struct Catalog {
    shares: RwLock<BTreeMap<String, Share>>,
    /// A share not read again within this is no longer listed.
    stale: Duration,
}

impl Catalog {
    /// A catalog whose hosts write their shares every `refresh`.
    pub(in crate::cluster) fn new(refresh: Duration) -> Self {
        Self {
            shares: RwLock::default(),
            stale: refresh * MISSED,
        }
    }

    /// What other hosts list for `tenant`, sorted by name, each name once
    /// (from the first host by name that lists it).
    pub(in crate::cluster) fn listed(&self, tenant: &str) -> Vec<Arc<Operation>> {
        let shares = self.shares.read().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let mut listed: Vec<Arc<Operation>> = shares
            .values()
            .filter(|share| share.listed && share.read.elapsed() < self.stale)
            .flat_map(|share| share.ops.iter())
            .filter(|(owner, _)| owner.as_deref().is_none_or(|owner| owner == tenant))
            .filter(|(_, op)| seen.insert(op.spec.name.clone()))
            .map(|(_, op)| op.clone())
            .collect();
        listed.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        listed
    }

    /// What a forwarded call that no host answered gets: `UNAVAILABLE` when
    /// a host held `name` for `tenant` lately (it is gone, or unreachable),
    /// `NOT_FOUND` otherwise.
    pub(in crate::cluster) fn unanswered(&self, tenant: &str, name: &str) -> CallError {
        let shares = self.shares.read().unwrap_or_else(|e| e.into_inner());
        let held = shares
            .values()
            .flat_map(|share| share.ops.iter())
            .any(|(owner, op)| {
                owner.as_deref().is_none_or(|owner| owner == tenant) && op.spec.name == name
            });
        if held {
            CallError::new(
                ErrorCode::Unavailable,
                format!("the hosts that hold `{name}` are unreachable; try again later"),
            )
        } else {
            CallError::not_found(name)
        }
    }

    /// Takes in `host`'s share, whose operations hash to `digest`; whether
    /// what is listed changed. A share written longer ago than a host's
    /// clock may be off plus three missed refreshes (one read from the
    /// bucket's history) is kept, not listed.
    pub(super) fn take(
        &self,
        host: String,
        published: &Published,
        digest: u64,
        ops: Vec<(Option<String>, Arc<Operation>)>,
    ) -> bool {
        let listed = self.listable(published);
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        let changed = shares
            .get(&host)
            .map_or(listed, |old| self.changes(old, digest, listed));
        shares.insert(
            host,
            Share {
                read: Instant::now(),
                listed,
                ops,
                digest,
            },
        );
        changed
    }

    /// Takes in `host`'s share written again with the operations it had
    /// (hashing to `digest`), with no need to compile them again: whether
    /// what is listed changed; `None` when they are not the ones known.
    pub(super) fn renew(&self, host: &str, published: &Published, digest: u64) -> Option<bool> {
        let listed = self.listable(published);
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        let share = shares
            .get_mut(host)
            .filter(|share| share.digest == digest)?;
        let changed = self.changes(share, digest, listed);
        share.read = Instant::now();
        share.listed = listed;
        Some(changed)
    }

    /// Whether `published` is to be listed: not leaving, and written lately.
    fn listable(&self, published: &Published) -> bool {
        let age = Duration::from_millis(seal::now_ms().saturating_sub(published.at_ms));
        !published.leaving && age < self.stale + SKEW
    }

    /// Whether `old`, read again as `digest` and `listed`, changes what is
    /// listed.
    fn changes(&self, old: &Share, digest: u64, listed: bool) -> bool {
        old.digest != digest || old.listed != listed || old.read.elapsed() >= self.stale
    }

    /// Forgets `host`'s share; whether it was listed.
    pub(super) fn forget(&self, host: &str) -> bool {
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        shares.remove(host).is_some_and(|share| share.listed)
    }

    /// Stops listing the shares not read again in time, and forgets those
    /// past [`FORGET`]; whether what is listed changed.
    pub(super) fn sweep(&self) -> bool {
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        shares.retain(|_, share| share.read.elapsed() < FORGET);
        let mut changed = false;
        for share in shares.values_mut() {
            if share.listed && share.read.elapsed() >= self.stale {
                share.listed = false;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::call::OperationSpec;
    use crate::call::{AccessControl, OpType, Visibility};
    use crate::dispatch::Handler;

    fn spec(name: &str) -> OperationSpec {
        OperationSpec {
            name: name.into(),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: String::new(),
            input_schema: json!({}),
            output_schema: json!({}),
            access_control: AccessControl::default(),
        }
    }

    /// `host`'s share, written `age` ago: `names` by owner.
    fn take(catalog: &Catalog, host: &str, age: Duration, names: &[(Option<&str>, &str)]) -> bool {
        let published = Published {
            host: host.into(),
            at_ms: seal::now_ms() - u64::try_from(age.as_millis()).unwrap(),
            leaving: false,
            owners: Vec::new(),
        };
        let ops = names
            .iter()
            .map(|(owner, name)| {
                let op = Operation::compile(spec(name), Handler::Elsewhere).unwrap();
                (owner.map(str::to_owned), Arc::new(op))
            })
            .collect();
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            names.hash(&mut hasher);
            hasher.finish()
        };
        catalog
            .renew(host, &published, digest)
            .unwrap_or_else(|| catalog.take(host.into(), &published, digest, ops))
    }

    fn names(ops: &[Arc<Operation>]) -> Vec<&str> {
        ops.iter().map(|op| op.spec.name.as_str()).collect()
    }

    #[test]
    fn each_tenant_sees_the_shared_operations_and_its_own_each_once() {
        let catalog = Catalog::new(Duration::from_secs(5));
        let now = Duration::ZERO;
        assert!(take(
            &catalog,
            "b",
            now,
            &[(None, "echo/echo"), (Some("acme"), "notes/add")]
        ));
        assert!(take(
            &catalog,
            "a",
            now,
            &[(None, "echo/echo"), (Some("other"), "vault/get")]
        ));
        assert_eq!(names(&catalog.listed("acme")), ["echo/echo", "notes/add"]);
        assert_eq!(names(&catalog.listed("other")), ["echo/echo", "vault/get"]);
        assert_eq!(names(&catalog.listed("third")), ["echo/echo"]);
        // The same share written again changes nothing listed.
        assert!(!take(
            &catalog,
            "a",
            now,
            &[(None, "echo/echo"), (Some("other"), "vault/get")]
        ));
    }

    #[test]
    fn a_gone_host_is_no_longer_listed_but_its_names_are_unavailable_not_unknown() {
        let catalog = Catalog::new(Duration::from_millis(10));
        take(
            &catalog,
            "a",
            Duration::ZERO,
            &[(Some("acme"), "notes/add")],
        );
        // Read from the bucket's history, written long ago: kept, not listed.
        take(
            &catalog,
            "old",
            Duration::from_secs(600),
            &[(None, "gone/op")],
        );
        assert_eq!(names(&catalog.listed("acme")), ["notes/add"]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            catalog.sweep(),
            "a share not written again in time is dropped"
        );
        assert!(catalog.listed("acme").is_empty());
        // Another tenant's operation is as unknown as a name nobody held.
        for (tenant, name, code) in [
            ("acme", "notes/add", ErrorCode::Unavailable),
            ("acme", "gone/op", ErrorCode::Unavailable),
            ("other", "notes/add", ErrorCode::NotFound),
            ("acme", "nosuch/op", ErrorCode::NotFound),
        ] {
            assert_eq!(
                catalog.unanswered(tenant, name).code,
                code,
                "{tenant}: {name}"
            );
        }
        // A share deleted from the bucket is forgotten.
        assert!(!catalog.forget("a"), "it was no longer listed");
        assert_eq!(
            catalog.unanswered("acme", "notes/add").code,
            ErrorCode::NotFound
        );
    }
}
