//! Events in a cluster: each host's feed holds every host's events, each
//! naming its host, and a host that was away catches up without repeats.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Nats, eventually, host_keeping, plugins};
use crate::admin::OPERATOR;
use crate::util::Server;

/// An `opbox serve` in the cluster on `nats` holding `fixture-panic`, its
/// data in `data`, with an operator.
fn trapper(nats: &Nats, dir: &Path, data: &Path) -> Server {
    let tables = format!(
        "[[tenants]]\nid = \"ops\"\n[[tenants.tokens]]\nid = \"operator\"\nsha256 = {hash:?}\n\
         scopes = [\"admin\"]\n{plugins}",
        hash = opbox::tenants::hash_token_hex(OPERATOR),
        plugins = plugins(&["fixture-panic"]),
    );
    host_keeping(nats, dir, data, "examples = false", &tables)
}

/// The name a host keeps in its data directory.
fn name_of(data: &Path) -> String {
    std::fs::read_to_string(data.join("cluster-host")).unwrap()
}

/// A [`trapper`] with directories of its own.
struct Trapper {
    server: Server,
    dir: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Trapper {
    fn start(nats: &Nats) -> Self {
        Self::on(
            nats,
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        )
    }

    /// One with these directories: another's again, after it stopped.
    fn on(nats: &Nats, dir: tempfile::TempDir, data: tempfile::TempDir) -> Self {
        let server = trapper(nats, dir.path(), data.path());
        Self { server, dir, data }
    }

    fn name(&self) -> String {
        name_of(self.data.path())
    }
}

impl std::ops::Deref for Trapper {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

/// The events in `server`'s feed (the first 100 kept), as the operator
/// reads them.
async fn feed(server: &Server) -> Vec<Value> {
    crate::admin::events_of(&reqwest::Client::new(), &server.url).await
}

/// The traps in `events` that happened on `host`: when, in ms.
fn traps_on(events: &[Value], host: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["kind"] == "call.trapped" && e["host"] == host)
        .map(|e| e["at_ms"].as_u64().unwrap())
        .collect()
}

async fn trap(server: &Server, why: &str) {
    let answer = server
        .call(&reqwest::Client::new(), "fixture-panic/boom", json!(why))
        .await;
    assert_eq!(answer["error"]["code"], "PLUGIN_FAILED", "{answer}");
}

#[tokio::test]
async fn every_hosts_events_reach_every_hosts_feed_once() {
    let nats = Nats::start();
    let (a, b) = (Trapper::start(&nats), Trapper::start(&nats));
    let (name_a, name_b) = (a.name(), b.name());
    assert_ne!(name_a, name_b);

    // A trap on each host: both feeds show both, each naming its host.
    trap(&a, "first on A").await;
    trap(&b, "on B").await;
    let within = Duration::from_secs(10);
    for server in [&a, &b] {
        let both = eventually(within, || async {
            let events = feed(server).await;
            traps_on(&events, &name_a).len() == 1 && traps_on(&events, &name_b).len() == 1
        })
        .await;
        assert!(both, "a feed lacks a host's trap: {:?}", feed(server).await);
    }

    // B goes away; A traps again; B comes back on the same data and
    // catches up, with nothing it had twice.
    let Trapper { server, dir, data } = b;
    server.stop();
    trap(&a, "second on A").await;
    let b = Trapper::on(&nats, dir, data);
    assert_eq!(b.name(), name_b, "B keeps its name");
    let caught_up = eventually(within, || async {
        traps_on(&feed(&b).await, &name_a).len() >= 2
    })
    .await;
    let events = feed(&b).await;
    assert!(caught_up, "B did not catch up: {events:?}");
    let from_a = traps_on(&events, &name_a);
    assert_eq!(from_a.len(), 2, "{from_a:?}");
    assert!(from_a[0] < from_a[1], "the same trap twice: {from_a:?}");
    assert_eq!(traps_on(&events, &name_b).len(), 1);
    drop(a);
}

/// The events after `cursor` in `server`'s feed, as the operator reads
/// them.
async fn feed_after(server: &Server, cursor: u64) -> Vec<Value> {
    crate::admin::events_after(&reqwest::Client::new(), &server.url, Some(cursor)).await
}

/// `server`'s feed after `cursor` once `check` holds of it (within 10 s).
async fn feed_once(server: &Server, cursor: u64, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let events = feed_after(server, cursor).await;
        if check(&events) {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the feed after {cursor} never held: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reader_moves_to_another_host_at_the_same_cursor_and_misses_nothing() {
    let nats = Nats::start();
    let (a, b) = (Trapper::start(&nats), Trapper::start(&nats));
    let (name_a, name_b) = (a.name(), b.name());
    let one_each = |events: &[Value]| {
        traps_on(events, &name_a).len() == 1 && traps_on(events, &name_b).len() == 1
    };

    // A reader follows B's feed, up to a trap on each host.
    trap(&a, "1 on A").await;
    trap(&b, "2 on B").await;
    let read = feed_once(&b, 0, one_each).await;
    let cursor = read.last().unwrap()["cursor"].as_u64().unwrap();

    // More happens on both; the reader moves to A with B's cursor.
    trap(&b, "3 on B").await;
    trap(&a, "4 on A").await;
    let on_a = feed_once(&a, cursor, one_each).await;
    // What A gives after the cursor is what B gives after it: the same
    // events at the same cursors, nothing from before it, nothing twice.
    let on_b = feed_once(&b, cursor, |events| events.len() >= on_a.len()).await;
    let same = |events: &[Value]| -> Vec<(u64, Value, Value)> {
        events
            .iter()
            .map(|e| {
                (
                    e["cursor"].as_u64().unwrap(),
                    e["host"].clone(),
                    e["at_ms"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(same(&on_a), same(&on_b[..on_a.len()]));
    let cursors: Vec<u64> = on_a.iter().map(|e| e["cursor"].as_u64().unwrap()).collect();
    assert!(cursors.iter().all(|&c| c > cursor), "{cursors:?}");
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let traps = read
        .iter()
        .chain(&on_a)
        .filter(|e| e["kind"] == "call.trapped")
        .count();
    assert_eq!(traps, 4, "every trap once");
}
