//! The command line on the built binary: the config file and its
//! precedence, errors that name what is wrong, the log's account of a
//! channel's life and of refusals, completions, the man page, --version.

mod common;

use std::process::Output;

use bitstream_relay::client::ClientError;
use common::process::{bin, Running};
use common::*;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of `key` in check-config's output.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{out}"))
}

/// `check-config` with `--config file`.
fn check_config(file: &std::path::Path) -> Output {
    bin()
        .args(["--config", file.to_str().unwrap(), "check-config"])
        .output()
        .unwrap()
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let file = temp_file(
        "relay.toml",
        "max-receivers = 11\nmax-channels = 12\nmax-invalid = 13\nallowed-origins = [\"https://a.example\", \"https://b.example\"]\n",
    );
    let out = bin()
        .args(["--max-invalid", "33", "check-config"])
        .env("RELAY_CONFIG", &file)
        .env("RELAY_MAX_CHANNELS", "22")
        .env("RELAY_MAX_INVALID", "23")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(line(&stdout, "max-receivers"), "max-receivers = 11  # file");
    assert_eq!(line(&stdout, "max-channels"), "max-channels = 22  # env");
    assert_eq!(line(&stdout, "max-invalid"), "max-invalid = 33  # flag");
    assert_eq!(
        line(&stdout, "max-signal-peers"),
        "max-signal-peers = 256  # default"
    );
    assert_eq!(
        line(&stdout, "allowed-origins"),
        "allowed-origins = [\"https://a.example\", \"https://b.example\"]  # file"
    );
    assert!(stdout.contains(&format!("# config file: {}", file.display())));

    // --config after the subcommand, and the relay really runs with it.
    let out = bin()
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        line(&text(&out).0, "max-channels"),
        "max-channels = 12  # file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_with_the_file_s_limits() {
    let port = free_port();
    let file = temp_file(
        "serve.toml",
        format!("addr = \"127.0.0.1:{port}\"\nmax-receivers = 1\nstats-interval-ms = 0\n"),
    );
    let mut cmd = bin();
    cmd.args(["--config", file.to_str().unwrap()]);
    let relay = Running::start(cmd);
    relay.stderr.wait_for("relay listening");
    let _one = connect(&format!("ws://127.0.0.1:{port}/stream/f")).await;
    match connect_err(&format!("ws://127.0.0.1:{port}/stream/f")).await {
        ClientError::Refused { status, .. } => assert_eq!(status, 503),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn unknown_keys_are_refused_with_their_name_and_line() {
    let file = temp_file(
        "typo.toml",
        "max-receivers = 5\n# a comment\nmax-recievers = 6\n",
    );
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let (_, err) = text(&out);
    assert!(
        err.contains("line 3: unknown key \"max-recievers\""),
        "{err}"
    );
    let file = temp_file("snake.toml", "max_receivers = 5\n");
    let out = bin().env("RELAY_CONFIG", &file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out)
        .1
        .contains("spelled like the flags, max-receivers"));
    // A bad value in the file is told with its key and line.
    let file = temp_file("bad.toml", "\nmax-receivers = \"lots\"\n");
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let (_, err) = text(&out);
    assert!(
        err.contains("'lots'") && err.contains("key max-receivers (line 2)"),
        "{err}"
    );
}

#[test]
fn the_example_file_is_what_the_binary_generates_and_holds_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/relay.example.toml");
    let out = bin().args(["check-config", "--example"]).output().unwrap();
    assert!(out.status.success());
    let generated = text(&out).0;
    let committed = std::fs::read_to_string(example).unwrap();
    assert!(
        generated == committed,
        "relay.example.toml is stale: regenerate it with `bitstream-relay check-config --example > relay.example.toml`"
    );
    // Every option of --help is a key of the file.
    let help = text(&bin().arg("--help").output().unwrap()).0;
    // Options are the help's lines that start with their flag.
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '<', '=']).next())
        .filter(|f| !f.is_empty() && !["help", "version", "config"].contains(f))
        .collect();
    assert!(flags.len() > 50, "{flags:?}");
    for flag in flags {
        assert!(
            committed.contains(&format!("\n{flag} = "))
                || committed.contains(&format!("\n# {flag} = ")),
            "--{flag} is not in relay.example.toml"
        );
    }
    // Loaded, it changes nothing: every value is the default.
    let values = |args: &[&str]| {
        let out = bin().arg("check-config").args(args).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let values: Vec<String> = stdout
            .lines()
            .filter(|l| !l.starts_with("# config file"))
            .map(|l| l.split("  # ").next().unwrap().to_owned())
            .collect();
        (values, stdout)
    };
    let (from_file, stdout) = values(&["--config", example]);
    assert_eq!(from_file, values(&[]).0);
    assert!(stdout.contains("max-receivers = 20000  # file"), "{stdout}");
}

