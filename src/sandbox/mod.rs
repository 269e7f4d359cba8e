//! The container engine and everything the daemon asks of it: the hardened container
//! [`profile`], the dependency [`install`] container and its cache, the [`run`] container of an
//! app and its `/output` filesystem ([`engine::output_volume`], with spares kept ready by
//! [`output_pool`] and read back by [`output_copy`]), the [`engine`] that creates, streams,
//! limits and removes containers, and the [`sweep`] of what dead daemons left behind. What a run *is* (its phases and outcome) lives
//! in `pipeline`; this module only speaks to Docker.
//!
//! Every container gets the hardened [`profile`]: non-root, read-only root, capped `/tmp`,
//! app files read-only, a capped `nosuid,nodev,noexec` `/output` for the app, no capabilities, no new privileges, pids/memory/CPU/nofile limits,
//! `init`, no network unless the app holds the `network` permission, and an environment built
//! from an allow-list only — the daemon's own environment (database URL, storage key) never
//! reaches a container.
//!
//! Containers and volumes carry labels naming the daemon and the run. [`sweep::Sweeper`] removes
//! those whose daemon is gone (crashed or stopped) and hands their runs back to the queue at
//! once.

mod cgroup;
pub mod egress;
pub mod engine;
pub mod install;
pub mod output;
pub mod output_copy;
pub mod output_pool;
pub mod profile;
pub mod reaper;
pub mod registry;
pub mod run;
pub mod settings;
pub mod sweep;

pub use engine::{
    ContainerExit, Ended, Engine, EngineError, ManagedContainer, OutputSink, OutputStream,
    OutputUsage, OutputVolume, Timing,
};
pub use settings::{PullPolicy, RawSandbox, RegistryAuth, RegistryPassword, SandboxSettings};
pub use sweep::Sweeper;
