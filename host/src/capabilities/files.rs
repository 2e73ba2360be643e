//! The guest's own filesystem, clocks, random numbers and captured
//! stdout/stderr: WASI preview 2 (`wasi:cli`, `wasi:clocks`,
//! `wasi:filesystem`, `wasi:io`, `wasi:random`, `wasi:sockets` with no
//! network granted), and the same interfaces of WASI 0.3 over the same
//! context, for WASIp3 components. No arguments and no environment; a
//! filesystem only where the operator granted a directory.

use std::path::PathBuf;

use serde::Deserialize;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::StdoutStream;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// A host directory granted to a plugin, opened with cap-std: the plugin
/// cannot reach outside it, whether by `..`, an absolute path or a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryGrant {
    /// The directory on the host; relative to the config file.
    pub path: PathBuf,
    /// Whether the plugin may only read.
    #[serde(default)]
    pub read_only: bool,
}

/// The WASI context of one call: `stdout` and `stderr` where the guest's
/// output goes, and `directory` as `/` when one is granted.
pub(crate) fn context(
    plugin: &str,
    directory: Option<&DirectoryGrant>,
    stdout: impl StdoutStream + 'static,
    stderr: impl StdoutStream + 'static,
) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.stdout(stdout).stderr(stderr);
    if let Some(dir) = directory {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        // Checked when the plugin was loaded; should it have gone since,
        // the guest finds no directory rather than the call failing.
        if let Err(e) = wasi.preopened_dir(&dir.path, "/", perms) {
            tracing::warn!(plugin, "cannot open the granted directory: {e:#}");
        }
    }
    wasi.build()
}

/// Whether a directory grant can be honoured; why not.
pub(crate) fn check(directory: Option<&DirectoryGrant>) -> Result<(), String> {
    match directory {
        Some(dir) if !dir.path.is_dir() => Err(format!(
            "the granted directory {} is not a directory",
            dir.path.display()
        )),
        _ => Ok(()),
    }
}

/// What wasmtime-wasi needs of a store: its context and the table its
/// resources live in.
pub(crate) fn view<'a>(ctx: &'a mut WasiCtx, table: &'a mut ResourceTable) -> WasiCtxView<'a> {
    WasiCtxView { ctx, table }
}

pub(super) fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)
}
