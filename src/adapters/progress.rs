//! Progress bars on the terminal (indicatif), one look for every command: a bar when a person
//! watches stderr, nothing when the output goes to a file or a log collector.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// A bar of `len` steps drawn with `template` (indicatif's syntax), or a hidden one when
/// `show` is false (so callers never branch on it).
pub fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// A job's progress in percent with its latest message.
pub const PERCENT: &str = "{spinner} [{bar:40}] {pos:>3}% {msg}";

/// [`PERCENT`], ticking while it waits.
pub fn percent(show: bool) -> ProgressBar {
    let bar = bar(show, 100, PERCENT);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner for work of unknown length.
pub fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_nobody_watches_is_hidden_but_still_counts() {
        let b = bar(false, 10, "{pos}/{len}");
        b.inc(3);
        assert!(b.is_hidden());
        assert_eq!(b.position(), 3);
    }
}
