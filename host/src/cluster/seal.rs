//! What makes a message one that a host of the cluster sent: its seal.
//!
//! Every message a host sends on the cluster's subjects carries, in its
//! `Opbox-Seal` header, when it was sealed, a number used once, and an
//! HMAC-SHA256 under the key the cluster's hosts share (`[cluster] key` or
//! `key_file`) over those, the subject, the reply subject and the payload.
//! A host acts only on messages whose seal holds, was made within
//! [`WINDOW`] of its own clock, and that it has not seen before. So a NATS
//! client without the key may publish on every subject of the cluster and
//! no host runs, aborts or answers anything it sends; one that records a
//! host's message and sends it again is refused as well.
//!
//! What a host keeps in JetStream for the others (plugin records, events)
//! is sealed the same way, without the window: it is read long after it
//! was written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use ring::hmac;

use crate::runtime::hex;

/// The header a seal travels in.
pub(super) const HEADER: &str = "Opbox-Seal";

/// How far a seal's time may be from the receiving host's clock: the
/// hosts' clocks must agree within it.
pub(super) const WINDOW: Duration = Duration::from_secs(30);

/// Seals remembered at most, to refuse one sent twice: beyond it (more
/// messages within the window than this), new messages are refused until
/// old seals expire.
const MAX_SEEN: usize = 1 << 20;

/// The most a seal's header adds to a message, in bytes.
const HEADER_BYTES: usize = 192;

/// The largest payload a sealed message to `client`'s server may carry:
/// its `max_payload` less the seal.
pub(super) fn room(client: &Client) -> usize {
    client.max_payload().saturating_sub(HEADER_BYTES)
}

/// The shortest key the cluster's hosts may share, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a message is not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unsealed {
    /// It has no seal, or one the key did not make.
    #[error("it is not sealed with the cluster's key")]
    Forged,
    /// Its seal was made too long ago, or too far ahead.
    #[error("its seal is outside the cluster's clock window")]
    Stale,
    /// Its seal was seen before.
    #[error("it was sent before")]
    Replayed,
    /// Too many seals are remembered to tell.
    #[error("too many messages at once to check it")]
    Busy,
}

/// The cluster's key, and the seals seen within the window.
pub(super) struct Seal {
    key: hmac::Key,
    /// Counts up from a random start: each seal this host makes is new.
    next: AtomicU64,
    /// Seals seen, by tag, with when they were made.
    seen: Mutex<HashMap<[u8; 32], u64>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal")
    }
}

impl Seal {
    /// Seals under `key`, which the caller has checked is long enough.
    pub(super) fn new(key: &[u8]) -> Self {
        let mut start = [0u8; 8];
        // A fixed start would still seal every message differently; a
        // random one also keeps two hosts' numbers apart.
        let _ = getrandom::fill(&mut start);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            next: AtomicU64::new(u64::from_le_bytes(start)),
            seen: Mutex::default(),
        }
    }

    /// The headers of a message to `subject` (answered at `reply`) with
    /// `payload`.
    pub(super) fn headers(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> HeaderMap {
        let at = now_ms();
        let nonce = self.next.fetch_add(1, Ordering::Relaxed);
        let tag = self.tag(at, nonce, subject, reply, payload);
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            format!("{at}.{nonce}.{}", hex(tag.as_ref())).as_str(),
        );
        headers
    }

    /// Publishes `payload` on `subject`, answered at `reply`, sealed.
    pub(super) async fn publish(
        &self,
        client: &Client,
        subject: String,
        reply: Option<String>,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        let headers = self.headers(&subject, reply.as_deref(), &payload);
        match reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(subject, reply, headers, payload)
                    .await
            }
            None => client.publish_with_headers(subject, headers, payload).await,
        }
    }

    /// Whether `message` was sealed by a host of the cluster, within the
    /// window, and is seen here for the first time.
    pub(super) fn open(&self, message: &async_nats::Message) -> Result<(), Unsealed> {
        let value = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(HEADER))
            .ok_or(Unsealed::Forged)?;
        let (at, nonce, tag) = parse(value.as_str()).ok_or(Unsealed::Forged)?;
        let reply = message.reply.as_deref();
        let data = signed(at, nonce, &message.subject, reply, &message.payload);
        hmac::verify(&self.key, &data, &tag).map_err(|_| Unsealed::Forged)?;
        let now = now_ms();
        let window = WINDOW.as_millis() as u64;
        if at.abs_diff(now) > window {
            return Err(Unsealed::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_SEEN {
            seen.retain(|_, made| made.abs_diff(now) <= window);
            if seen.len() >= MAX_SEEN {
                return Err(Unsealed::Busy);
            }
        }
        if seen.insert(tag, at).is_some() {
            return Err(Unsealed::Replayed);
        }
        Ok(())
    }

    /// The seal of `bytes` kept under `name` (a record's key, an event's
    /// subject): hex text, to keep beside them.
    pub(super) fn seal_kept(&self, name: &str, bytes: &[u8]) -> String {
        hex(self.tag(0, 0, name, None, bytes).as_ref())
    }

    /// Whether `seal` is [`seal_kept`](Self::seal_kept)'s for `name` and
    /// `bytes`.
    pub(super) fn is_kept(&self, name: &str, bytes: &[u8], seal: &str) -> bool {
        unhex(seal).is_some_and(|tag| {
            hmac::verify(&self.key, &signed(0, 0, name, None, bytes), &tag).is_ok()
        })
    }

    fn tag(
        &self,
        at: u64,
        nonce: u64,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> hmac::Tag {
        hmac::sign(&self.key, &signed(at, nonce, subject, reply, payload))
    }
}

/// Logs that a message was not acted on: at most one line a second, as a
/// client without the key may send as many as it likes.
pub(super) fn refused(what: &str, why: Unsealed) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "ignored {what}: {why} (a NATS client without the cluster's key, or a host with another key or clock)"
        );
    }
}

