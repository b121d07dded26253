//! Printing for the `cyb` command that survives a closed pipe: `cyb generate ... | head -1`
//! closes standard output early, and Rust's `println!` then panics ("failed printing
//! to stdout: Broken pipe", exit 101). Here a closed pipe is the reader's choice, as
//! for any Unix tool: nothing more is printed to that stream, no error is shown, and
//! the command still finishes the work that does not print (writing its files), then
//! exits 0. Other write errors on standard output (a full disk behind a redirect) are
//! errors.
//!
//! ```
//! cyb::console::out("a report line").unwrap();
//! cyb::console::note("a progress line on stderr");
//! ```

use crate::error::{CybError, Result};
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` and a newline to standard output. A closed pipe silences every later
/// call; any other failure is an error naming standard output.
pub fn out(text: impl std::fmt::Display) -> Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        r => r.map_err(|e| CybError::io("standard output", e)),
    }
}

/// Writes `text` and a newline to standard error (progress and notes). Errors are
/// dropped: there is nowhere left to report them, and a closed progress stream must
/// not stop a run whose results go to files.
pub fn note(text: impl std::fmt::Display) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stderr = std::io::stderr().lock();
    if let Err(e) = writeln!(stderr, "{text}") {
        if e.kind() == ErrorKind::BrokenPipe {
            STDERR_CLOSED.store(true, Ordering::Relaxed);
        }
    }
}
