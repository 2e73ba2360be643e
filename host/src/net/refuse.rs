//! Turning connections away as cheaply as the peer allows. A flood of new
//! connections is work the host does for the flooding peer alone, so it
//! must cost little and never hold a worker from admitted connections.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::TcpStream;

use super::Refusal;

/// How often the refusals of one listener are logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Addresses remembered as told before those told over a second ago are
/// forgotten.
const TOLD_ADDRESSES: usize = 4096;

/// Refuses the connections one listener does not admit: tells a peer why
/// at most once a second, resets its other refused connections, and logs
/// refusals at most once a second.
#[derive(Debug)]
pub struct Doorman {
    listener: &'static str,
    /// The addresses told why in the last second.
    told: DefaultKeyedRateLimiter<IpAddr>,
    tally: Mutex<Tally>,
}

#[derive(Debug)]
struct Tally {
    logged: Option<Instant>,
    refused: u64,
}

impl Doorman {
    /// The doorman of the listener named `listener` in its log lines.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            told: RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN)),
            tally: Mutex::new(Tally {
                logged: None,
                refused: 0,
            }),
        }
    }

    /// Refuses `stream`, from `peer`. The peer's first refusal in a second
    /// gets `answer`, with what fits in the socket's buffer right now
    /// (never waiting on it), and a close. Its others in that second are
    /// reset without an answer: a peer that keeps opening connections is
    /// not reading answers, and a reset costs the host one packet and
    /// leaves no closing socket behind. Then yields, so that a flood of
    /// refusals takes turns with the admitted connections' work.
    pub async fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        refusal: Refusal,
        answer: impl FnOnce(Refusal) -> Vec<u8>,
    ) {
        if self.told.len() > TOLD_ADDRESSES {
            self.told.retain_recent();
        }
        if self.told.check_key(&peer.ip()).is_ok() {
            let _ = stream.try_write(&answer(refusal));
        } else {
            let _ = stream.set_zero_linger();
        }
        drop(stream);
        self.note(peer, refusal);
        tokio::task::yield_now().await;
    }

    /// Counts a refusal; logs the count, with this one, once a second.
    fn note(&self, peer: SocketAddr, refusal: Refusal) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.refused += 1;
        let now = Instant::now();
        if tally
            .logged
            .is_none_or(|logged| now.duration_since(logged) >= LOG_EVERY)
        {
            tracing::warn!(
                listener = self.listener,
                refused = tally.refused,
                %peer,
                ?refusal,
                "connections refused since the last report (the last one named)"
            );
            tally.logged = Some(now);
            tally.refused = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_is_told_why_once_a_second_and_reset_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doorman = Doorman::new("test");
        for (refusal, told) in [(Refusal::Rate(1), true), (Refusal::PerAddress(1), false)] {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            doorman
                .refuse(stream, peer, refusal, |_| b"why".to_vec())
                .await;
            let mut got = Vec::new();
            let read = std::io::Read::read_to_end(&mut client, &mut got);
            if told {
                assert_eq!((read.unwrap(), &got[..]), (3, &b"why"[..]));
            } else {
                let reset = read.unwrap_err();
                assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset);
            }
        }
    }
}
