//! Compiling a component someone brought to the host, so that one made to
//! exhaust the compiler costs its sender a refusal and the host nothing.
//!
//! Two bounds, in order:
//! 1. **Its shape**, read without compiling (a parse, no validation): how
//!    many functions its core modules hold, and how large the largest is.
//!    The obvious bombs (a quarter of a million empty functions in under a
//!    megabyte) are refused at once.
//! 2. **The compiler's appetite**: the compiler runs in a child process
//!    (`opbox compile-component`, [`child_main`]) with limits on its memory
//!    (`RLIMIT_DATA`) and CPU time (`RLIMIT_CPU`) that it sets on itself
//!    before reading a byte, and a wall-clock bound the host keeps by
//!    killing it. What it hands back is the compiled artifact; its memory,
//!    however much it took, goes back to the system when it exits. A child
//!    that is killed, runs out of memory or fails is a refusal that says
//!    which bound it met.
//!
//! Components the operator's configuration names are trusted and compiled
//! in the host's own process, as are all components where no compiler
//! program is configured (an embedding that has no `opbox` binary to run).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmparser::{Parser, Payload};

use super::LoadError;

/// The bounds of compiling a component a caller brought.
///
/// | field | default |
/// |---|---|
/// | `program` | none: compile in the host's own process |
/// | `max_functions` | 100,000 functions across its core modules |
/// | `max_function_bytes` | 4 MiB of code in one function |
/// | `memory_bytes` | 2 GiB for the compiler |
/// | `cpu` | 60 s of the compiler's CPU time |
/// | `wall` | 60 s, and never past the call's deadline |
#[derive(Debug, Clone)]
pub struct CompileLimits {
    /// The `opbox` binary, run as `opbox compile-component`; `None`:
    /// compile in the host's own process, with the shape's bounds only.
    pub program: Option<PathBuf>,
    /// Functions, across every core module of the component.
    pub max_functions: u64,
    /// The largest function body, in bytes.
    pub max_function_bytes: usize,
    /// The compiler's memory (its data segment and heap), in bytes.
    pub memory_bytes: u64,
    /// The compiler's CPU time, in whole seconds (at least one).
    pub cpu: Duration,
    /// How long the host waits for the compiler.
    pub wall: Duration,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self {
            program: None,
            max_functions: 100_000,
            max_function_bytes: 4 << 20,
            memory_bytes: 2 << 30,
            cpu: Duration::from_secs(60),
            wall: Duration::from_secs(60),
        }
    }
}

/// What the compiler must know of the engine for its artifact to load in
/// the host's: the settings that change the code it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CodeSettings {
    /// Instructions are counted (`fuel`).
    pub(super) fuel: bool,
    /// Epoch interruption (CPU-time limits) is compiled in.
    pub(super) epochs: bool,
    /// Winch, wasmtime's baseline compiler, instead of Cranelift.
    pub(super) quick: bool,
}

