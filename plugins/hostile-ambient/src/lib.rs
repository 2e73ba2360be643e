//! Hostile plugin: reaching for authority a plugin is not given.
//!
//! `hostile-ambient/probe` tries the environment, its arguments, stdin, the
//! filesystem (reading, listing, writing, escaping with `..`), the network
//! (TCP to `tcp_port` on the loopback, UDP, name lookup), and reports what
//! each attempt got: `"ok: …"` or the error it met.
//!
//! `hostile-ambient/fs` tries one filesystem operation on one path (`read`,
//! `write`, `list`, `remove`), for testing how far a granted directory
//! reaches; `hostile-ambient/config` reads one configuration value and all
//! of them; `hostile-ambient/hoard` opens `n` keyvalue buckets and holds
//! them all, reporting how many it got and what stopped it.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Probe {
    /// A loopback TCP port to try connecting to.
    tcp_port: u16,
}

#[derive(Serialize, JsonSchema)]
struct Report {
    /// Environment variables seen.
    env: Vec<(String, String)>,
    /// Command-line arguments seen.
    args: Vec<String>,
    /// Bytes read from stdin.
    stdin: String,
    /// Each filesystem attempt and its outcome.
    files: Vec<(String, String)>,
    /// Each network attempt and its outcome.
    network: Vec<(String, String)>,
}

fn outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: std::result::Result<T, E>) -> String {
    match result {
        Ok(value) => format!("ok: {value:?}"),
        Err(e) => format!("error: {e}"),
    }
}

async fn probe(_ctx: Context, probe: Probe) -> Result<Report> {
    let mut stdin = Vec::new();
    let stdin = outcome(
        std::io::stdin()
            .read_to_end(&mut stdin)
            .map(|_| stdin.len()),
    );
    let mut files = Vec::new();
    for path in [
        "/",
        ".",
        "..",
        "/etc/passwd",
        "/proc/self/environ",
        "../../etc/hostname",
    ] {
        files.push((
            format!("read_dir {path}"),
            outcome(std::fs::read_dir(path).map(|d| d.count())),
        ));
        files.push((
            format!("read {path}"),
            outcome(std::fs::read(path).map(|b| b.len())),
        ));
    }
    files.push((
        "write /tmp/opbox-escape".into(),
        outcome(std::fs::write("/tmp/opbox-escape", "x")),
    ));
    let loopback = format!("127.0.0.1:{}", probe.tcp_port);
    let network = vec![
        (
            format!("tcp connect {loopback}"),
            outcome(TcpStream::connect(&loopback).map(|_| ())),
        ),
        (
            "udp bind 0.0.0.0:0".into(),
            outcome(UdpSocket::bind("0.0.0.0:0").map(|_| ())),
        ),
        (
            "dns localhost".into(),
            outcome(("localhost", 80).to_socket_addrs().map(|a| a.count())),
        ),
    ];
    Ok(Report {
        env: std::env::vars().collect(),
        args: std::env::args().collect(),
        stdin,
        files,
        network,
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum FsOp {
    Read,
    Write,
    List,
    Remove,
}

#[derive(Deserialize, JsonSchema)]
struct Fs {
    op: FsOp,
    path: String,
    #[serde(default)]
    text: String,
}

async fn fs(_ctx: Context, input: Fs) -> Result<String> {
    let path = input.path.as_str();
    Ok(match input.op {
        FsOp::Read => outcome(std::fs::read_to_string(path)),
        FsOp::Write => outcome(std::fs::write(path, &input.text)),
        FsOp::List => outcome(std::fs::read_dir(path).map(|entries| {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            names
        })),
        FsOp::Remove => outcome(std::fs::remove_file(path)),
    })
}

#[derive(Deserialize, JsonSchema)]
struct Key {
    key: String,
}

#[derive(Serialize, JsonSchema)]
struct ConfigSeen {
    value: Option<String>,
    all: Vec<(String, String)>,
}

async fn config(_ctx: Context, input: Key) -> Result<ConfigSeen> {
    Ok(ConfigSeen {
        value: opbox_sdk::config::get(&input.key)?,
        all: opbox_sdk::config::all()?,
    })
}

#[derive(Deserialize, JsonSchema)]
struct Hoard {
    n: u32,
}

#[derive(Serialize, JsonSchema)]
struct Hoarded {
    opened: u32,
    stopped_by: Option<String>,
}

async fn hoard(_ctx: Context, input: Hoard) -> Result<Hoarded> {
    let mut held = Vec::new();
    let mut stopped_by = None;
    for _ in 0..input.n {
        match opbox_sdk::keyvalue::open("hoard") {
            Ok(bucket) => held.push(bucket),
            Err(e) => {
                stopped_by = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Hoarded {
        opened: u32::try_from(held.len()).unwrap_or(u32::MAX),
        stopped_by,
    })
}

fn plugin() -> Plugin {
    Plugin::new()
        .query(
            "probe",
            "Tries the environment, arguments, stdin, files and network; reports each outcome.",
            probe,
        )
        .query(
            "hoard",
            "Opens `n` keyvalue buckets and holds them all.",
            hoard,
        )
        .query(
            "config",
            "Reads one configuration value, and all of them.",
            config,
        )
        .mutation(
            "fs",
            "Tries one filesystem operation on one path; reports the outcome.",
            fs,
        )
}

opbox_sdk::export!(plugin);
