//! The docs check: every `courier ...` and `courier-dlq ...` command line in README.md and
//! docs/*.md (fenced code blocks and inline code) names subcommands that exist and flags that
//! the subcommand's own `--help` lists, so a renamed or removed flag cannot stay documented.
//!
//! Only names are checked, not values or behaviour: the help of the real binaries is the
//! reference, read from `--help` of each subcommand path the docs use.

use crate::util::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One subcommand's `--help`, as far as the check needs it.
#[derive(Debug, Default)]
struct Help {
    /// Every `--long` and `-s` flag, and whether it takes a value (`--flag <VALUE>`).
    flags: HashMap<String, bool>,
    /// The subcommands it lists.
    commands: Vec<String>,
}

impl Help {
    /// Reads clap's long help: option lines are indented 2 (`  -h, --help`) or 6 spaces
    /// (`      --limit <LIMIT>`), their descriptions 10; commands are listed under `Commands:`.
    fn parse(text: &str) -> Self {
        let mut help = Self::default();
        let mut in_commands = false;
        for line in text.lines() {
            if line.trim().is_empty() {
                in_commands = false;
                continue;
            }
            if line.ends_with(':') && !line.starts_with(' ') {
                in_commands = line == "Commands:";
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let rest = line.trim_start();
            if in_commands && indent == 2 {
                if let Some(name) = rest.split_whitespace().next() {
                    help.commands.push(name.trim_end_matches(',').to_owned());
                }
                continue;
            }
            if (indent == 2 || indent == 6) && rest.starts_with('-') {
                // `-h, --help`, `--limit <LIMIT>`, `-o, --out <FILE>`, `--flag=<X>`: the names
                // up to the first word that is not one, and whether a value follows them.
                let words: Vec<&str> = rest.split_whitespace().collect();
                let names: Vec<&str> = words
                    .iter()
                    .map(|w| w.trim_end_matches(','))
                    .take_while(|w| w.starts_with('-'))
                    .collect();
                let takes_value = words.get(names.len()).is_some_and(|w| w.starts_with('<'))
                    || names.iter().any(|n| n.contains('='));
                for name in names {
                    let name = name.split_once('=').map_or(name, |(n, _)| n);
                    // Text outside the options (an about paragraph listing flags) may name a
                    // flag too: it can add one, never take a value away.
                    *help.flags.entry(name.to_owned()).or_default() |= takes_value;
                }
            }
        }
        help
    }
}

/// `--help` of every subcommand path, asked once each.
struct Helps {
    bins: HashMap<&'static str, PathBuf>,
    cache: HashMap<(String, Vec<String>), Help>,
}

impl Helps {
    fn get(&mut self, bin: &str, path: &[String]) -> &Help {
        let key = (bin.to_owned(), path.to_vec());
        let exe = self.bins[bin].clone();
        self.cache.entry(key).or_insert_with(|| {
            let mut cmd = Command::new(&exe);
            cmd.args(path)
                .arg("--help")
                .env_remove("AMQP_URL")
                .env("COLUMNS", "100");
            let out = output_within(&mut cmd, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "{bin} {} --help failed: {}",
                path.join(" "),
                stderr(&out)
            );
            Help::parse(&stdout(&out))
        })
    }
}

/// A command line found in the docs.
#[derive(Debug)]
struct Found {
    /// `README.md:375`.
    place: String,
    /// The words from the binary's name on.
    words: Vec<String>,
}

/// Splits `line` like a shell would, well enough for docs: quotes group, `#` starts a comment,
/// and `|`, `;`, `&`, `&&`, `||`, `(`, `$(`, `)` and redirections end a command.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, commands: &mut Vec<Vec<String>>| {
        if *in_word {
            commands.last_mut().expect("one").push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                in_word = true;
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut commands),
            '|' | ';' | '&' | '(' | ')' | '`' => {
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(Vec::new());
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(Vec::new());
            }
            '>' | '<' => {
                // A redirection: what follows is a file, not part of the command. `2>`
                // leaves its `2` behind as a word: drop it.
                if word == "2" || word == "1" {
                    word.clear();
                    in_word = false;
                }
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(vec!["<redirect>".to_owned()]);
            }
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands
}

/// The words of `command` from `courier` or `courier-dlq` on, if it runs one of them:
/// `VAR=value` assignments and wrappers such as `exec` may come first, and the binary may be
/// named by a path (`./target/release/courier`).
fn courier_command(command: &[String]) -> Option<Vec<String>> {
    const WRAPPERS: [&str; 8] = ["do", "then", "else", "exec", "time", "sudo", "nohup", "env"];
    let start = command.iter().position(|w| {
        !(WRAPPERS.contains(&w.as_str())
            || w.split_once('=')
                .is_some_and(|(name, _)| !name.is_empty() && !name.starts_with('-')))
    })?;
    let bin = Path::new(&command[start]).file_name()?.to_str()?;
    matches!(bin, "courier" | "courier-dlq").then(|| {
        let mut words = command[start..].to_vec();
        words[0] = bin.to_owned();
        words
    })
}

/// Every courier and courier-dlq command line of a markdown file: fenced code blocks (a line
/// ending in `\` continues on the next; a `$ ` prompt is dropped) and inline code spans that
/// start with the binary's name.
fn commands_in(file: &str, text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim_start().starts_with("```") {
            fenced = !fenced;
            pending = None;
            continue;
        }
        let lines: Vec<(usize, String)> = if fenced {
            let line = raw.trim_start();
            let line = line.strip_prefix("$ ").unwrap_or(line);
            let (start, mut joined) = pending.take().unwrap_or((n, String::new()));
            if let Some(cont) = line.strip_suffix('\\') {
                joined.push_str(cont);
                joined.push(' ');
                pending = Some((start, joined));
                continue;
            }
            joined.push_str(line);
            vec![(start, joined)]
        } else {
            raw.split('`')
                .skip(1)
                .step_by(2)
                .filter(|span| span.starts_with("courier ") || span.starts_with("courier-dlq "))
                .map(|span| (n, span.to_owned()))
                .collect()
        };
        for (start, line) in lines {
            for command in shell_commands(&line) {
                if let Some(words) = courier_command(&command) {
                    found.push(Found {
                        place: format!("{file}:{start}"),
                        words,
                    });
                }
            }
        }
    }
    found
}

