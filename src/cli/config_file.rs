//! The configuration file (`--config FILE`, or `RELAY_CONFIG`): a TOML file
//! whose top-level keys are the relay's long flags without `--`
//! (`max-receivers = 5000`). Precedence: a flag on the command line, then
//! its `RELAY_*` variable, then the file, then the default. A key that is
//! not a flag is refused with its name and line.
//!
//! clap has no file source, so the file's values become flags placed
//! before the real arguments, leaving out every key whose flag or variable
//! is set: clap then parses and validates them like any other (types,
//! ranges, options that need each other), and an error about such a value
//! is told with where it came from ([`ConfigError::Arg`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use thiserror::Error;

/// The id of the `--config` argument.
pub(crate) const CONFIG_ID: &str = "config";

/// Why the command line and the configuration file cannot be used.
#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A key that is no option of the relay.
    #[error("config file {path}, line {line}: unknown key {key:?}{hint}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its line (1-based; 0 if not found).
        line: usize,
        /// A suggestion, or empty.
        hint: String,
    },
    /// A key whose value has the wrong shape (a table, a list for a
    /// single value, a non-boolean for a switch).
    #[error("config file {path}, line {line}: key {key:?}: {what}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The command line, a variable or a file value is invalid (clap's
    /// message, and where the value came from when not from a flag).
    #[error("{}{}", .0.render().to_string().trim_end(), .1.as_deref().map(|n| format!("\n  note: {n}")).unwrap_or_default())]
    Arg(Box<clap::Error>, Option<String>),
}

impl ConfigError {
    /// Whether this is `--help` or `--version` (printed to stdout, exit 0).
    pub(crate) fn is_display(&self) -> bool {
        matches!(self, ConfigError::Arg(e, _)
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand))
    }

    /// Prints `--help`/`--version` or exits with clap's own status.
    pub(crate) fn clap_exit(&self) -> Option<i32> {
        match self {
            ConfigError::Arg(e, _) if self.is_display() => {
                let _ = e.print();
                Some(e.exit_code())
            }
            _ => None,
        }
    }
}

/// Where the file's values went.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileValues {
    /// The file.
    pub(crate) path: PathBuf,
    /// Arg ids set from the file (not overridden), with their keys' lines.
    pub(crate) lines: HashMap<String, usize>,
}

/// A parsed command line with the file merged in.
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    /// The typed command line.
    pub(crate) cli: T,
    /// What clap matched (value sources).
    pub(crate) matches: ArgMatches,
    /// The configuration file, if one was given.
    pub(crate) file: Option<FileValues>,
}

impl<T> Parsed<T> {
    /// Where arg `id`'s value came from: `flag`, `env`, `file`, `default`,
    /// or `unset`.
    pub(crate) fn source_of(&self, id: &str) -> &'static str {
        if self.file.as_ref().is_some_and(|f| f.lines.contains_key(id)) {
            return "file";
        }
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        }
    }
}

/// The line of `key` in `text` (1-based), 0 if not found.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let line = l.trim();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|rest| rest.trim_start().starts_with('='))
                || line == format!("[{key}]")
        })
        .map_or(0, |i| i + 1)
}

/// The `--config` path given (at any level, it is global).
fn config_path(m: &ArgMatches) -> Option<PathBuf> {
    if let Ok(Some(p)) = m.try_get_one::<PathBuf>(CONFIG_ID) {
        return Some(p.clone());
    }
    m.subcommand().and_then(|(_, sub)| config_path(sub))
}

/// The relay options a file may set: `keys`' args by long name.
fn options(keys: &Command) -> HashMap<String, Arg> {
    keys.get_arguments()
        .filter(|a| !is_meta(a))
        .filter_map(|a| Some((a.get_long()?.to_owned(), a.clone())))
        .collect()
}

/// `--help`, `--version` and `--config` themselves.
fn is_meta(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version" | CONFIG_ID)
}

/// Whether `a` takes a list (comma-separated or repeated).
fn takes_list(a: &Arg) -> bool {
    a.get_value_delimiter().is_some() || matches!(a.get_action(), ArgAction::Append)
}

/// A TOML scalar as a flag's value text.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// The flags a file's `key = value` stands for (none for a switch set to
/// false), or what is wrong with its value.
fn as_flags(long: &str, arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("expected true or false".into()),
        };
    }
    let text = match value {
        toml::Value::Array(items) if takes_list(arg) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .ok_or("expected a list of strings or numbers")?
            .join(","),
        toml::Value::Array(_) => return Err("expected one value, not a list".into()),
        toml::Value::Table(_) => {
            return Err("tables are not used: every key is at the top level".into())
        }
        v => scalar(v).unwrap_or_default(),
    };
    if text.is_empty() && takes_list(arg) {
        return Ok(Vec::new());
    }
    Ok(vec![format!("--{long}={text}")])
}

