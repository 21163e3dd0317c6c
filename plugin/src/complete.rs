//! Shell completion through kubectl: `kubectl stepup re<TAB>` makes kubectl run the
//! `kubectl_complete-stepup` executable on PATH (shipped with the plugin), which calls
//! `kubectl-stepup __complete <words>`; the answer is Cobra's protocol: one candidate per line
//! (a tab, then its description), then `:<directive>`. Pure: words in, lines out.

use clap::{Command, CommandFactory};

use super::Cli;

/// Cobra's ShellCompDirectiveNoFileComp: offer no file names after these candidates.
const NO_FILES: u8 = 4;
/// Cobra's ShellCompDirectiveDefault: let the shell complete file names (after `-f`).
const FILES: u8 = 0;

/// The completion lines for `words` (everything after `kubectl stepup`; the last one is the
/// word being completed, possibly empty).
pub fn complete(words: &[String]) -> String {
    let root = Cli::command();
    let (current, done) = match words.split_last() {
        Some((last, rest)) => (last.as_str(), rest),
        None => ("", &[][..]),
    };
    // Walk down the subcommands already typed.
    let mut command = &root;
    let mut after_separator = false;
    for word in done {
        if word == "--" {
            after_separator = true;
            break;
        }
        if let Some(sub) = command.get_subcommands().find(|s| s.get_name() == word) {
            command = sub;
        }
    }
    if after_separator {
        // The wrapped kubectl command: nothing of ours to offer.
        return format!(":{NO_FILES}\n");
    }
    if done.last().is_some_and(|w| w == "-f" || w == "--filename" || w == "--audit-log" || w == "--kubeconfig") {
        return format!(":{FILES}\n");
    }
    let mut out = String::new();
    if current.starts_with('-') {
        for arg in command.get_arguments().chain(root.get_arguments().filter(|a| a.is_global_set())) {
            if let Some(long) = arg.get_long() {
                let flag = format!("--{long}");
                if flag.starts_with(current) {
                    line(&mut out, &flag, arg.get_help().map(|h| h.to_string()).unwrap_or_default());
                }
            }
        }
    } else {
        for sub in subcommands(command) {
            if sub.get_name().starts_with(current) {
                line(&mut out, sub.get_name(), sub.get_about().map(|a| a.to_string()).unwrap_or_default());
            }
        }
    }
    out.push_str(&format!(":{NO_FILES}\n"));
    out
}

fn subcommands(command: &Command) -> impl Iterator<Item = &Command> {
    command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn line(out: &mut String, candidate: &str, description: String) {
    let description = description.lines().next().unwrap_or_default().trim_end_matches('.');
    if description.is_empty() {
        out.push_str(&format!("{candidate}\n"));
    } else {
        out.push_str(&format!("{candidate}\t{description}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut w: Vec<String> = text.split(' ').map(str::to_owned).collect();
        if text.is_empty() {
            w = vec![String::new()];
        }
        w
    }

    #[test]
    fn subcommands_complete_from_a_prefix() {
        let out = complete(&words("re"));
        let mut names: Vec<&str> =
            out.lines().map(|l| l.split('\t').next().unwrap()).filter(|n| !n.starts_with(':')).collect();
        names.sort();
        assert_eq!(names, ["remove-key", "report", "request", "reset", "revoke"]);
        assert!(out.lines().any(|l| l.starts_with("request\t")), "with a description: {out}");
        assert!(out.ends_with(":4\n"));
    }

    #[test]
    fn flags_complete_for_the_subcommand_typed() {
        let out = complete(&words("request --re"));
        assert!(out.lines().any(|l| l.starts_with("--reason\t")), "{out}");
        assert!(!out.contains("--reenroll"), "enroll's flag is not request's: {out}");
        let out = complete(&words("status --kube"));
        assert!(out.contains("--kubeconfig"), "global flags too: {out}");
    }

    #[test]
    fn files_after_file_flags_and_nothing_after_the_separator() {
        assert_eq!(complete(&words("check -f ")), ":0\n");
        assert_eq!(complete(&words("-- kubectl de")), ":4\n");
        let all = complete(&words(""));
        assert!(all.contains("enroll") && all.contains("completion") && !all.contains("help\t"));
    }
}
