//! Events from every host in every host's feed: each host publishes the
//! events it records to the JetStream stream `opbox-<cluster>-events`
//! (subject `opbox.<cluster>.events.<host>`), and mirrors the other hosts'
//! into its own event log, where `opbox events` and the admin feed read
//! them with the host's own, each naming its `host`.
//!
//! A host publishes what it records from the moment it joins, in order,
//! retrying while NATS is out of reach; it mirrors from where it left off
//! (the stream sequence it last mirrored is kept with the event, in one
//! transaction), so a host that was away catches up with what the stream
//! still keeps: the newest `[admin] max_events`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::seal::Seal;
use crate::store::{EventLog, ReadError};

/// Events read from the log at a time while publishing.
const PAGE: usize = 256;

/// How long a host waits before it publishes again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Publishes the events this host records after cursor `from` and mirrors
/// the others', from tasks that end with the log; `None`, with a warning,
/// when the NATS server has no JetStream.
pub(super) async fn start(
    shared: &Shared,
    stream_name: String,
    host: String,
    log: Arc<EventLog>,
    from: u64,
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
        from,
        seal.clone(),
    ));
    let (inbox, log, seal) = (client.new_inbox(), Arc::downgrade(&log), seal.clone());
    tokio::spawn(async move {
        if let Err(e) = mirror(js, inbox, &stream_name, &host, log, &seal).await {
            tracing::warn!(error = %e, "cannot mirror the events of other hosts");
        }
    });
    Some(())
}

/// Publishes, in order, every event this host records after `after`.
async fn publish(
    js: Context,
    subject: String,
    host: String,
    log: Weak<EventLog>,
    mut after: u64,
    seal: Arc<Seal>,
) {
    let Some(mut live) = log.upgrade().map(|log| log.follow()) else {
        return;
    };
    loop {
        // Everything recorded after `after`, this host's own.
        loop {
            let Some(strong) = log.upgrade() else { return };
            let page =
                tokio::task::spawn_blocking(move || strong.page(Some(after), PAGE, None)).await;
            let (events, next) = match page {
                Ok(Ok(page)) => page,
                Ok(Err(ReadError::Expired { oldest, .. })) => {
                    after = oldest.saturating_sub(1);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read events to publish");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(_) => return,
            };
            for event in events.iter().filter(|e| e.json["host"] == *host) {
                let payload = serde_json::to_vec(&event.json).unwrap_or_default();
                while let Err(e) = publish_one(&js, &subject, payload.clone(), &seal).await {
                    tracing::debug!(error = %e, "cannot publish an event yet; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
            if next == after {
                break;
            }
            after = next;
        }
        match live.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

async fn publish_one(
    js: &Context,
    subject: &str,
    payload: Vec<u8>,
    seal: &Seal,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        super::seal::HEADER,
        seal.seal_kept(subject, &payload).as_str(),
    );
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Mirrors the other hosts' events into `log`, from after the last one
/// it mirrored.
async fn mirror(
    js: Context,
    inbox: String,
    stream_name: &str,
    host: &str,
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
    // A stream made anew (its sequences start again) is read whole.
    let deliver_policy = if mirrored > 0 && mirrored <= last {
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
        if !json.is_object() || json["host"] == *host || !json["host"].is_string() {
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