/// Parses `args` as `T` with the configuration file merged in: the file's
/// keys are checked against the options of `keys` (the relay's options).
pub(crate) fn parse<T: clap::Parser>(
    args: Vec<OsString>,
    keys: &Command,
) -> Result<Parsed<T>, ConfigError> {
    let cmd = T::command();
    let first = cmd.clone().ignore_errors(true).try_get_matches_from(&args);
    let path = first.as_ref().ok().and_then(config_path);
    let (mut merged, mut file) = (args.clone(), None);
    if let (Ok(first), Some(path)) = (&first, path) {
        let (flags, values) = read(&path, keys, first)?;
        // The file's flags first: the program name, then them, then the
        // real arguments (a subcommand and its own must come last).
        merged = args.iter().take(1).cloned().collect();
        merged.extend(flags.into_iter().map(OsString::from));
        merged.extend(args.iter().skip(1).cloned());
        file = Some(values);
    }
    let explain = |e: clap::Error| {
        let note = note(&e, &args, keys, file.as_ref());
        ConfigError::Arg(Box::new(e), note)
    };
    let matches = cmd.try_get_matches_from(&merged).map_err(explain)?;
    let cli = T::from_arg_matches(&matches).map_err(explain)?;
    Ok(Parsed { cli, matches, file })
}

/// Reads the file at `path`: the flags its values stand for (those not
/// set by a flag or variable in `first`), and where they came from.
fn read(
    path: &Path,
    keys: &Command,
    first: &ArgMatches,
) -> Result<(Vec<String>, FileValues), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let options = options(keys);
    let mut flags = Vec::new();
    let mut values = FileValues {
        path: path.to_owned(),
        lines: HashMap::new(),
    };
    for (key, value) in &table {
        let line = line_of(&text, key);
        if value.is_table() {
            return Err(ConfigError::BadValue {
                path: path.to_owned(),
                key: key.clone(),
                line,
                what: "tables are not used: every key is at the top level".into(),
            });
        }
        let Some(arg) = options.get(key.as_str()) else {
            let dashed = key.replace('_', "-");
            let hint = if key == CONFIG_ID {
                ": a config file cannot name another".to_owned()
            } else if options.contains_key(&dashed) {
                format!(": keys are spelled like the flags, {dashed}")
            } else {
                ": every key is a long flag of `bitstream-relay --help` without --".to_owned()
            };
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                line,
                hint,
            });
        };
        let id = arg.get_id().as_str();
        let these = as_flags(key, arg, value).map_err(|what| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            line,
            what,
        })?;
        if matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !these.is_empty() {
            values.lines.insert(id.to_owned(), line);
        }
        flags.extend(these);
    }
    Ok((flags, values))
}

