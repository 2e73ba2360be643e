//! `opbox call` of a byte-stream operation: standard input goes to its
//! stdin as it comes, its stdout and stderr to ours as they come, and its
//! exit code is the command's.

use std::io::{Read, Write};

use anyhow::Result;
use opbox::envelope::client::{Client, ClientError, RawEvent};
use serde_json::Value;

/// The operation ended with a nonzero exit code, which the command ends
/// with too.
#[derive(Debug, thiserror::Error)]
#[error("the operation exited with {0}")]
pub(crate) struct Exited(pub(crate) u8);

/// Runs `operation` with `input` as its arguments, piping the standard
/// streams through it.
pub(crate) async fn pipe(client: &Client, operation: &str, input: Value) -> Result<()> {
    let mut call = client.run_raw(operation, input).await?;
    // Standard input is read on a thread of its own (a read of a terminal
    // cannot be cancelled); what it reads is sent within the host's credit.
    let (chunks, mut read) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0; 64 << 10];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || chunks.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let input = call.input();
    let feeding = tokio::spawn(async move {
        while let Some(chunk) = read.recv().await {
            input.write(&chunk).await?;
        }
        input.close()
    });
    let ended = loop {
        match call.next().await {
            Some(Ok(RawEvent::Stdout(bytes))) => write_all(&mut std::io::stdout(), &bytes)?,
            Some(Ok(RawEvent::Stderr(bytes))) => write_all(&mut std::io::stderr(), &bytes)?,
            Some(Ok(RawEvent::Exit(code))) => break Ok(code),
            Some(Err(error)) => break Err(error),
            None => break Err(ClientError::Closed),
        }
    };
    feeding.abort();
    match ended? {
        0 => Ok(()),
        code => Err(Exited(code).into()),
    }
}

/// Writes and flushes: an interactive caller sees each answer at once.
fn write_all(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}
