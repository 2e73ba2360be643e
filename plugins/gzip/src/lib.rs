//! Compresses and decompresses byte streams with gzip: the example of a
//! byte-stream operation (the raw carriage). Both run in constant memory
//! whatever the size streamed, and however well it was compressed: input
//! is pushed through the coder a piece at a time and what comes out is
//! written before the next piece goes in, so a caller that stops reading
//! holds the plugin back.

use std::io::Write;

use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use opbox_sdk::raw::{Pipes, Writer};
use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// How hard to compress.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// 0 (store only) to 9 (smallest); 6 when absent.
    #[schemars(range(max = 9))]
    level: Option<u32>,
}

/// What a coder has produced so far; emptied into stdout after each chunk.
type Produced = Vec<u8>;

/// How much compressed input is decoded at once: deflate expands a byte to
/// at most about 1,032, so what one piece produces stays near 512 KiB
/// however well the input was compressed.
const DECODE_PIECE: usize = 512;

/// Pushes stdin through `write` into the coder, `piece` bytes at a time,
/// hands what each piece produced to stdout, then finishes the coder with
/// `finish`.
async fn pump<W: Write>(
    mut coder: W,
    pipes: &mut Pipes,
    piece: usize,
    produced: impl Fn(&mut W) -> &mut Produced,
    finish: impl FnOnce(W) -> std::io::Result<Produced>,
) -> Result<()> {
    while let Some(chunk) = pipes.stdin.read().await {
        for piece in chunk.chunks(piece) {
            coder.write_all(piece).map_err(invalid)?;
            let out = std::mem::take(produced(&mut coder));
            send(&mut pipes.stdout, out).await?;
        }
    }
    let rest = finish(coder).map_err(invalid)?;
    send(&mut pipes.stdout, rest).await
}

async fn send(stdout: &mut Writer, bytes: Vec<u8>) -> Result<()> {
    Ok(stdout.write(bytes).await?)
}

fn invalid(e: std::io::Error) -> Error {
    Error::new("INVALID_DATA", e.to_string())
}

async fn compress(_ctx: Context, settings: Settings, mut pipes: Pipes) -> Result<u8> {
    let level = Compression::new(settings.level.unwrap_or(6).min(9));
    let encoder = GzEncoder::new(Vec::new(), level);
    // What compressing produces is smaller than what goes in: whole chunks.
    let piece = opbox_sdk::raw::READ_BYTES;
    pump(
        encoder,
        &mut pipes,
        piece,
        GzEncoder::get_mut,
        GzEncoder::finish,
    )
    .await?;
    Ok(0)
}

async fn decompress(_ctx: Context, mut pipes: Pipes) -> Result<u8> {
    let decoder = GzDecoder::new(Vec::new());
    match pump(
        decoder,
        &mut pipes,
        DECODE_PIECE,
        GzDecoder::get_mut,
        GzDecoder::finish,
    )
    .await
    {
        Ok(()) => Ok(0),
        // Not gzip, or cut short: said on stderr, exit code 1.
        Err(e) if e.code() == "INVALID_DATA" => {
            let _ = pipes.stderr.write(format!("gzip: {}\n", e.message())).await;
            Ok(1)
        }
        Err(e) => Err(e),
    }
}

fn plugin() -> Plugin {
    Plugin::new()
        .raw("compress", "Compresses stdin to gzip on stdout.", compress)
        .raw(
            "decompress",
            "Decompresses gzip from stdin to stdout; exit code 1 and a line on stderr if it is not gzip.",
            decompress,
        )
}

opbox_sdk::export!(plugin);
