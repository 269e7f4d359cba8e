//! What an attempt's end means for the run: a finished container mapped to an exact
//! [`Outcome`] (timeout, output cap, the main process OOM-killed, exit codes), and the
//! failure recorded as the run's `error` output.

use crate::artifact::resolve::PreparedApp;
use crate::model::{FinalStatus, Outcome};
use crate::outputs::RunFailure;
use crate::sandbox::{ContainerExit, Ended, SandboxSettings};

/// A failure of this host or its services, not of the app: the run goes back to the queue.
pub(super) fn infra(error_kind: &str, message: String) -> Outcome {
    Outcome::InfraFailure {
        error_kind: error_kind.to_owned(),
        message,
    }
}

/// What a finished container means for the run.
pub(super) fn run_outcome(
    exit: &ContainerExit,
    app: &PreparedApp,
    settings: &SandboxSettings,
    stderr_tail: &str,
) -> Outcome {
    let limits = &app.manifest.limits;
    let exit_code = exit.exit_code.map(|c| c as i32);
    let finished = |status, kind: &str, message: String| Outcome::Finished {
        status,
        error_kind: Some(kind.to_owned()),
        error_message: Some(message),
        exit_code,
    };
    match exit.ended {
        Ended::Stopped => Outcome::Stopped,
        Ended::TimedOut => finished(
            FinalStatus::Timeout,
            "timeout",
            format!(
                "the app ran longer than its time limit of {} and was killed",
                humantime::format_duration(limits.timeout)
            ),
        ),
        Ended::OutputTooLarge => finished(
            FinalStatus::Failed,
            "output_too_large",
            format!(
                "the app wrote more than {} or {} files to /output (writes past the cap fail with \"no space left on device\")",
                bytesize::ByteSize::b(settings.output_max_bytes),
                settings.output_max_files
            ),
        ),
        // The main process itself was killed (docker-init exits 128 + SIGKILL for it); a
        // child killed while the main process went on is the exit code's business.
        Ended::Exited if exit.oom_killed && exit_code == Some(137) => finished(
            FinalStatus::Failed,
            "oom_killed",
            format!(
                "the app exceeded its memory limit of {} (what it keeps in /output and /tmp counts too) and was killed; last lines of stderr:\n{stderr_tail}",
                bytesize::ByteSize::b(limits.memory_bytes)
            ),
        ),
        Ended::Exited => match exit_code {
            Some(0) => Outcome::success(),
            Some(code) => finished(
                FinalStatus::Failed,
                "nonzero_exit",
                format!(
                    "the app exited with code {code}{}; last lines of stderr:\n{stderr_tail}",
                    child_oom_note(exit, limits.memory_bytes)
                ),
            ),
            None => finished(
                FinalStatus::Failed,
                "nonzero_exit",
                format!("the app stopped without an exit code; last lines of stderr:\n{stderr_tail}"),
            ),
        },
    }
}

/// ` after the kernel killed N of its processes …` when some process (not the main one) hit
/// the memory limit.
fn child_oom_note(exit: &ContainerExit, memory_bytes: u64) -> String {
    if !exit.oom_killed {
        return String::new();
    }
    format!(
        " after the kernel killed {} of its processes for exceeding the memory limit of {}",
        exit.oom_kills.max(1),
        bytesize::ByteSize::b(memory_bytes)
    )
}

/// The run's peak memory: the sampled high-water mark, and the limit itself when the kernel
/// OOM-killed something (it does so exactly when usage reaches the limit, possibly between
/// two samples).
pub(super) fn peak_memory(exit: &ContainerExit, memory_bytes: u64) -> Option<u64> {
    match (exit.oom_killed, exit.peak_memory_bytes) {
        (true, peak) => Some(peak.unwrap_or(0).max(memory_bytes)),
        (false, peak) => peak,
    }
}

/// The failure recorded as an `error` output, for a finished run that did not succeed.
pub(super) fn failure_of(outcome: &Outcome) -> Option<RunFailure> {
    match outcome {
        Outcome::Finished {
            error_kind: Some(kind),
            error_message,
            ..
        } => Some(RunFailure {
            kind: kind.clone(),
            message: error_message.clone().unwrap_or_default(),
        }),
        _ => None,
    }
}