#[test]
fn errors_name_the_variable_the_flag_and_the_rule() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = bin();
        cmd.args(args).env_remove("RELAY_JWT_SECRET_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (_, err) = text(&out);
        (out.status.code(), err)
    };
    let (code, err) = run(&["check-config"], &[("RELAY_MAX_RECEIVERS", "oops")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("'oops'") && err.contains("RELAY_MAX_RECEIVERS"),
        "{err}"
    );

    let (code, err) = run(&["--addr", "localhost", "check-config"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("use IP:PORT"), "{err}");

    let (code, err) = run(&["--jwt-secret-file", "/nonexistent/secret"], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--jwt-secret-file: cannot read /nonexistent/secret"),
        "{err}"
    );

    let short = temp_file("short", "0123456789abcdef\n");
    let short = short.to_str().unwrap();
    let (code, err) = run(&["--addr", "127.0.0.1:0", "--jwt-secret-file", short], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is 16 bytes; use 32"), "{err}");
    let (code, err) = run(
        &[
            "token",
            "--jwt-secret-file",
            short,
            "--channel",
            "a",
            "--role",
            "source",
        ],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("is 16 bytes; use 32"), "{err}");

    let secret = temp_file("secret", "a secret of 32 bytes or more, surely\n");
    let secret = secret.to_str().unwrap();
    let token = |extra: &[&str]| {
        let mut args = vec!["token", "--jwt-secret-file", secret, "--role", "source"];
        args.extend_from_slice(extra);
        run(&args, &[])
    };
    let (code, err) = token(&["--channel", "my cam!"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("A-Z a-z 0-9 . _ -"), "{err}");
    let (code, err) = token(&["--channel", "cam", "--ttl", "0s"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("already expired"), "{err}");
    assert_eq!(token(&["--channel", "cam", "--ttl", "1m"]).0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_a_listening_address() {
    let port = free_port();
    let mut cmd = bin();
    cmd.args(["--addr", &format!("localhost:{port}")]);
    let relay = Running::start(cmd);
    relay.stderr.wait_for("relay listening");
    let _rx = connect(&format!("ws://127.0.0.1:{port}/stream/h")).await;
}

#[test]
fn an_explicit_max_connections_the_open_file_limit_cannot_meet_warns() {
    // More than any open-file limit Linux allows (fs.nr_open < 2^31).
    let mut cmd = bin();
    cmd.args(["--addr", "127.0.0.1:0", "--max-connections", "4000000000"]);
    let relay = Running::start(cmd);
    let warning = relay.stderr.wait_for("capped to the open-file limit");
    assert!(warning.contains("WARN"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tells_a_channel_s_life_and_its_refusals() {
    let port = free_port();
    let mut cmd = bin();
    cmd.args(["--addr", &format!("127.0.0.1:{port}")])
        .args([
            "--grace-ms",
            "200",
            "--gc-interval-ms",
            "50",
            "--stats-interval-ms",
            "0",
        ])
        .env_remove("RUST_LOG");
    let mut relay = Running::start(cmd);
    relay.stderr.wait_for("relay listening");
    let url = |path: &str| format!("ws://127.0.0.1:{port}{path}");
    let source = connect(&url("/source/life")).await;
    relay.stderr.wait_for("source joined");
    let rx = connect(&url("/stream/life")).await;
    relay.stderr.wait_for("first receiver");
    match connect_err(&url("/source/life")).await {
        ClientError::Refused { status, .. } => assert_eq!(status, 409),
        e => panic!("unexpected {e}"),
    }
    let refused = relay.stderr.wait_for("refused");
    assert!(
        refused.contains("409") && refused.contains("source_taken"),
        "{refused}"
    );
    // More refusals within the interval are counted, not logged one by one.
    for _ in 0..5 {
        let _ = connect_err(&url("/source/life")).await;
    }
    let _ = connect_err(&url("/stream/bad%20name")).await;
    source.close(1000).await.unwrap();
    relay.stderr.wait_for("source left");
    drop(rx);
    relay.stderr.wait_for("channel gone");
    let lines = relay.stderr.all();
    // One line in full; the rest go into the interval's summary line.
    assert_eq!(
        lines.iter().filter(|l| l.contains("refused: ")).count(),
        1,
        "{lines:#?}"
    );
    // Redirected, the log has no colour codes; a default start does not
    // warn about the open-file limit.
    assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("open-file limit")),
        "{lines:#?}"
    );
    assert!(relay.terminate().success());
}

#[test]
fn completions_man_page_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = text(&out).0;
        assert!(script.contains("max-receivers"), "{shell}");
        assert!(script.contains("check-config"), "{shell}");
    }
    let out = bin().arg("man").output().unwrap();
    let page = text(&out).0;
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("max\\-receivers"), "roff escapes dashes");
    let out = bin().arg("--version").output().unwrap();
    let version = text(&out).0;
    assert!(version.starts_with("bitstream-relay 0."), "{version}");
    assert!(version.contains("(commit "), "{version}");
}
