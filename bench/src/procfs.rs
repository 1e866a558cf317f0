//! What the benchmark reads about the proxies from `/proc`: CPU time
//! (`utime + stime` of every process in a tree, so nginx's master and
//! worker count together) and memory (`VmRSS`, `VmHWM`, and the PSS and
//! private memory of `smaps_rollup`, since RSS counts shared library pages
//! such as libssl's in full for every process).

use std::fs;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports them
/// in `USER_HZ`, which is 100 on every architecture the bench runs on.
const USER_HZ: f64 = 100.0;

/// Memory of a process tree, in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss: f64,
    /// Peak resident set size since start (`VmHWM`).
    pub hwm: f64,
    /// Proportional set size (`Pss` of `smaps_rollup`).
    pub pss: f64,
    /// Private memory (`Private_Clean + Private_Dirty`).
    pub private: f64,
}

/// `pid` and all its descendants (children of children too).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let Ok(dir) = fs::read_dir("/proc") else {
        return all;
    };
    let parents: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_fields(p)?.get(1)?.parse().ok()?)))
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    all
}

/// CPU seconds (user + system) used so far by every process in `pids`
/// (each with all its threads). Exited processes count as zero.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| {
            let f = stat_fields(*p)?;
            // After `(comm)`: state is field 0, utime field 11, stime field 12.
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / USER_HZ)
        })
        .sum()
}

/// Memory of every process in `pids`, summed.
pub fn memory(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        m.rss += kib_field(&status, "VmRSS:") / 1024.0;
        m.hwm += kib_field(&status, "VmHWM:") / 1024.0;
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        m.pss += kib_field(&rollup, "Pss:") / 1024.0;
        m.private +=
            (kib_field(&rollup, "Private_Clean:") + kib_field(&rollup, "Private_Dirty:")) / 1024.0;
    }
    m
}

/// The fields of `/proc/<pid>/stat` after the `(comm)` field.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<Vec<String>> {
    // comm may contain spaces and parentheses: split at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The value of a `Name:   123 kB` line, in KiB (0 if absent).
fn kib_field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "42 (nginx: (worker) x) S 41 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1";
        let f = parse_stat(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "41");
        assert_eq!((f[11].as_str(), f[12].as_str()), ("250", "75"));
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), 1024.0);
        assert_eq!(kib_field(status, "VmHWM:"), 2048.0);
        assert_eq!(kib_field(status, "Pss:"), 0.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(&[me]) >= 0.0);
        let m = memory(&[me]);
        assert!(m.rss > 0.0 && m.hwm >= m.rss, "{m:?}");
    }
}
