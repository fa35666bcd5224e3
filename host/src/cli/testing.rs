//! The crash tests' hook, kept at the binary's edge: with `COUCHVAULT_TEST_PAUSE=<point>:<ms>`
//! in the environment, the engine's checkpoint `point` sleeps `ms` so a test can kill the
//! process exactly there. Unset (always, outside tests), nothing is installed.

const VAR: &str = "COUCHVAULT_TEST_PAUSE";

pub fn install_from_env() {
    if std::env::var_os(VAR).is_some() {
        couchvault::ops::set_checkpoint_observer(pause_at);
    }
}

fn pause_at(point: &str) {
    let Ok(spec) = std::env::var(VAR) else {
        return;
    };
    if let Some((p, ms)) = spec.split_once(':') {
        if p == point {
            let ms = ms.parse().unwrap_or(0);
            tracing::warn!(point, ms, "{VAR}: pausing");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