/// Where the value clap complains about came from, when not from a flag.
fn note(
    e: &clap::Error,
    args: &[OsString],
    keys: &Command,
    file: Option<&FileValues>,
) -> Option<String> {
    let Some(ContextValue::String(what)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = what.split_whitespace().next()?.trim_start_matches('-');
    let arg = keys.get_arguments().find(|a| a.get_long() == Some(long))?;
    let on_line = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if on_line {
        return None;
    }
    if let Some(env) = arg.get_env() {
        if std::env::var_os(env).is_some() {
            return Some(format!(
                "the value comes from the environment variable {}",
                env.to_string_lossy()
            ));
        }
    }
    let f = file?;
    let line = f.lines.get(arg.get_id().as_str())?;
    Some(format!(
        "the value comes from the config file {}, key {long} (line {line})",
        f.path.display()
    ))
}

/// Wraps `text` into `# `-comment lines of at most `width` columns.
fn comment(text: &str, width: usize, out: &mut String) {
    for para in text.split("\n\n") {
        let mut line = String::from("#");
        for word in para.split_whitespace() {
            if line.len() + 1 + word.len() > width && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => q.push_str(&format!("\\u{:04X}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// `values` of `arg` as a TOML value.
fn toml_value(arg: &Arg, values: &[String]) -> String {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return values.first().map_or("false", |v| v.as_str()).to_owned();
    }
    if takes_list(arg) {
        let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
        return format!("[{}]", items.join(", "));
    }
    match values.first() {
        Some(v) if v.parse::<i64>().is_ok() => v.clone(),
        Some(v) => quoted(v),
        None => "\"\"".to_owned(),
    }
}

/// The example configuration file: every option of `keys` with its help,
/// its variable and its default (commented out when it has none).
pub(crate) fn example(keys: &Command) -> String {
    let mut out = String::from(
        "# bitstream-relay configuration file: `bitstream-relay --config FILE`\n\
         # (or RELAY_CONFIG=FILE). Every key is a long flag without `--`; a flag on\n\
         # the command line overrides its RELAY_* variable, which overrides this\n\
         # file, which overrides the default. Unknown keys are refused.\n\
         # Check a file with `bitstream-relay check-config --config FILE`.\n\
         # Generated by `bitstream-relay check-config --example`: every value below\n\
         # is the default.\n",
    );
    for arg in keys.get_arguments().filter(|a| !is_meta(a)) {
        let Some(long) = arg.get_long() else { continue };
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        comment(&help, 78, &mut out);
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (variable: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if defaults.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
            out.push_str(&format!("# {long} = {}\n", toml_value(arg, &[])));
        } else {
            out.push_str(&format!("{long} = {}\n", toml_value(arg, &defaults)));
        }
    }
    out
}

/// The configuration in effect: every option of `keys` with its value and
/// where it came from (flag, env, file, default).
pub(crate) fn effective<T>(keys: &Command, parsed: &Parsed<T>) -> String {
    let mut out = String::new();
    if let Some(f) = &parsed.file {
        out.push_str(&format!("# config file: {}\n", f.path.display()));
    }
    for arg in keys.get_arguments().filter(|a| !is_meta(a)) {
        let Some(long) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        let source = parsed.source_of(id);
        let values: Vec<String> = parsed
            .matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if arg.is_hide_env_values_set() && !values.is_empty() {
            out.push_str(&format!("# {long} = (set, not shown)  # {source}\n"));
        } else if values.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
            out.push_str(&format!("# {long} = (unset)\n"));
        } else {
            out.push_str(&format!(
                "{long} = {}  # {source}\n",
                toml_value(arg, &values)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A small command line like the relay's.
    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, global = true, env = "CONFIG_FILE_TEST_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        opts: Opts,
    }

    #[derive(Debug, clap::Args)]
    struct Opts {
        #[arg(long, env = "CONFIG_FILE_TEST_LIMIT", default_value_t = 10)]
        limit: u32,
        #[arg(long, env = "CONFIG_FILE_TEST_OTHER", default_value_t = 1)]
        other: u32,
        #[arg(long, value_delimiter = ',')]
        origins: Vec<String>,
        #[arg(long)]
        echo: bool,
    }

    #[derive(Debug, Parser)]
    struct Keys {
        #[command(flatten)]
        opts: Opts,
    }

    fn file(text: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "config-file-unit-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn parse_with(path: &Path, extra: &[&str]) -> Result<Parsed<Cli>, ConfigError> {
        let mut args: Vec<OsString> = vec!["x".into(), "--config".into(), path.into()];
        args.extend(extra.iter().map(OsString::from));
        parse::<Cli>(args, &Keys::command())
    }

    #[test]
    fn file_values_fill_what_flags_leave() {
        let p = file("limit = 5\norigins = [\"a\", \"b\"]\necho = true\n");
        let parsed = parse_with(&p, &[]).unwrap();
        assert_eq!(parsed.cli.opts.limit, 5);
        assert_eq!(parsed.cli.opts.origins, ["a", "b"]);
        assert!(parsed.cli.opts.echo);
        assert_eq!(parsed.source_of("limit"), "file");
        assert_eq!(parsed.source_of("other"), "default");
        let parsed = parse_with(&p, &["--limit", "7"]).unwrap();
        assert_eq!(parsed.cli.opts.limit, 7);
        assert_eq!(parsed.source_of("limit"), "flag");
        let text = effective(&Keys::command(), &parsed);
        assert!(text.contains("limit = 7  # flag"), "{text}");
        assert!(text.contains("origins = [\"a\", \"b\"]  # file"), "{text}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let p = file("limit = 5\n\nlimits = 6\n");
        let e = parse_with(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("line 3: unknown key \"limits\""), "{e}");
        let p = file("max_x = 1\n");
        assert!(parse_with(&p, &[])
            .unwrap_err()
            .to_string()
            .contains("unknown key"));
        let p = file("[section]\nlimit = 5\n");
        let e = parse_with(&p, &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key \"section\": tables are not used"),
            "{e}"
        );
        let p = file("limit = [1, 2]\n");
        assert!(parse_with(&p, &[])
            .unwrap_err()
            .to_string()
            .contains("not a list"));
        let p = file("echo = 1\n");
        assert!(parse_with(&p, &[])
            .unwrap_err()
            .to_string()
            .contains("true or false"));
        let p = file("limit = \"many\"\n");
        let e = parse_with(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("key limit (line 1)"), "{e}");
        let p = file("limit = = 5\n");
        assert!(matches!(
            parse_with(&p, &[]),
            Err(ConfigError::Syntax { .. })
        ));
        let e = parse_with(Path::new("/nonexistent/relay.toml"), &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }

    #[test]
    fn the_example_lists_every_option_and_parses_back_to_the_defaults() {
        let text = example(&Keys::command());
        for key in ["limit = 10", "other = 1", "# origins = []", "echo = false"] {
            assert!(text.contains(key), "{key} in\n{text}");
        }
        let p = file(&text);
        let parsed = parse_with(&p, &[]).unwrap();
        assert_eq!(parsed.cli.opts.limit, 10);
        assert!(!parsed.cli.opts.echo);
    }
}
