//! The `courier` binary: parse arguments, build a validated configuration, call the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
