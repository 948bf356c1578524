//! The core's `LoadConfig` (HUP, `ctl reload`): re-reading the configuration and swapping it
//! in, binds first; the core hears the result.

use arbiter_core::Moment;
use arbiter_sockets::Listener;
use slog::{error, info, warn};

use crate::config::{self, Settings};
use crate::os::heartbeat::{self, HeartbeatDir};
use crate::runtime::log::LogOutput;
use crate::runtime::setup::{self, StartError};

use super::Runtime;
use crate::os::seam::Os;

impl<O: Os> Runtime<O> {
    pub(super) fn reload(&mut self, now: Moment) {
        let applied = config::reload(&self.sources, &self.env_snapshot)
            .map_err(|e| e.to_string())
            .and_then(|new| self.apply_settings(new).map_err(|e| e.to_string()));
        match applied {
            Ok(config) => self.core.handle_reload(config, now),
            Err(why) => self.core.handle_config_failed(why, now),
        }
    }

    /// Validates new settings and swaps them in (binds first, then everything else).
    fn apply_settings(&mut self, mut new: Settings) -> Result<arbiter_core::Config, StartError> {
        setup::absolutize(&mut new, &self.start_dir);
        if new.reuse_port_per_slot != self.settings.reuse_port_per_slot {
            // The core's slot table and the sockets' groups were set up for the start's mode.
            warn!(
                self.log,
                "reuse_port_per_slot changes only at a fresh start (not on HUP or USR2); keeping \
                 {}",
                self.settings.reuse_port_per_slot
            );
            new.reuse_port_per_slot = self.settings.reuse_port_per_slot;
        }
        if new.heartbeat_filter != self.settings.heartbeat_filter {
            // The notify sockets' filter was set up (or not) for the start's choice.
            warn!(
                self.log,
                "heartbeat_filter changes only at a fresh start (not on HUP); keeping {}",
                self.settings.heartbeat_filter
            );
            new.heartbeat_filter = self.settings.heartbeat_filter;
        }
        if let Some(dir) = new.chdir.as_ref().filter(|dir| !dir.is_dir()) {
            return Err(StartError::Usage(format!(
                "--chdir {}: not a directory",
                dir.display()
            )));
        }
        let setup::Prepared {
            command,
            gpus,
            identity,
        } = setup::prepare(&new, &self.master_env)?;
        let command =
            super::function::worker_command(self.function.is_some(), &new, command, &self.argv)?;
        if new.bind != self.settings.bind {
            let specs = setup::bind_specs(&new)?;
            let mut kept: Vec<Option<Listener>> = std::mem::take(&mut self.listeners)
                .into_iter()
                .map(Some)
                .collect();
            // (listener, newly bound by this reload)
            let mut fresh: Vec<(Listener, bool)> = Vec::new();
            let mut failure = None;
            for spec in &specs {
                let existing = kept
                    .iter_mut()
                    .find(|l| l.as_ref().and_then(|l| l.spec()).is_some_and(|s| s == spec));
                if let Some(slot) = existing {
                    fresh.push((slot.take().expect("found"), false));
                    continue;
                }
                match arbiter_sockets::bind(spec, &setup::bind_options(&new)) {
                    Ok(bound) => fresh.extend(bound.into_iter().map(|l| (l, true))),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                // Keep serving on the old set; close only what this attempt bound.
                let mut restored = Vec::new();
                for (listener, newly) in fresh {
                    if newly {
                        listener.close(true);
                    } else {
                        restored.push(listener);
                    }
                }
                restored.extend(kept.into_iter().flatten());
                self.listeners = restored;
                return Err(StartError::Runtime(format!("new bind failed: {e}")));
            }
            for (listener, newly) in &fresh {
                if *newly {
                    info!(
                        self.log,
                        "Listening at: {} ({})",
                        listener,
                        std::process::id()
                    );
                }
            }
            let unlink = self.unlink_allowed(true);
            for listener in kept.into_iter().flatten() {
                info!(self.log, "Closing listener {}", listener);
                listener.close(unlink);
            }
            self.listeners = fresh.into_iter().map(|(l, _)| l).collect();
            self.slots.rebind(&self.listeners, &self.log);
        }
        self.worker_env = setup::worker_base_env(&self.master_env, &new, gpus.is_some());
        if new.worker_tmp_dir != self.settings.worker_tmp_dir {
            let parent = heartbeat::default_dir(new.worker_tmp_dir.as_deref());
            // The old directory stays while its workers' files do.
            match HeartbeatDir::new(&parent) {
                Ok(dir) => self.heartbeats = dir,
                Err(e) => error!(
                    self.log,
                    "heartbeat directory in {}: {e}; keeping the old one",
                    parent.display()
                ),
            }
        }
        if new.log_level != self.settings.log_level
            || new.log_format != self.settings.log_format
            || new.log_file != self.settings.log_file
            || new.color != self.settings.color
        {
            match LogOutput::open(new.log_file.as_deref(), new.log_format, new.log_level) {
                Ok(output) => {
                    let output = output.with_colour(new.color, super::no_color(&self.master_env));
                    self.log = output.logger();
                    self.core.set_log(self.log.clone(), output.traces());
                    self.log_output = output;
                }
                Err(e) => warn!(self.log, "keeping the old log file: {e}"),
            }
        }
        if new.chdir != self.settings.chdir {
            let dir = new.chdir.clone().unwrap_or_else(|| self.start_dir.clone());
            if let Err(e) = std::env::set_current_dir(&dir) {
                warn!(
                    self.log,
                    "keeping the working directory: {}: {e}",
                    dir.display()
                );
            }
        }
        if let Some(identity) = &identity {
            if self.identity.as_ref() != Some(identity) {
                info!(self.log, "Workers run as {}", identity.display);
            }
            let shared = super::give_unix_listeners(identity, &self.listeners).and_then(|()| {
                // New workers' notify sockets are shared as they are made.
                identity.share_path(self.runtime_dir.path(), 0o710)
            });
            if let Err(e) = shared {
                warn!(self.log, "giving sockets to the workers' user: {e}");
            }
        }
        let mut config = setup::core_config(&new, command.key, gpus);
        config.watchdog = self.watchdog;
        self.identity = identity;
        self.command = command;
        self.settings = new;
        Ok(config)
    }

    pub(super) fn unlink_allowed(&self, core_allows: bool) -> bool {
        core_allows
            && arbiter_sockets::may_unlink(self.core.is_upgrading(), self.settings.reuse_port)
    }

    // ----- actions -----
}
