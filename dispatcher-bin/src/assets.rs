//! `qmail-dispatcher generate-assets DIR` (hidden; used by scripts/package): the man pages
//! (clap_mangen: `qmail-dispatcher.1` and one `qmail-dispatcher-SUBCOMMAND.1` per subcommand)
//! and the shell completions (clap_complete: bash, zsh, fish) generated from the same clap
//! definitions the binary parses, so they never drift from the options.

use std::path::Path;

use anyhow::{Context, Result};
use clap_complete::Shell;

fn man_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> Result<()> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let page = cmd.clone().name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let f = dir.join(format!("{name}.1"));
    std::fs::write(&f, out).with_context(|| format!("cannot write {}", f.display()))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        man_pages(sub, &name, dir)?;
    }
    Ok(())
}

/// Writes `DIR/man/*.1` and `DIR/completions/{qmail-dispatcher.bash,_qmail-dispatcher,
/// qmail-dispatcher.fish}`.
pub fn write(mut cmd: clap::Command, dir: &Path) -> Result<()> {
    cmd.build();
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    man_pages(&cmd, "", &man)?;
    let bin = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &bin, &comp)
            .with_context(|| format!("generating the {shell} completion"))?;
    }
    Ok(())
}
