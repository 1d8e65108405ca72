//! `courier-dlq`: inspect, export and replay Courier's dead letters without losing one.
//!
//! This file only parses arguments, runs the command and maps the outcome to an exit code
//! (0 done, a closed stdout pipe included; 1 failed; 2 usage). The commands live in
//! [`commands`]; what they share:
//! - [`inspect`]: look at messages and give every one back in place (stats, list, show,
//!   `--dry-run`).
//! - [`pass`]: replay, export or purge exactly the messages present at the start, each copy
//!   confirmed before the original is acked.
//! - [`jsonl`] and [`export_file`]: the exact export format and its fsynced batches.
//! - [`broker`]: look-ups and the exclusive consumer, with errors that name the fix.
//! - [`console`]: the web console (`courier-dlq console`), over the same commands.
//! - [`filter`]: the selection flags, validated; [`stats`]: the bounded aggregates of `stats`
//!   and `--dry-run`; [`render`] and [`output`]: values, times and tables for people.
//!
//! The dead-letter contract itself (reading `x-courier-*` and `x-death`, replay headers and
//! destination) is the library's [`courier::deadletter`]; the ack rule of a pass is the
//! library's [`courier::ack`], shared with the worker.

mod audit;
mod cli;
mod commands;
mod console;
mod error;
mod export_file;
mod filter;
mod fix;
mod groups;
mod inspect;
mod journal;
mod jsonl;
mod output;
mod pass;
mod progress;
mod render;
mod send;
mod stats;
#[cfg(test)]
mod testutil;
mod watch;

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

fn init_logging() {
    // Quiet by default: the tool prints its own summary; RUST_LOG=info shows more. Colour only
    // on a terminal, as `courier` does (the library's set-up).
    courier::logging::init(courier::logging::Format::Text, "warn,lapin=off");
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let runtime = match courier::runtime::multi_thread() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            if !error::is_broken_pipe(&e) {
                // Library errors are already redacted; redact again in case a URL slipped into
                // a context string.
                eprintln!("error: {}", courier::amqp::redact(&format!("{e:#}")));
            }
            ExitCode::from(error::exit_code(&e))
        }
    }
}
