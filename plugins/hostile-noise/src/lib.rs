//! Hostile plugin: noise.
//!
//! - `hostile-noise/log-flood` writes `lines` log lines.
//! - `hostile-noise/stdout-flood` prints `mib` MiB to stdout and stderr.

use std::io::Write;

use opbox_sdk::{Context, Plugin, Result};

async fn log_flood(_ctx: Context, lines: u32) -> Result<u32> {
    for n in 0..lines {
        opbox_sdk::info!("flood line {n}");
    }
    Ok(lines)
}

async fn stdout_flood(_ctx: Context, mib: usize) -> Result<usize> {
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for _ in 0..mib * 1024 {
        let _ = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        let _ = err.write_all(&line).and_then(|()| err.write_all(b"\n"));
    }
    Ok(mib)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("log-flood", "Writes `lines` log lines.", log_flood)
        .query(
            "stdout-flood",
            "Prints `mib` MiB to stdout and to stderr.",
            stdout_flood,
        )
}

opbox_sdk::export!(plugin);
