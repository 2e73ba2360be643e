//! One NATS subscription for the replies to every call this host forwards.
//!
//! A subscription per call would cost a `SUB` and an `UNSUB`, and the NATS
//! server an update of its interest graph, per call. Instead each call gets
//! a token under this host's inbox prefix, and one wildcard subscription
//! hands each reply to its call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_nats::{Client, Message};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::seal::Seal;

/// Replies a call may have waiting before it counts as gone: a call's own
/// replies are few (a subscription's items are held to its credit), so
/// only a caller that stops reading for minutes of heartbeats fills it.
const QUEUED: usize = 256;

/// This host's reply inbox.
pub(super) struct Inbox {
    /// `_INBOX.<unique>`.
    prefix: String,
    /// Only sealed replies reach their call.
    seal: Arc<Seal>,
    calls: Mutex<HashMap<String, mpsc::Sender<Message>>>,
}

impl Inbox {
    /// Subscribes to `<prefix>.*` and routes what arrives.
    pub(super) async fn open(
        client: &Client,
        seal: Arc<Seal>,
    ) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut replies = client.subscribe(format!("{prefix}.*")).await?;
        let inbox = Arc::new(Self {
            prefix,
            seal,
            calls: Mutex::default(),
        });
        let weak: Weak<Self> = Arc::downgrade(&inbox);
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Some(inbox) = weak.upgrade() else { return };
                inbox.route(message);
            }
        });
        Ok(inbox)
    }

    /// A reply subject of its own for one call, and its replies. The call
    /// is forgotten when the [`Replies`] are dropped.
    pub(super) fn register(self: &Arc<Self>) -> Replies {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (sender, receiver) = mpsc::channel(QUEUED);
        self.calls().insert(token.clone(), sender);
        Replies {
            subject: format!("{}.{token}", self.prefix),
            receiver,
            inbox: self.clone(),
            token,
        }
    }

    fn route(&self, message: Message) {
        // The NATS server's own word (no responders) has no seal; every
        // host's reply has.
        if message.status.is_none()
            && let Err(why) = self.seal.open(&message)
        {
            super::seal::refused("a reply to a forwarded call", why);
            return;
        }
        let token = message
            .subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .map(str::to_owned);
        let Some(token) = token else { return };
        let mut calls = self.calls();
        if let Some(call) = calls.get(&token)
            && call.try_send(message).is_err()
        {
            // A call that does not read its replies: it ends as gone.
            calls.remove(&token);
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Message>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One call's replies.
pub(super) struct Replies {
    /// Where they are sent.
    pub(super) subject: String,
    receiver: mpsc::Receiver<Message>,
    inbox: Arc<Inbox>,
    token: String,
}

impl Replies {
    /// The next reply; `None` once the call is forgotten.
    pub(super) async fn next(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.inbox.calls().remove(&self.token);
    }
}