/// What a seal covers, each part's length first so no two messages share
/// it: the time, the number used once, the subject, the reply subject and
/// the payload.
fn signed(at: u64, nonce: u64, subject: &str, reply: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let reply = reply.unwrap_or_default();
    let mut data = Vec::with_capacity(32 + subject.len() + reply.len() + payload.len());
    data.extend_from_slice(&at.to_be_bytes());
    data.extend_from_slice(&nonce.to_be_bytes());
    for part in [subject.as_bytes(), reply.as_bytes()] {
        data.extend_from_slice(&(part.len() as u64).to_be_bytes());
        data.extend_from_slice(part);
    }
    data.extend_from_slice(payload);
    data
}

/// `at.nonce.tag` as the header holds it.
fn parse(value: &str) -> Option<(u64, u64, [u8; 32])> {
    let mut parts = value.splitn(3, '.');
    let at = parts.next()?.parse().ok()?;
    let nonce = parts.next()?.parse().ok()?;
    let tag = unhex(parts.next()?)?;
    Some((at, nonce, tag))
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut tag = [0u8; 32];
    for (i, byte) in tag.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
        headers: HeaderMap,
    ) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: reply.map(Into::into),
            payload: payload.to_vec().into(),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn only_a_sealed_message_seen_once_is_opened() {
        let seal = Seal::new(&[7; 32]);
        let headers = seal.headers("opbox.c.call.acme.echo%2Fecho", Some("_INBOX.1"), b"{}");
        let sent = message(
            "opbox.c.call.acme.echo%2Fecho",
            Some("_INBOX.1"),
            b"{}",
            headers.clone(),
        );
        assert_eq!(seal.open(&sent), Ok(()));
        // Sent again: refused.
        assert_eq!(seal.open(&sent), Err(Unsealed::Replayed));
        // The same seal on another subject, reply or payload: forged.
        for (subject, reply, payload) in [
            (
                "opbox.c.call.globex.echo%2Fecho",
                Some("_INBOX.1"),
                &b"{}"[..],
            ),
            ("opbox.c.call.acme.echo%2Fecho", Some("_INBOX.2"), b"{}"),
            (
                "opbox.c.call.acme.echo%2Fecho",
                Some("_INBOX.1"),
                b"{\"x\":1}",
            ),
        ] {
            let moved = message(subject, reply, payload, headers.clone());
            assert_eq!(seal.open(&moved), Err(Unsealed::Forged));
        }
        // Another key's seal, or none: forged.
        let other = Seal::new(&[8; 32]);
        let headers = other.headers("s", None, b"x");
        assert_eq!(
            seal.open(&message("s", None, b"x", headers)),
            Err(Unsealed::Forged)
        );
        assert_eq!(
            seal.open(&message("s", None, b"x", HeaderMap::new())),
            Err(Unsealed::Forged)
        );
    }

    #[test]
    fn a_seal_from_outside_the_window_is_stale() {
        let seal = Seal::new(&[7; 32]);
        let at = now_ms() - WINDOW.as_millis() as u64 - 1000;
        let tag = seal.tag(at, 1, "s", None, b"x");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, format!("{at}.1.{}", hex(tag.as_ref())).as_str());
        assert_eq!(
            seal.open(&message("s", None, b"x", headers)),
            Err(Unsealed::Stale)
        );
    }

    #[test]
    fn kept_data_is_sealed_by_name_and_bytes() {
        let seal = Seal::new(&[7; 32]);
        let kept = seal.seal_kept("shared.echo", b"record");
        assert!(seal.is_kept("shared.echo", b"record", &kept));
        assert!(!seal.is_kept("shared.other", b"record", &kept));
        assert!(!seal.is_kept("shared.echo", b"recorD", &kept));
        assert!(!Seal::new(&[8; 32]).is_kept("shared.echo", b"record", &kept));
    }
}
