//! The process's own figures for `/metrics`, under the names Prometheus' client libraries give
//! them (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so that the
//! dashboards and alerts written for any exporter work unchanged. Read from `/proc/self`
//! (Linux); a figure that cannot be read is left out rather than reported as zero.

use std::fmt::Write as _;

/// Resident memory of the process in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// What `/proc/self/stat` says, from the fields after the command name.
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    virtual_bytes: u64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces and ')': fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); proc(5) numbers fields from 1.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Appends the `process_*` families to a metrics page.
pub fn render(out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    if let Some(s) = stat() {
        family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            format!("{}", s.cpu_ticks as f64 / ticks),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            s.virtual_bytes.to_string(),
        );
        family(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            s.threads.to_string(),
        );
        if let Some(boot) = boot_time() {
            family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                format!("{}", boot as f64 + s.start_ticks as f64 / ticks),
            );
        }
    }
    if let Some(rss) = resident_bytes() {
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss.to_string(),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count().to_string(),
        );
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            soft.to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_this_process() {
        let mut out = String::new();
        render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 24.0 * 3600.0,
            "{started} vs {now}"
        );
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        let open = value("process_open_fds");
        assert!(open >= 1.0);
        assert!(value("process_max_fds") >= open);
        // CPU time goes up as this thread works.
        let cpu = value("process_cpu_seconds_total");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(60) {
            std::hint::black_box(0u64);
        }
        let mut later = String::new();
        render(&mut later);
        let cpu_later: f64 = later
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(cpu_later > cpu, "{cpu} then {cpu_later}");
    }
}
