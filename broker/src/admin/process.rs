//! The process's own figures for `/metrics`, under the names Prometheus' client libraries give
//! them (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so that the
//! dashboards and alerts written for any exporter work unchanged. Read from `/proc/self`
//! (Linux); a figure that cannot be read is left out rather than reported as zero. The files
//! read at every scrape are opened once ([`open_early`], at start) and read again in place, so
//! the figures are still there when the process has run out of file descriptors, which is when
//! they are wanted.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::OnceLock;

static STAT: OnceLock<File> = OnceLock::new();
static STATM: OnceLock<File> = OnceLock::new();
static BOOT_TIME: OnceLock<u64> = OnceLock::new();

/// Opens what the figures are read from, before the broker opens its partitions.
pub fn open_early() {
    let _ = read_proc(&STAT, "/proc/self/stat");
    let _ = read_proc(&STATM, "/proc/self/statm");
    let _ = boot_time();
}

/// A `/proc` file's text, read from offset 0 of a handle opened once.
fn read_proc(slot: &'static OnceLock<File>, path: &str) -> Option<String> {
    let file = match slot.get() {
        Some(f) => f,
        None => {
            let f = File::open(path).ok()?;
            slot.get_or_init(|| f)
        }
    };
    let mut buf = vec![0u8; 4096];
    let n = file.read_at(&mut buf, 0).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

/// Resident memory of the process in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = read_proc(&STATM, "/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The file descriptors the process has open (`/proc/self/fd`); with none left to list them
/// (EMFILE), all of its limit.
pub fn open_fds() -> Option<u64> {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(fds) => Some(fds.count() as u64),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => max_fds(),
        Err(_) => None,
    }
}

/// The soft limit on open file descriptors, if there is one.
pub fn max_fds() -> Option<u64> {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    (soft != rlimit::INFINITY).then_some(soft)
}

/// What `/proc/self/stat` says, from the fields after the command name.
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    virtual_bytes: u64,
}

fn stat() -> Option<Stat> {
    let text = read_proc(&STAT, "/proc/self/stat")?;
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

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`), read once.
fn boot_time() -> Option<u64> {
    if let Some(t) = BOOT_TIME.get() {
        return Some(*t);
    }
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(*BOOT_TIME.get_or_init(|| btime))
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
    if let Some(open) = open_fds() {
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open.to_string(),
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
