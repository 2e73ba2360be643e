//! `textkit`: text statistics.
//!
//! `textkit/stats` over `{"text": "..."}` counts lines, words and characters
//! and lists the five most frequent words. `textkit/summary` composes: it
//! calls `textkit/stats` and `echo/echo` through the host and sums them up
//! in one line.

use std::collections::HashMap;

use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatsInput {
    /// The text to measure.
    text: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Stats {
    lines: usize,
    words: usize,
    characters: usize,
    /// The five most frequent words (lower-cased), most frequent first; ties
    /// in alphabetical order.
    top_words: Vec<WordCount>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct WordCount {
    word: String,
    count: usize,
}

async fn stats(_ctx: Context, input: StatsInput) -> Result<Stats> {
    let text = input.text;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut words = 0;
    for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'') {
        let word = word.trim_matches('\'');
        if word.is_empty() {
            continue;
        }
        words += 1;
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut top_words: Vec<WordCount> = counts
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    top_words.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top_words.truncate(5);
    Ok(Stats {
        lines: text.lines().count(),
        words,
        characters: text.chars().count(),
        top_words,
    })
}

#[derive(Serialize, JsonSchema)]
struct Summary {
    /// One line about the text, e.g. `12 words on 2 lines; mostly "the"`.
    summary: String,
    /// What `textkit/stats` said.
    stats: Stats,
}

/// Composes two operations through the host: `textkit/stats` (this plugin,
/// called like any other) and `echo/echo` (another plugin).
async fn summary(ctx: Context, input: StatsInput) -> Result<Summary> {
    let stats: Stats = ctx
        .call("textkit/stats", &serde_json::json!({ "text": input.text }))
        .await?;
    let mostly = match stats.top_words.first() {
        Some(top) => format!("; mostly \"{}\"", top.word),
        None => String::new(),
    };
    let line = format!(
        "{} on {}{mostly}",
        counted(stats.words, "word"),
        counted(stats.lines, "line")
    );
    let summary: String = ctx.call("echo/echo", &line).await?;
    Ok(Summary { summary, stats })
}

/// `1 word`, `2 words`.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn plugin() -> Plugin {
    Plugin::new()
        .query(
            "stats",
            "Counts lines, words and characters, and lists the five most frequent words.",
            stats,
        )
        .query(
            "summary",
            "Sums a text up in one line, by calling textkit/stats and echo/echo.",
            summary,
        )
}

opbox_sdk::export!(plugin);
