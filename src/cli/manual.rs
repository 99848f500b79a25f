//! Shell completions and the man page, both generated from the command
//! line's own definition, so they cannot drift from `--help`.

use clap::{Command, ValueEnum};

/// Shells `bitstream-relay completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Shell {
    /// Bash (`source <(bitstream-relay completions bash)`).
    Bash,
    /// Zsh (write it as `_bitstream-relay` into a directory of `$fpath`).
    Zsh,
    /// Fish (write it into `~/.config/fish/completions/`).
    Fish,
}

/// Writes the completion script of `shell` for `cmd` to `out`.
pub(crate) fn completions(shell: Shell, mut cmd: Command, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_owned();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the man page (roff) of `cmd` to `out`.
pub(crate) fn man_page(cmd: Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd).render(out)
}
