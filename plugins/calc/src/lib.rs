//! A line calculator: the example of an interactive byte-stream operation.
//! `calc/repl` reads lines of arithmetic as they arrive and answers each
//! one at once, on stdout, before it reads the next; a line it cannot
//! work out gets its reason on stderr. It ends when the caller closes its
//! side, with exit code 0 if every line was answered and 1 otherwise.

use opbox_sdk::raw::Pipes;
use opbox_sdk::{Context, Plugin, Result};

/// The longest line kept while waiting for its end.
const MAX_LINE: usize = 4096;

async fn repl(_ctx: Context, mut pipes: Pipes) -> Result<u8> {
    let mut pending = Vec::new();
    let mut failed = false;
    while let Some(chunk) = pipes.stdin.read().await {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            failed |= !answer(&mut pipes, &line[..end]).await?;
        }
        if pending.len() > MAX_LINE {
            pending.clear();
            pipes
                .stderr
                .write(format!("error: a line longer than {MAX_LINE} bytes\n"))
                .await?;
            failed = true;
        }
    }
    if !pending.is_empty() {
        failed |= !answer(&mut pipes, &std::mem::take(&mut pending)).await?;
    }
    Ok(u8::from(failed))
}

/// Answers one line; whether it could.
async fn answer(pipes: &mut Pipes, line: &[u8]) -> Result<bool> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return Ok(true);
    }
    match evaluate(text) {
        Ok(value) => {
            pipes.stdout.write(format!("{value}\n")).await?;
            Ok(true)
        }
        Err(why) => {
            pipes
                .stderr
                .write(format!("error: {why}: {text}\n"))
                .await?;
            Ok(false)
        }
    }
}

/// `+ - * /` and parentheses over whole numbers.
fn evaluate(text: &str) -> std::result::Result<i64, String> {
    let tokens: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut at = 0;
    let value = sum(&tokens, &mut at, 0)?;
    match tokens.get(at) {
        None => Ok(value),
        Some(c) => Err(format!("unexpected `{c}`")),
    }
}

const MAX_DEPTH: usize = 64;

fn sum(t: &[char], at: &mut usize, depth: usize) -> std::result::Result<i64, String> {
    let mut value = product(t, at, depth)?;
    while let Some(&op) = t.get(*at).filter(|c| matches!(c, '+' | '-')) {
        *at += 1;
        let rhs = product(t, at, depth)?;
        value = if op == '+' {
            value.checked_add(rhs)
        } else {
            value.checked_sub(rhs)
        }
        .ok_or("overflow")?;
    }
    Ok(value)
}

fn product(t: &[char], at: &mut usize, depth: usize) -> std::result::Result<i64, String> {
    let mut value = atom(t, at, depth)?;
    while let Some(&op) = t.get(*at).filter(|c| matches!(c, '*' | '/')) {
        *at += 1;
        let rhs = atom(t, at, depth)?;
        value = if op == '*' {
            value.checked_mul(rhs).ok_or("overflow")?
        } else {
            value.checked_div(rhs).ok_or("division by zero")?
        };
    }
    Ok(value)
}

fn atom(t: &[char], at: &mut usize, depth: usize) -> std::result::Result<i64, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    match t.get(*at) {
        Some('(') => {
            *at += 1;
            let value = sum(t, at, depth + 1)?;
            if t.get(*at) != Some(&')') {
                return Err("a `(` without its `)`".into());
            }
            *at += 1;
            Ok(value)
        }
        Some('-') => {
            *at += 1;
            atom(t, at, depth + 1)?
                .checked_neg()
                .ok_or_else(|| "overflow".into())
        }
        Some(c) if c.is_ascii_digit() => {
            let start = *at;
            while t.get(*at).is_some_and(char::is_ascii_digit) {
                *at += 1;
            }
            let digits: String = t[start..*at].iter().collect();
            digits.parse().map_err(|_| "a number too large".into())
        }
        Some(c) => Err(format!("unexpected `{c}`")),
        None => Err("the line ends too soon".into()),
    }
}

fn plugin() -> Plugin {
    Plugin::new().raw(
        "repl",
        "Answers each line of arithmetic (+ - * / and parentheses over whole numbers) as it arrives; errors go to stderr.",
        repl,
    )
}

opbox_sdk::export!(plugin);
