//! What one tenant may use at once and per second.
//!
//! Admission is per tenant: a tenant over its quota is refused at once with
//! `RESOURCE_EXHAUSTED`, before it takes anything shared (an instance slot, a
//! CPU lane), so a tenant flooding the host only ever waits on itself.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::call::{CallError, ErrorCode};

/// A tenant's quotas, as `[tenants.quotas]` writes them.
///
/// | field | default | counts |
/// |---|---|---|
/// | `max_concurrent` | 64 | queries and mutations in flight from callers |
/// | `calls_per_second` | none (unlimited) | calls and subscriptions started, per second, sustained; `0.5` is one every 2 s |
/// | `burst` | `calls_per_second`, at least 1 | calls that may start at once after a quiet spell |
/// | `max_subscriptions` | 64 | subscriptions open at once |
/// | `max_instances` | an even share of `[limits] max_instances` | plugin instances alive for this tenant, nested calls included |
/// | `memory_bytes` | none | a cap on `memory_bytes` of the tenant's own plugins |
///
/// Calls that operations make to other operations count against
/// `max_instances` only: they are part of a call already admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Queries and mutations in flight at once.
    pub max_concurrent: u32,
    /// Calls and subscriptions started per second, sustained.
    pub calls_per_second: Option<f64>,
    /// Calls allowed in a burst; `calls_per_second` when unset.
    pub burst: Option<u32>,
    /// Subscriptions open at once.
    pub max_subscriptions: u32,
    /// Plugin instances alive at once for this tenant.
    pub max_instances: Option<u32>,
    /// The most linear memory any of the tenant's plugins may ask for.
    pub memory_bytes: Option<usize>,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            calls_per_second: None,
            burst: None,
            max_subscriptions: 64,
            max_instances: None,
            memory_bytes: None,
        }
    }
}

/// A tenant's quotas and what it uses of them now.
pub(crate) struct Usage {
    rate: Option<(DefaultDirectRateLimiter, f64)>,
    calls: Arc<Semaphore>,
    max_concurrent: u32,
    subscriptions: Arc<Semaphore>,
    max_subscriptions: u32,
    instances: Arc<Semaphore>,
    max_instances: u32,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("calls_per_second", &self.rate.as_ref().map(|(_, r)| r))
            .field("max_concurrent", &self.max_concurrent)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_instances", &self.max_instances)
            .finish_non_exhaustive()
    }
}

/// What a call holds while it is admitted; dropping it gives it back.
pub type Admission = OwnedSemaphorePermit;

impl Usage {
    /// Usage under `quotas`, with `fair_instances` as the instance share
    /// when the quotas name none.
    pub(crate) fn new(quotas: &Quotas, fair_instances: u32) -> Self {
        let rate = quotas.calls_per_second.and_then(|rate| {
            // Validated with the config; a rate that is not positive would
            // refuse everything, so it is read as "no rate limit".
            let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
            let burst = quotas
                .burst
                .or_else(|| u32::try_from(rate as u64).ok())
                .and_then(NonZeroU32::new)
                .unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)?.allow_burst(burst);
            Some((RateLimiter::direct(quota), rate))
        });
        let max_instances = quotas.max_instances.unwrap_or(fair_instances).max(1);
        Self {
            rate,
            calls: semaphore(quotas.max_concurrent),
            max_concurrent: quotas.max_concurrent,
            subscriptions: semaphore(quotas.max_subscriptions),
            max_subscriptions: quotas.max_subscriptions,
            instances: semaphore(max_instances),
            max_instances,
        }
    }

    /// Admits a query or mutation from a caller: a concurrency slot, then a
    /// token from the rate bucket.
    pub(crate) fn admit_call(&self) -> Result<Admission, CallError> {
        let slot = take(&self.calls, "max_concurrent", self.max_concurrent)?;
        self.check_rate()?;
        Ok(slot)
    }

    /// Admits a subscription from a caller.
    pub(crate) fn admit_subscription(&self) -> Result<Admission, CallError> {
        let slot = take(
            &self.subscriptions,
            "max_subscriptions",
            self.max_subscriptions,
        )?;
        self.check_rate()?;
        Ok(slot)
    }

    /// One of the tenant's instance slots, for as long as an instance lives.
    pub(crate) fn instance(&self) -> Result<Admission, CallError> {
        take(&self.instances, "max_instances", self.max_instances)
    }

    fn check_rate(&self) -> Result<(), CallError> {
        let Some((limiter, rate)) = &self.rate else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_ms =
                u64::try_from(wait.max(Duration::from_millis(1)).as_millis()).unwrap_or(u64::MAX);
            CallError::new(
                ErrorCode::ResourceExhausted,
                format!("the tenant's quota of {rate} calls per second is used up"),
            )
            .with_details(json!({
                "limit": "tenant.calls_per_second",
                "value": rate,
                "retry_after_ms": retry_after_ms,
            }))
        })
    }
}

fn semaphore(permits: u32) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        usize::try_from(permits).unwrap_or(Semaphore::MAX_PERMITS),
    ))
}

fn take(slots: &Arc<Semaphore>, limit: &str, value: u32) -> Result<Admission, CallError> {
    slots.clone().try_acquire_owned().map_err(|_| {
        CallError::new(
            ErrorCode::ResourceExhausted,
            format!("the tenant's quota {limit} = {value} is used up"),
        )
        .with_details(json!({ "limit": format!("tenant.{limit}"), "value": value }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_slots_come_back_when_dropped() {
        let usage = Usage::new(
            &Quotas {
                max_concurrent: 2,
                ..Quotas::default()
            },
            8,
        );
        let (a, _b) = (usage.admit_call().unwrap(), usage.admit_call().unwrap());
        let refused = usage.admit_call().unwrap_err();
        assert_eq!(refused.code, ErrorCode::ResourceExhausted);
        assert_eq!(refused.details.unwrap()["limit"], "tenant.max_concurrent");
        drop(a);
        drop(usage.admit_call().unwrap());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_says_when_to_retry() {
        let usage = Usage::new(
            &Quotas {
                calls_per_second: Some(2.0),
                burst: Some(3),
                ..Quotas::default()
            },
            8,
        );
        for _ in 0..3 {
            drop(usage.admit_call().unwrap());
        }
        let refused = usage.admit_call().unwrap_err();
        let details = refused.details.unwrap();
        assert_eq!(details["limit"], "tenant.calls_per_second");
        // One token comes back every 500 ms.
        let retry = details["retry_after_ms"].as_u64().unwrap();
        assert!((1..=500).contains(&retry), "{retry}");
        // A refusal for concurrency does not spend a token, and a refusal
        // for rate gives the concurrency slot back.
        assert_eq!(usage.calls.available_permits(), 64);
    }

    #[test]
    fn the_instance_share_defaults_to_the_fair_share() {
        let usage = Usage::new(&Quotas::default(), 3);
        let _held: Vec<_> = (0..3).map(|_| usage.instance().unwrap()).collect();
        let refused = usage.instance().unwrap_err();
        assert_eq!(refused.details.unwrap()["limit"], "tenant.max_instances");
    }
}
