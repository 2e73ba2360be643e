//! Joining a NATS server that requires credentials: a host that has them
//! joins; one that does not serves what it holds alone. And the account
//! layout operators are told to use, on a real server.

use std::time::Duration;

use futures::StreamExt;
use opbox::cluster::ClusterConfig;
use opbox::{CallRequest, ErrorCode};
use serde_json::json;

use super::Nats;
use crate::util::TestHost;

/// A host in the cluster on `nats`, joining with `credentials` set on its
/// `[cluster]`; the examples when `holds`, else nothing.
async fn joining(
    nats: &Nats,
    holds: bool,
    credentials: impl FnOnce(&mut ClusterConfig),
) -> TestHost {
    let mut cluster = ClusterConfig::new(nats.url()).with_key(super::KEY);
    credentials(&mut cluster);
    TestHost::with_config(move |config| {
        config.cluster = Some(cluster);
        if !holds {
            config.examples = false;
            config.plugins.clear();
        }
    })
    .await
}

/// Whether `host` gets an answer to `echo/echo`, which it does not hold;
/// the error otherwise.
async fn forwards(host: &TestHost) -> Result<(), opbox::CallError> {
    let input = json!({"through": "the cluster"});
    let output = host
        .host
        .dispatcher()
        .call(CallRequest::new("echo/echo", input.clone()))
        .await?;
    assert_eq!(output, input);
    Ok(())
}

#[tokio::test]
async fn hosts_join_with_a_token_or_a_user_and_password_and_not_without() {
    let with_token = Nats::requiring(&["--auth", "s3cret"]);
    let _holder = joining(&with_token, true, |c| c.token = Some("s3cret".into())).await;
    let entry = joining(&with_token, false, |c| c.token = Some("s3cret".into())).await;
    forwards(&entry).await.unwrap();
    let wrong = joining(&with_token, false, |c| c.token = Some("guess".into())).await;
    let error = forwards(&wrong).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");

    let with_user = Nats::requiring(&["--user", "opbox", "--pass", "hunter2"]);
    let user = |password: &str| {
        let password = password.to_owned();
        move |c: &mut ClusterConfig| {
            c.user = Some("opbox".into());
            c.password = Some(password);
        }
    };
    let _holder = joining(&with_user, true, user("hunter2")).await;
    let entry = joining(&with_user, false, user("hunter2")).await;
    forwards(&entry).await.unwrap();
    let wrong = joining(&with_user, false, user("guess")).await;
    let error = forwards(&wrong).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
}

/// The layout `docs/security.md` gives operators: the hosts in a NATS
/// account of their own, every other application in another. Hosts of the
/// account forward to each other; an application of the other account sees
/// none of their messages, and what it publishes on their subjects reaches
/// no host.
#[tokio::test]
async fn hosts_in_an_account_of_their_own_are_out_of_reach_of_other_accounts() {
    let layout = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        layout.path(),
        r#"
accounts {
  OPBOX: { jetstream: enabled, users: [ { user: host-1, password: one }, { user: host-2, password: two } ] }
  APPS:  { users: [ { user: app, password: app } ] }
}
"#,
    )
    .unwrap();
    let config = layout.path().to_str().unwrap();
    let nats = Nats::with_args(None, tempfile::tempdir().unwrap(), &["-c", config]);
    let host = |user: &'static str, password: &'static str| {
        move |c: &mut ClusterConfig| {
            c.user = Some(user.into());
            c.password = Some(password.into());
        }
    };
    let _holder = joining(&nats, true, host("host-1", "one")).await;
    let entry = joining(&nats, false, host("host-2", "two")).await;

    // The hosts forward to each other as before.
    forwards(&entry).await.unwrap();
    // An application of the other account: a call it publishes on the
    // holder's subject has nobody to answer it.
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .connect(nats.url())
        .await
        .unwrap();
    let subject = format!(
        "opbox.{}.call.default.echo%2Fecho",
        ClusterConfig::new("").name
    );
    // In the hosts' account the holder listens there (an unsealed call gets
    // no answer, so the asker waits out its timeout).
    let insider = async_nats::ConnectOptions::with_user_and_password("host-1".into(), "one".into())
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(nats.url())
        .await
        .unwrap();
    let asked = insider.request(subject.clone(), "{}".into()).await;
    let error = asked.expect_err("an unsealed call gets no answer");
    assert_eq!(
        error.kind(),
        async_nats::client::RequestErrorKind::TimedOut,
        "{error:?}"
    );
    let asked = app.request(subject.clone(), "{}".into()).await;
    let error = asked.expect_err("no host hears the other account");
    assert_eq!(
        error.kind(),
        async_nats::client::RequestErrorKind::NoResponders,
        "{error:?}"
    );
    // Listening to all it may hear, it hears none of the cluster's traffic.
    let mut heard = app.subscribe(">").await.unwrap();
    app.publish("probe", "".into()).await.unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(10), heard.next()).await;
    assert_eq!(probe.unwrap().unwrap().subject.as_str(), "probe");
    // Of the cluster's traffic, the application heard nothing: only what
    // it sent itself.
    forwards(&entry).await.unwrap();
    app.publish("probe", "".into()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), heard.next()).await;
    let next = next.unwrap().unwrap();
    assert_eq!(next.subject.as_str(), "probe", "heard {next:?}");
}
