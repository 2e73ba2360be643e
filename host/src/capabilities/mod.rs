//! What plugins import from the host, one module per capability.
//!
//! Each capability owns everything about itself: its grant (its part of
//! `[plugins.grants]`), the check of that grant, its per-call state, its
//! host implementation and its `add_to_linker`, and any store behind it
//! (the keyvalue database lives in [`keyvalue`]). Host implementations are
//! written against the capability's own state (or a view of it with the
//! resource table), never against the runtime's store type: a store offers
//! capabilities by implementing [`View`].
//!
//! | module | interfaces | granted by |
//! |---|---|---|
//! | [`files`] | WASI preview 2: cli, clocks, filesystem, io, random | always; a filesystem only with `directory` |
//! | `log` | `opbox:plugin/log`, `opbox:plugin/types` | always |
//! | [`invoke`] | `opbox:plugin/invoke` | always, as the caller |
//! | [`config`] | `wasi:config/store` | `config`, `secrets` |
//! | [`keyvalue`] | `wasi:keyvalue` store, atomics, batch | `keyvalue` |
//! | [`http`] | `wasi:http/outgoing-handler`, `opbox:plugin/outbound` | `allowed_outbound_hosts` |
//!
//! Adding a capability touches its own module, [`Grants`], [`CallState`]
//! and the list in [`add_to_linker`]: nothing outside this folder. This
//! folder and `runtime` are the only places that know wasmtime.

pub(crate) mod bindings;
mod blocking;
pub(crate) mod chunks;
pub mod config;
mod denied;
pub mod files;
mod grants;
pub mod http;
pub mod invoke;
pub mod keyvalue;
mod log;
pub mod log_tail;

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};

use crate::call::{Meter, SharedObserver};
use crate::telemetry::trace::CallSpan;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::StdoutStream;
use wasmtime_wasi_http::WasiHttpView;

pub use grants::{GrantSummary, Grants, KeyvalueSummary, OutboundDefaults};

use config::ConfigState;
use denied::Denial;
use http::{HttpState, OutboundGrant};
use invoke::{InvokeState, NestedCalls};
use keyvalue::{Keyspace, KeyvalueState};
use log::LogState;
use log_tail::LogTail;

/// What a store must offer for capabilities to be linked into it: the
/// state of its call's capabilities and the table their resources live
/// in. (wasmtime-wasi and wasmtime-wasi-http ask for their own views,
/// `WasiView` and `WasiHttpView`, which `files::view` and `http::view`
/// build from the same parts.)
pub trait View: WasiHttpView + wasmtime_wasi::WasiView + Send + 'static {
    /// The call's capability state and its resource table.
    fn capabilities(&mut self) -> (&mut CallState, &mut ResourceTable);
}

/// Links every capability into `linker`: the one list.
pub fn add_to_linker<T: View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    files::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    invoke::add_to_linker(linker)?;
    blocking::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    keyvalue::add_to_linker(linker)?;
    http::add_to_linker(linker)
}

/// Whether a plugin's grants can be honoured, checked when it loads; why
/// not. The outbound policy they describe, ready for every call.
pub fn check(grants: &Grants) -> Result<OutboundGrant, String> {
    files::check(grants.directory.as_ref())?;
    grants.outbound()
}

/// Who and what one call is, as the capabilities need it.
#[derive(Debug)]
pub struct Call<'a> {
    /// The plugin's namespace.
    pub plugin: &'a Arc<str>,
    /// The call's request id.
    pub request_id: &'a Arc<str>,
    /// The tenant the call runs for.
    pub tenant: &'a str,
    /// What the operator granted the plugin.
    pub grants: &'a Arc<Grants>,
    /// The plugin's outbound policy, shared by its calls.
    pub outbound: &'a OutboundGrant,
    /// The host's key spaces, when it has them.
    pub kv: Option<Arc<dyn Keyspace>>,
    /// Who carries out the call's calls to other operations.
    pub nested: Option<Arc<dyn NestedCalls>>,
    /// What the call spends: host calls are counted here.
    pub meter: &'a Arc<Meter>,
    /// The call's span, whose events the guest's log lines are.
    pub span: &'a CallSpan,
    /// Log lines the call may write.
    pub log_lines: u32,
    /// Where denied capabilities are reported.
    pub observer: &'a SharedObserver,
    /// The plugin version's log tail.
    pub log_tail: &'a Arc<LogTail>,
}

/// The state of every capability for one call.
pub struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) log: LogState,
    invoke: InvokeState,
    config: ConfigState,
    keyvalue: KeyvalueState,
    pub(crate) http: HttpState,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("log", &self.log)
            .field("keyvalue", &self.keyvalue)
            .finish_non_exhaustive()
    }
}

impl CallState {
    /// The capabilities of `call`, its guest's output going to `stdout`
    /// and `stderr`.
    pub fn new(
        call: Call<'_>,
        stdout: impl StdoutStream + 'static,
        stderr: impl StdoutStream + 'static,
    ) -> Self {
        let wasi = files::context(call.plugin, call.grants.directory.as_ref(), stdout, stderr);
        let (log, invoke, config, keyvalue, http) = Self::per_call(call);
        Self {
            wasi,
            log,
            invoke,
            config,
            keyvalue,
            http,
        }
    }

    /// Makes these the capabilities of `call`, the next call of the same
    /// plugin for the same tenant in a reused instance. The WASI context
    /// stays: it is the instance's (its grants are the plugin's and the
    /// tenant's, and what the guest opened through it stays open), and
    /// building it anew (a random generator seeded, a granted directory
    /// opened) was most of what this cost.
    pub fn rebind(&mut self, call: Call<'_>) {
        (self.log, self.invoke, self.config, self.keyvalue, self.http) = Self::per_call(call);
    }

    /// What belongs to one call: who it is for, what it may write and
    /// whom it charges.
    fn per_call(call: Call<'_>) -> (LogState, InvokeState, ConfigState, KeyvalueState, HttpState) {
        // One allocation of the tenant's name, shared by every capability.
        let tenant: Arc<str> = Arc::from(call.tenant);
        let denial = |capability| {
            Denial::new(
                call.observer.clone(),
                capability,
                call.plugin.clone(),
                tenant.clone(),
            )
        };
        (
            LogState::new(
                call.plugin.clone(),
                call.log_tail.clone(),
                call.request_id.clone(),
                tenant.clone(),
                call.span.clone(),
                call.log_lines,
            ),
            InvokeState::new(call.nested),
            ConfigState::new(call.grants.clone(), denial("config")),
            KeyvalueState::new(
                call.grants.keyvalue,
                call.kv,
                tenant.clone(),
                call.plugin.clone(),
                denial("keyvalue"),
                call.meter.clone(),
            ),
            HttpState::new(
                call.outbound.clone(),
                call.plugin.clone(),
                tenant.clone(),
                denial("http"),
                call.meter.clone(),
            ),
        )
    }

    /// The last message the guest reported through `log.fatal`.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.log.fatal.take()
    }
}
