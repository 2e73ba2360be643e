//! One event feed for the whole cluster: each host publishes the events
//! it records to the JetStream stream `opbox-<cluster>-events` (subject
//! `opbox.<cluster>.events.<host>`), and every host's feed is that stream,
//! read in order, its own events included, each at its stream sequence as
//! its cursor. So a cursor means the same on every host: a reader may
//! resume on any host where it left off on another, and miss nothing nor
//! get anything twice.
//!
//! A host's events wait in its outbox until the stream has them (retrying
//! while NATS is out of reach, each sent with a message id, so one sent
//! again after a crash is taken once within the stream's duplicate
//! window); they show in the feed once read back. A host that restarts
//! reads on from the sequence it took last; the stream keeps the newest
//! `[admin] max_events`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use serde_json::Value;

use super::Shared;
use super::seal::Seal;
use crate::store::EventLog;

/// Events read from the log at a time while publishing.
const PAGE: usize = 256;

/// How long a host waits before it publishes again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Makes this host's feed the cluster's, publishes the events it records
/// and reads the stream into its feed, from tasks that end with the log;
/// `None`, with a warning, when the NATS server has no JetStream.
pub(super) async fn start(
    shared: &Shared,
    stream_name: String,
    host: String,
    log: Arc<EventLog>,
    max_events: u64,
) -> Option<()> {
    let Shared {
        client,
        subjects,
        seal,
        ..
    } = shared;
    let js = jetstream::new(client.clone());
    let made = js
        .create_or_update_stream(stream::Config {
            name: stream_name.clone(),
            description: Some("opbox events of every host".into()),
            subjects: vec![subjects.events(None)],
            max_messages: i64::try_from(max_events).unwrap_or(i64::MAX),
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            ..Default::default()
        })
        .await;
    if let Err(e) = made {
        tracing::warn!(error = %e, "events of other hosts are not mirrored here: no JetStream");
        return None;
    }
    tokio::spawn(publish(
        js.clone(),
        subjects.events(Some(&host)),
        host.clone(),
        Arc::downgrade(&log),
        seal.clone(),
    ));
    let (inbox, log, seal) = (client.new_inbox(), Arc::downgrade(&log), seal.clone());
    tokio::spawn(async move {
        if let Err(e) = mirror(js, inbox, &stream_name, log, &seal).await {
            tracing::warn!(error = %e, "cannot read the cluster's events into this host's feed");
        }
    });
    Some(())
}

/// Publishes, in order, the events waiting in this host's outbox, as
/// they come; each leaves the outbox once the stream has it.
async fn publish(js: Context, subject: String, host: String, log: Weak<EventLog>, seal: Arc<Seal>) {
    let Some(mut waiting) = log.upgrade().map(|log| log.outbox_changes()) else {
        return;
    };
    let mut after = 0;
    loop {
        // Seen before the outbox is read: one entering after wakes the wait.
        waiting.borrow_and_update();
        let Some(strong) = log.upgrade() else { return };
        let page = tokio::task::spawn_blocking(move || strong.outbox_page(after, PAGE)).await;
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read events to publish");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => return,
        };
        if page.is_empty() {
            if waiting.changed().await.is_err() {
                return;
            }
            continue;
        }
        for (number, mut json) in page {
            if !json["host"].is_string() {
                json["host"] = Value::String(host.clone());
            }
            let payload = serde_json::to_vec(&json).unwrap_or_default();
            let id = format!("{host}-{number}");
            while let Err(e) = publish_one(&js, &subject, &id, payload.clone(), &seal).await {
                tracing::debug!(error = %e, "cannot publish an event yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
            after = number;
        }
        let Some(strong) = log.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || strong.published(after)).await;
    }
}

/// Publishes one event, with message id `id`: the stream takes an event
/// sent twice (after a crash, before it left the outbox) once.
async fn publish_one(
    js: &Context,
    subject: &str,
    id: &str,
    payload: Vec<u8>,
    seal: &Seal,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        super::seal::HEADER,
        seal.seal_kept(subject, &payload).as_str(),
    );
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Reads the stream into `log`'s feed, every host's events, from after
/// the last one it took.
async fn mirror(
    js: Context,
    inbox: String,
    stream_name: &str,
    log: Weak<EventLog>,
    seal: &Seal,
) -> Result<(), String> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mirrored = match log.upgrade() {
        Some(log) => tokio::task::spawn_blocking(move || log.mirrored())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?,
        None => return Ok(()),
    };
    // A stream made anew (its sequences start again) is read whole, and
    // the feed starts again with it.
    let fresh = mirrored > last;
    let Some(strong) = log.upgrade() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || strong.join_cluster(fresh))
        .await
        .map_err(|e| e.to_string())?;
    let deliver_policy = if mirrored > 0 && !fresh {
        DeliverPolicy::ByStartSequence {
            start_sequence: mirrored + 1,
        }
    } else {
        DeliverPolicy::All
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: inbox,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!(error = %e, "the event stream broke; it resumes");
                continue;
            }
        };
        let Ok(seq) = message.info().map(|info| info.stream_sequence) else {
            continue;
        };
        // Only what a host of the cluster published, under its own subject.
        let sealed = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(super::seal::HEADER))
            .is_some_and(|kept| seal.is_kept(&message.subject, &message.payload, kept.as_str()));
        if !sealed {
            super::seal::refused("an event", super::seal::Unsealed::Forged);
            continue;
        }
        let Ok(json) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        if !json.is_object() || !json["host"].is_string() {
            continue;
        }
        let Some(log) = log.upgrade() else {
            return Ok(());
        };
        let taken = tokio::task::spawn_blocking(move || log.mirror(json, seq))
            .await
            .unwrap_or(false);
        if !taken {
            return Ok(());
        }
    }
    Ok(())
}