/// What is wrong with one command line: subcommands are followed through each level's
/// `Commands:`, and every flag must be in the help of the subcommand it is given to.
fn check(helps: &mut Helps, words: &[String]) -> Vec<String> {
    let bin = words[0].as_str();
    let mut path: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    let mut rest = words[1..].iter();
    while let Some(word) = rest.next() {
        if word == "<redirect>" {
            break;
        }
        let help = helps.get(bin, &path);
        if word == "--" {
            break;
        }
        if word.starts_with('-') && word.len() > 1 && !word.starts_with("---") {
            let name = word.split_once('=').map_or(word.as_str(), |(n, _)| n);
            match help.flags.get(name) {
                Some(&takes_value) => {
                    if takes_value && !word.contains('=') {
                        rest.next();
                    }
                }
                None => problems.push(format!(
                    "{name} is not an option of `{}`",
                    std::iter::once(bin)
                        .chain(path.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
            }
            continue;
        }
        if help.commands.iter().any(|c| c == word) {
            path.push(word.clone());
        } else if !help.commands.is_empty() {
            problems.push(format!("`{bin} {word}`: no such subcommand"));
            break;
        }
        // Otherwise a positional argument (an id, a file, a placeholder).
    }
    problems
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo_path("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo_path("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_documented_command_line_uses_flags_its_help_lists() {
    let mut helps = Helps {
        bins: HashMap::from([
            ("courier", PathBuf::from(env!("CARGO_BIN_EXE_courier"))),
            ("courier-dlq", courier_dlq_bin()),
        ]),
        cache: HashMap::new(),
    };
    let root = repo_path("");
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("markdown file");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for f in commands_in(&name, &text) {
            checked += 1;
            let wrong = check(&mut helps, &f.words);
            if !wrong.is_empty() {
                problems
                    .entry(format!("{}: {}", f.place, f.words.join(" ")))
                    .or_default()
                    .extend(wrong);
            }
        }
    }
    // README.md alone has more than 30; a parser that finds none checks nothing.
    assert!(
        checked > 50,
        "only {checked} command lines found in the docs"
    );
    assert!(
        problems.is_empty(),
        "command lines in the docs that --help contradicts:\n{}",
        problems
            .iter()
            .map(|(line, why)| format!("  {line}\n    {}", why.join("\n    ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The parser itself, on lines like the docs': quotes, comments, pipes, continuations,
/// prompts, wrappers, and a flag that is not there.
#[test]
fn the_docs_check_reads_command_lines_as_a_shell_would() {
    let md = "intro `courier-dlq list --limit 20` and `--limit` alone\n\
              ```sh\n\
              $ courier-dlq --prefix demo. replay --error-contains \"HTTP 503\" --dry-run  # comment --nope\n\
              ID=$(courier-dlq list --json | jq -r .id) && courier work \\\n\
                --queue q --endpoint http://x\n\
              AMQP_URL=amqp://u@h ./target/release/courier topology apply > out.txt --ignored\n\
              cargo run -p dlq-tool --bin courier-dlq -- stats\n\
              ```\n";
    let found: Vec<String> = commands_in("x.md", md)
        .into_iter()
        .map(|f| format!("{} {}", f.place, f.words.join(" ")))
        .collect();
    assert_eq!(
        found,
        [
            "x.md:1 courier-dlq list --limit 20",
            "x.md:3 courier-dlq --prefix demo. replay --error-contains HTTP 503 --dry-run",
            "x.md:4 courier-dlq list --json",
            "x.md:4 courier work --queue q --endpoint http://x",
            "x.md:6 courier topology apply",
        ]
    );

    let help = Help::parse(
        "Usage: x\n\nCommands:\n  list  One row\n          more text\n  help  Print\n\n\
         Options:\n      --limit <LIMIT>\n          Examine at most\n          --not-a-flag here\n\
         \x20 -o, --out <FILE>\n          The file\n      --json\n  -h, --help\n          Print help\n",
    );
    assert_eq!(help.commands, ["list", "help"]);
    let mut flags: Vec<(&str, bool)> = help.flags.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    flags.sort();
    assert_eq!(
        flags,
        [
            ("--help", false),
            ("--json", false),
            ("--limit", true),
            ("--out", true),
            ("-h", false),
            ("-o", true),
        ]
    );

    // A flag the real help does not list is reported with the subcommand it was given to.
    let mut helps = Helps {
        bins: HashMap::from([("courier", PathBuf::from(env!("CARGO_BIN_EXE_courier")))]),
        cache: HashMap::new(),
    };
    let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    assert!(check(
        &mut helps,
        &words("courier --prefix p. topology check --management-url http://x")
    )
    .is_empty());
    assert_eq!(
        check(&mut helps, &words("courier topology apply --no-such-flag")),
        ["--no-such-flag is not an option of `courier topology apply`"]
    );
    assert_eq!(
        check(&mut helps, &words("courier work --queue q --clean")),
        ["--clean is not an option of `courier work`"]
    );
    assert_eq!(
        check(&mut helps, &words("courier frobnicate --x")),
        ["`courier frobnicate`: no such subcommand"]
    );
}