/// Refuses a component whose shape is past `limits`, reading it without
/// compiling it.
pub(super) fn check_shape(wasm: &[u8], limits: &CompileLimits) -> Result<(), LoadError> {
    let mut functions: u64 = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| LoadError::Compile(e.message().to_owned()))?;
        match payload {
            Payload::CodeSectionStart { count, .. } => {
                functions = functions.saturating_add(u64::from(count));
                if functions > limits.max_functions {
                    return Err(LoadError::TooLarge(format!(
                        "it has more than {} functions",
                        limits.max_functions
                    )));
                }
            }
            Payload::CodeSectionEntry(body) if body.range().len() > limits.max_function_bytes => {
                return Err(LoadError::TooLarge(format!(
                    "a function has more than {} bytes of code",
                    limits.max_function_bytes
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Compiles `wasm` in a child process running `program` within `limits`,
/// and returns the artifact.
pub(super) async fn in_child(
    program: &std::path::Path,
    wasm: &[u8],
    settings: CodeSettings,
    limits: &CompileLimits,
) -> Result<Vec<u8>, LoadError> {
    let cpu_secs = limits.cpu.as_secs().max(1);
    let mut command = tokio::process::Command::new(program);
    command
        .arg("compile-component")
        .arg("--memory-bytes")
        .arg(limits.memory_bytes.to_string())
        .arg("--cpu-secs")
        .arg(cpu_secs.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .kill_on_drop(true);
    if settings.fuel {
        command.arg("--fuel");
    }
    if !settings.epochs {
        command.arg("--no-epochs");
    }
    if settings.quick {
        command.arg("--quick");
    }
    let mut child = command.spawn().map_err(|e| {
        tracing::error!(program = %program.display(), "cannot start the compiler: {e}");
        LoadError::Engine("cannot start the compiler".into())
    })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(LoadError::Engine("cannot talk to the compiler".into()));
    };
    let max_artifact = limits.memory_bytes;
    let work = async {
        let feed = async {
            // A compiler that stops reading has failed; its exit says why.
            let _ = stdin.write_all(wasm).await;
            drop(stdin);
        };
        let mut artifact = Vec::new();
        let mut said = Vec::new();
        let read = async {
            (&mut stdout)
                .take(max_artifact)
                .read_to_end(&mut artifact)
                .await
        };
        let complaint = async { (&mut stderr).take(4096).read_to_end(&mut said).await };
        let ((), read, _) = tokio::join!(feed, read, complaint);
        let status = child.wait().await;
        (read, status, artifact, said)
    };
    let (read, status, artifact, said) =
        tokio::time::timeout(limits.wall, work).await.map_err(|_| {
            LoadError::TooLarge(format!(
                "compiling it took longer than {} ms",
                limits.wall.as_millis()
            ))
        })?;
    let status = status.map_err(|_| LoadError::Engine("the compiler was lost".into()))?;
    if status.success() && read.is_ok() {
        return Ok(artifact);
    }
    let said = String::from_utf8_lossy(&said);
    let said = said.trim();
    if status.code() == Some(FAILED) && !said.is_empty() {
        // The component is not valid: the compiler says why.
        return Err(LoadError::Compile(crate::call::cut(said, 2048).to_owned()));
    }
    tracing::info!(%status, said, "the compiler of an uploaded component stopped");
    Err(LoadError::TooLarge(format!(
        "compiling it needed more than the compiler may use ({} bytes of memory, {cpu_secs} s of CPU)",
        limits.memory_bytes
    )))
}

/// The exit code of a compiler that refused the component (as opposed to
/// one that was stopped).
const FAILED: i32 = 3;

/// `opbox compile-component`: reads a component on standard input and
/// writes its compiled artifact on standard output, within the memory and
/// CPU time it is given, which it sets on itself before reading a byte.
pub fn child_main(
    memory_bytes: u64,
    cpu_secs: u64,
    fuel: bool,
    epochs: bool,
    quick: bool,
) -> ExitCode {
    let limited = rlimit::setrlimit(rlimit::Resource::DATA, memory_bytes, memory_bytes)
        .and_then(|()| rlimit::setrlimit(rlimit::Resource::CPU, cpu_secs, cpu_secs));
    if let Err(e) = limited {
        eprintln!("cannot limit the compiler: {e}");
        return ExitCode::FAILURE;
    }
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut wasm) {
        eprintln!("cannot read the component: {e}");
        return ExitCode::FAILURE;
    }
    let mut config = code_config(CodeSettings {
        fuel,
        epochs,
        quick,
    });
    // One thread: the compiler competes with the host's calls for cores.
    config.parallel_compilation(false);
    let artifact =
        wasmtime::Engine::new(&config).and_then(|engine| engine.precompile_component(&wasm));
    match artifact {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the artifact: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(FAILED as u8)
        }
    }
}

/// The engine settings that decide the code compiled: the host's engine
/// adds its instance allocator to these, the compiler uses them as they
/// are.
pub(super) fn code_config(settings: CodeSettings) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .epoch_interruption(settings.epochs)
        .consume_fuel(settings.fuel)
        .wasm_component_model_async(true);
    if settings.quick {
        config.strategy(wasmtime::Strategy::Winch);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compilers_settings_make_code_the_hosts_engine_loads() {
        // The smallest component: no sections at all.
        let empty = b"\0asm\x0d\0\x01\0";
        for (fuel, epochs, quick) in [
            (false, true, false),
            (true, true, false),
            (false, false, false),
            (false, true, true),
            (true, true, true),
        ] {
            let settings = CodeSettings {
                fuel,
                epochs,
                quick,
            };
            let compiler = wasmtime::Engine::new(&code_config(settings)).unwrap();
            let artifact = compiler.precompile_component(empty).unwrap();
            let host = super::super::Runtime::new(super::super::RuntimeConfig {
                fuel,
                enforce_limits: epochs,
                quick_compile: quick,
                ..Default::default()
            })
            .unwrap();
            let loaded = super::super::cache::deserialize_bytes(&host.inner.engine, &artifact);
            assert!(loaded.is_ok(), "{settings:?}: {:?}", loaded.err());
        }
    }
}
