//! The binary's command line beyond the relay's own options: the config
//! file under the flags ([`config_file`]), the checks made before serving
//! ([`preflight`]), and the man page and shell completions ([`manual`]).
//! The subcommands that publish and watch streams are in `tools`.

pub(crate) mod config_file;
pub(crate) mod manual;
pub(crate) mod preflight;
