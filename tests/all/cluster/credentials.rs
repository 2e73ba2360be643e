//! Joining a NATS server that requires credentials: a host that has them
//! joins; one that does not serves what it holds alone.

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
